"""Seeded splits: independent of listing order, deterministic, honouring fractions and counts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from revunet.cli import main
from revunet.data.splits import (
    SplitScheme,
    make_split,
    parse_scheme,
    read_split,
    split_document,
    write_split,
)

IDS = [f"BraTS20_Training_{n:03d}" for n in range(1, 371)]


def test_order_invariant_and_deterministic():
    first = make_split(IDS, "fraction:0.8", seed=0)
    assert make_split(list(reversed(IDS)), "fraction:0.8", seed=0) == first
    assert make_split(sorted(IDS, key=lambda s: s[::-1]), 0.8, seed=0) == first
    assert make_split(IDS, SplitScheme(fraction=0.8), seed=0) == first
    assert make_split(IDS, "fraction:0.8", seed=1) != first


def test_fraction_is_honoured_and_parts_are_disjoint_and_complete():
    parts = make_split(IDS, 0.8, seed=3)
    assert len(parts["train"]) == 296 and len(parts["validation"]) == 74 and parts["unused"] == []
    assert set(parts["train"]).isdisjoint(parts["validation"])
    assert sorted(parts["train"] + parts["validation"]) == sorted(IDS)
    assert parts["train"] == sorted(parts["train"])
    assert len(make_split(IDS[:285], 0.8, seed=0)["train"]) == 228  # BraTS 2018: 285 cases


def test_counts_are_honoured_with_the_rest_unused():
    parts = make_split(IDS, "counts:330,40", seed=0)
    assert (len(parts["train"]), len(parts["validation"]), len(parts["unused"])) == (330, 40, 0)
    iseg = make_split([f"subject-{n}" for n in range(1, 11)], (9, 1), seed=0, held_out_name="test")
    assert len(iseg["train"]) == 9 and len(iseg["test"]) == 1 and "validation" not in iseg
    partial = make_split(IDS[:20], (10, 5), seed=0)
    assert len(partial["unused"]) == 5
    assert sorted(partial["train"] + partial["validation"] + partial["unused"]) == IDS[:20]


@pytest.mark.parametrize(
    ("ids", "scheme", "message"),
    [
        (IDS[:10], (9, 2), "needs 11 labelled cases but only 10"),
        (IDS[:10], 1.0, "strictly between 0 and 1"),
        (IDS[:10], 0.0, "strictly between 0 and 1"),
        (IDS[:10], "fraction:1.5", "strictly between 0 and 1"),
        (IDS[:3], 0.1, "leaves an empty part"),
        (IDS[:10], (0, 2), "at least 1"),
        (IDS[:10] + IDS[:2], 0.8, "duplicate case ids"),
        (IDS[:10], "half", "must look like"),
        (IDS[:10], "counts:1", "must look like"),
    ],
)
def test_errors(ids, scheme, message):
    with pytest.raises(ValueError, match=message):
        make_split(ids, scheme, seed=0)


def test_scheme_text_round_trips():
    for text in ("fraction:0.8", "counts:330,40"):
        assert str(parse_scheme(text)) == text
    assert parse_scheme((9, 1)) == SplitScheme(counts=(9, 1))


def test_document_round_trip(tmp_path):
    parts = make_split(IDS[:10], (8, 2), seed=5, held_out_name="test")
    path = write_split(tmp_path / "split.json", split_document(parts, (8, 2), 5, "test", ["x"]))
    split = read_split(path)
    assert split.train == parts["train"] and split.held_out == parts["test"]
    assert (split.held_out_name, split.seed, split.scheme, split.excluded_unlabelled) == (
        "test",
        5,
        "counts:8,2",
        ["x"],
    )
    with pytest.raises(ValueError, match="not a split file"):
        (tmp_path / "bad.json").write_text("{}")
        read_split(tmp_path / "bad.json")


def write_table(path, labelled: int, unlabelled: int) -> None:
    rows = []
    for n in range(labelled + unlabelled):
        case_id = f"BraTS20_Training_{n + 1:03d}"
        cells = {m: f"/data/{case_id}/{case_id}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}
        label = f"/data/{case_id}/{case_id}_seg.nii.gz" if n < labelled else ""
        rows.append({"case_id": case_id, "task": "brats", "layout": "brats2020", **cells, "label": label})
    # Listed in an arbitrary order: the split must not care.
    pd.DataFrame(rows).sample(frac=1, random_state=1).to_csv(path, index=False)


def test_split_command(tmp_path, capsys):
    pytest.importorskip("revunet.data.layouts")
    table = tmp_path / "cases.csv"
    write_table(table, labelled=12, unlabelled=3)
    out = tmp_path / "split.json"
    assert main(["split", "--cases", str(table), "--fraction", "0.75", "--seed", "2", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["seed"] == 2 and document["scheme"] == "fraction:0.75" and document["held_out"] == "validation"
    assert len(document["train"]) == 9 and len(document["validation"]) == 3
    assert document["excluded_unlabelled"] == [f"BraTS20_Training_{n:03d}" for n in (13, 14, 15)]
    labelled = [f"BraTS20_Training_{n:03d}" for n in range(1, 13)]
    assert {k: document[k] for k in ("train", "validation")} == {
        k: v for k, v in make_split(labelled, 0.75, seed=2).items() if k != "unused"
    }
    assert "3 unlabelled" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert main(["split", "--cases", str(table), "--counts", "11,1", "--held-out-name", "test", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["test"]) == 1
    with pytest.raises(SystemExit, match="needs 13 labelled cases but only 12"):
        main(["split", "--cases", str(table), "--counts", "12,1", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["split", "--cases", str(table), "--fraction", "1.2", "--out", str(out)])
    assert "strictly between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["split", "--cases", str(table), "--fraction", "0.5", "--counts", "1,1", "--out", str(out)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["split", "--cases", str(tmp_path / "none.csv"), "--fraction", "0.5", "--out", str(out)])
