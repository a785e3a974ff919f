"""Seeded splits: three disjoint roles, independent of listing order, deterministic, honouring fractions and counts."""

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

IDS = [f"BraTS20_Training_{n:03d}" for n in range(1, 370)]  # the official release: 369


def test_order_invariant_and_deterministic():
    first = make_split(IDS, "fraction:0.8", seed=0)
    assert make_split(list(reversed(IDS)), "fraction:0.8", seed=0) == first
    assert make_split(sorted(IDS, key=lambda s: s[::-1]), 0.8, seed=0) == first
    assert make_split(IDS, SplitScheme(fraction=0.8), seed=0) == first
    assert make_split(IDS, "fraction:0.8", seed=1) != first


def _disjoint_and_complete(parts, ids):
    roles = [parts[role] for role in ("train", "validation", "test", "unused")]
    every = [case for role in roles for case in role]
    assert sorted(every) == sorted(ids) and len(every) == len(set(every))  # each case in exactly one part
    assert all(r == sorted(r) for r in roles)


def test_fraction_is_honoured_and_parts_are_disjoint_and_complete():
    parts = make_split(IDS, 0.8, seed=3)
    assert [len(parts[k]) for k in ("train", "validation", "test", "unused")] == [295, 0, 74, 0]
    _disjoint_and_complete(parts, IDS)
    brats2018 = [f"Brats18_{n}" for n in range(285)]
    selected = make_split(brats2018, "fraction:0.8,validation:0.1", seed=0)
    assert [len(selected[k]) for k in ("train", "validation", "test")] == [228, 29, 28]
    _disjoint_and_complete(selected, brats2018)
    # The training part is the paper's 80 %: the same cases with or without a validation part.
    assert selected["train"] == make_split(brats2018, 0.8, seed=0)["train"]


def test_counts_are_honoured_with_the_rest_unused():
    parts = make_split(IDS, "counts:329,40", seed=0)
    assert [len(parts[k]) for k in ("train", "validation", "test", "unused")] == [329, 0, 40, 0]
    iseg = make_split([f"subject-{n}" for n in range(1, 11)], (9, 1), seed=0)
    assert (len(iseg["train"]), iseg["validation"], len(iseg["test"])) == (9, [], 1)
    three = make_split(IDS[:20], (10, 3, 5), seed=0)
    assert [len(three[k]) for k in ("train", "validation", "test", "unused")] == [10, 3, 5, 2]
    _disjoint_and_complete(three, IDS[:20])
    # Adding a validation part takes it from what was unused, never from the test cases.
    assert make_split(IDS[:20], (10, 5), seed=0)["train"] == three["train"]


def test_the_papers_370_cases_do_not_exist_in_the_release():
    with pytest.raises(ValueError, match="needs 370 labelled cases but only 369"):
        make_split(IDS, "counts:330,40", seed=0)


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
        (IDS[:10], "counts:1,2,3,4", "must look like"),
        (IDS[:10], "fraction:0.8,validation:0.3", "validation fraction"),
        (IDS[:10], "fraction:0.8,valid:0.1", "must look like"),
        (IDS[:5], "fraction:0.6,validation:0.05", "leaves an empty part"),
    ],
)
def test_errors(ids, scheme, message):
    with pytest.raises(ValueError, match=message):
        make_split(ids, scheme, seed=0)


def test_scheme_text_round_trips():
    for text in ("fraction:0.8", "fraction:0.8,validation:0.1", "counts:329,40", "counts:7,1,2"):
        assert str(parse_scheme(text)) == text
    assert parse_scheme((9, 1)) == SplitScheme(counts=(9, 1))


def test_document_round_trip(tmp_path):
    parts = make_split(IDS[:10], (7, 1, 2), seed=5)
    path = write_split(tmp_path / "split.json", split_document(parts, (7, 1, 2), 5, ["x"]))
    split = read_split(path)
    assert (split.train, split.validation, split.test) == (parts["train"], parts["validation"], parts["test"])
    assert (split.seed, split.scheme, split.excluded_unlabelled) == (5, "counts:7,1,2", ["x"])
    assert split.part("all") == [*parts["train"], *parts["validation"], *parts["test"]]
    with pytest.raises(ValueError, match="not a split file"):
        (tmp_path / "bad.json").write_text("{}")
        read_split(tmp_path / "bad.json")


def test_a_split_of_the_old_format_is_refused(tmp_path):
    """One held-out list that both chose the checkpoint and was reported must not be read as a test part."""
    old = {"seed": 0, "scheme": "fraction:0.8", "held_out": "validation", "train": IDS[:8], "validation": IDS[8:10]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="split format 1, expected 2"):
        read_split(tmp_path / "old.json")


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
    assert (document["format"], document["seed"], document["scheme"]) == (2, 2, "fraction:0.75")
    assert (len(document["train"]), document["validation"], len(document["test"])) == (9, [], 3)
    assert document["excluded_unlabelled"] == [f"BraTS20_Training_{n:03d}" for n in (13, 14, 15)]
    labelled = [f"BraTS20_Training_{n:03d}" for n in range(1, 13)]
    assert {k: document[k] for k in ("train", "validation", "test")} == {
        k: v for k, v in make_split(labelled, 0.75, seed=2).items() if k != "unused"
    }
    assert "3 unlabelled" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert main(["split", "--cases", str(table), "--counts", "11,1", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["test"]) == 1
    assert main(["split", "--cases", str(table), "--fraction", "0.5", "--validation", "0.25", "--out", str(out)]) == 0
    assert [len(json.loads(out.read_text())[k]) for k in ("train", "validation", "test")] == [6, 3, 3]
    with pytest.raises(SystemExit, match="--validation goes with --fraction"):
        main(["split", "--cases", str(table), "--counts", "6,3", "--validation", "0.2", "--out", str(out)])
    with pytest.raises(SystemExit, match="needs 13 labelled cases but only 12"):
        main(["split", "--cases", str(table), "--counts", "12,1", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["split", "--cases", str(table), "--fraction", "1.2", "--out", str(out)])
    assert "strictly between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["split", "--cases", str(table), "--fraction", "0.5", "--counts", "1,1", "--out", str(out)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["split", "--cases", str(tmp_path / "none.csv"), "--fraction", "0.5", "--out", str(out)])
