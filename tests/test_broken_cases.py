"""Broken and excluded cases: `exclude_cases` leaves cases out (an unknown id is named), every
broken case is listed with its file and the two fixes, and the good cases' files survive a
failed preprocessing and are not redone on the rerun."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.cli import main
from revunet.data.layouts import BrokenCasesError, LayoutError, find_cases
from revunet.experiments.datasets import exclude_cases as _exclude_cases
from revunet.experiments.datasets import plan_dataset as _plan_dataset
from revunet.experiments.plan import ConfigError

SHAPE = (12, 14, 10)
MODALITIES = ("t1", "t1ce", "t2", "flair")
KEY = "datasets.brats.paper.exclude_cases"


def case_id(number: int) -> str:
    return f"BraTS20_Training_{number:03d}"


def write_case(root: Path, number: int, seed: int = 0) -> Path:
    """One small BraTS 2020 case: a brain box of random intensities, labels 0/1/2/4."""
    rng = np.random.default_rng(seed + number)
    folder = root / case_id(number)
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for index, modality in enumerate(MODALITIES):
        data = np.zeros(SHAPE, dtype=np.float32)
        data[2:10, 3:12, 2:8] = rng.uniform(100, 200, size=(8, 9, 6)) * (index + 1)
        nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id(number)}_{modality}.nii.gz")
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:7, 5:8, 3:6] = np.array([1, 2, 4])[rng.integers(0, 3, size=(3, 3, 3))]
    nib.save(nib.Nifti1Image(label, affine), folder / f"{case_id(number)}_seg.nii.gz")
    return folder


def file_of(root: Path, number: int, role: str) -> Path:
    return root / case_id(number) / f"{case_id(number)}_{role}.nii.gz"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def put_nan(path: Path) -> None:
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[5, 5, 4] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)


def put_label(path: Path, value: int) -> None:
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[5, 6, 4] = value
    nib.save(nib.Nifti1Image(data, image.affine), path)


def shift(path: Path, millimetres: float) -> None:
    """Move a volume's grid along x, its voxels unchanged."""
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 3] += millimetres
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), path)


def dataset(root: Path, count: int = 5) -> Path:
    for number in range(1, count + 1):
        write_case(root, number)
    return root


def stamps(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every case file in ``folder``."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("BraTS20_*"))}


# --------------------------------------------------------------------------- the case table


def test_excluded_cases_are_left_out_and_never_looked_into(tmp_path):
    root = dataset(tmp_path / "b20", 3)
    file_of(root, 2, "t1ce").unlink()  # would fail the table if case 2 were looked into
    table = find_cases(root, exclude=[case_id(2)], exclude_key=KEY)
    assert table["case_id"].tolist() == [case_id(1), case_id(3)]


def test_unknown_excluded_id_is_named_with_its_key(tmp_path):
    root = dataset(tmp_path / "b20", 3)
    with pytest.raises(LayoutError) as error:
        find_cases(root, exclude=[case_id(2), "BraTS20_Training_999", "nope"], exclude_key=KEY)
    message = str(error.value)
    assert message.startswith(f"{KEY}: no case 'BraTS20_Training_999', 'nope' in {root.resolve()} (3 cases")
    assert case_id(2) + "'" not in message  # the known id is not reported
    with pytest.raises(LayoutError, match=f"{KEY}: every case of .* is excluded"):
        find_cases(root, exclude=[case_id(n) for n in (1, 2, 3)], exclude_key=KEY)


def test_every_case_lacking_a_file_is_listed_with_both_fixes(tmp_path):
    root = dataset(tmp_path / "b20", 4)
    file_of(root, 2, "flair").unlink()
    file_of(root, 4, "t1").unlink()
    with pytest.raises(BrokenCasesError) as error:
        find_cases(root, exclude_key=KEY)
    assert [c for c, _ in error.value.broken] == [case_id(2), case_id(4)]
    message = str(error.value)
    assert message.splitlines()[0] == f"2 case(s) of {root.resolve()} lack a file:"
    assert f"case {case_id(2)}: no flair file in {(root / case_id(2)).resolve()}" in message
    assert f"case {case_id(4)}: no t1 file in {(root / case_id(4)).resolve()}" in message
    assert "1. repair it: put the missing file in place" in message
    assert f"2. or add it to {KEY} in your config, e.g. exclude_cases: [{case_id(2)}, {case_id(4)}]" in message


def test_cases_command_excludes_records_and_names_unknown_ids(tmp_path, capsys):
    root = dataset(tmp_path / "b20", 3)
    out, record = tmp_path / "cases.csv", tmp_path / "excluded.csv"
    command = ["cases", str(root), "--out", str(out), "--excluded-list", str(record)]
    assert main([*command, "--exclude", case_id(3), "--exclude-key", KEY]) == 0
    assert pd.read_csv(out)["case_id"].tolist() == [case_id(1), case_id(2)]
    assert pd.read_csv(record).to_dict(orient="records") == [{"case_id": case_id(3), "excluded_by": KEY}]
    assert f"left out 1 case(s) ({KEY}): {case_id(3)}" in capsys.readouterr().out
    assert main(command) == 0  # nothing excluded: the record says so
    assert pd.read_csv(record).empty and list(pd.read_csv(record).columns) == ["case_id", "excluded_by"]
    with pytest.raises(SystemExit, match=r"revunet cases: revunet cases --exclude: no case 'BraTS20_Training_009'"):
        main([*command, "--exclude", "BraTS20_Training_009"])
    truncate(file_of(root, 2, "seg"))
    capsys.readouterr()
    assert main([*command, "--check", "--exclude-key", KEY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("revunet cases: 1 of 3 cases are broken:\n")
    assert f"  - case {case_id(2)}: cannot read label file {file_of(root, 2, 'seg').resolve()}" in err
    assert f"2. or add it to {KEY} in your config, e.g. exclude_cases: [{case_id(2)}]." in err


def test_cases_first_keeps_the_first_cases_in_id_order_after_the_excluded(tmp_path, capsys):
    root = dataset(tmp_path / "b20", 4)
    out = tmp_path / "cases.csv"
    assert main(["cases", str(root), "--out", str(out), "--exclude", case_id(1), "--first", "2"]) == 0
    assert pd.read_csv(out)["case_id"].tolist() == [case_id(2), case_id(3)]
    assert main(["cases", str(root), "--out", str(out), "--first", "9"]) == 0
    assert len(pd.read_csv(out)) == 4
    with pytest.raises(SystemExit):
        main(["cases", str(root), "--out", str(out), "--first", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_plan_reads_exclude_cases_per_preset():
    entry = {"task": "brats", "paper": {"source": "local", "path": "/data/b20", "splits": {"main": {"fraction": 0.8}}}}
    plan = _plan_dataset("brats", entry, "paper", None)
    assert plan.exclude_cases == () and plan.cases_arguments() == f"--exclude-key {KEY}"
    entry["paper"]["exclude_cases"] = [case_id(7), "odd id"]
    plan = _plan_dataset("brats", entry, "paper", None)
    assert plan.cases_arguments() == f"--exclude-key {KEY} --exclude {case_id(7)} 'odd id'"
    with pytest.raises(ConfigError, match=f"config: {KEY}: expected a list of case ids like"):
        _exclude_cases(case_id(7), KEY)
    with pytest.raises(ConfigError, match=f"config: {KEY}: expected a list of case ids like"):
        _exclude_cases([case_id(7), 7], KEY)
    assert _exclude_cases(["a", "b", "a"], KEY) == ("a", "b")


# --------------------------------------------------------------------------- preprocessing


def test_broken_cases_are_all_named_and_the_good_ones_survive_and_are_not_redone(tmp_path, capsys):
    root = dataset(tmp_path / "b20", 5)
    truncate(file_of(root, 2, "t2"))
    put_nan(file_of(root, 3, "flair"))
    put_label(file_of(root, 4, "seg"), 3)  # BraTS 2020 labels are 0, 1, 2, 4
    table, store, out = tmp_path / "cases.csv", tmp_path / "store", tmp_path / "preprocessed"
    assert main(["cases", str(root), "--out", str(table)]) == 0
    command = [
        "preprocess",
        "--cases",
        str(table),
        "--all",
        "--shape",
        "8,8,8",
        "--store",
        str(store),
        "--out",
        str(out),
    ]

    capsys.readouterr()
    assert main([*command, "--exclude-key", KEY]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"revunet preprocess: 3 of 5 cases are broken; the 2 good one(s) are kept in {store} and will not be redone:"
    )
    for number, role, what in (
        (2, "t2", "cannot read"),
        (3, "flair", "1 non-finite voxels"),
        (4, "seg", "unexpected label values [3]"),
    ):
        line = next(line for line in err.splitlines() if line.startswith(f"  - case {case_id(number)}:"))
        assert str(file_of(root, number, role).resolve()) in line and what in line, line
    assert "1. repair it: replace or repair the file named above" in err
    assert f"2. or add it to {KEY} in your config, e.g. exclude_cases: [{', '.join(map(case_id, (2, 3, 4)))}]" in err
    assert "Traceback" not in err
    assert not out.exists()  # published only when every case succeeded
    kept = stamps(store)
    assert sorted(kept) == [f"{case_id(n)}.{ext}" for n in (1, 5) for ext in ("json", "npz")]

    assert main(["cases", str(root), "--out", str(table), "--exclude", *map(case_id, (2, 3, 4))]) == 0
    capsys.readouterr()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert printed.count(", skipped") == 2 and "(2 were up to date)" in printed
    assert stamps(store) == kept  # same bytes, same modification times: nothing redone
    assert stamps(out) == kept
    assert all((out / name).samefile(store / name) for name in kept)  # hard links: no second copy
    index = pd.read_csv(out / "index.csv")
    assert index.to_dict(orient="records") == [
        {"case_id": case_id(n), "npz": f"{case_id(n)}.npz", "json": f"{case_id(n)}.json"} for n in (1, 5)
    ]


def test_a_label_off_its_images_grid_is_a_broken_case_naming_both_affines(tmp_path, capsys):
    root = dataset(tmp_path / "b20", 3)
    shift(file_of(root, 2, "seg"), 0.5)  # the right shape, half a voxel off: it used to pass
    shift(file_of(root, 3, "seg"), 1e-4)  # within the 1e-3 mm tolerance: the same grid
    table, out = tmp_path / "cases.csv", tmp_path / "p"
    assert main(["cases", str(root), "--out", str(table)]) == 0
    capsys.readouterr()
    assert main(["preprocess", "--cases", str(table), "--all", "--shape", "8,8,8", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("revunet preprocess: 1 of 3 cases are broken;")
    line = next(line for line in err.splitlines() if line.startswith("  - case "))
    assert line == (
        f"  - case {case_id(2)}: label file {file_of(root, 2, 'seg').resolve()} has an affine that differs from "
        f"t1 file {file_of(root, 2, 't1').resolve()} by up to 0.5 (tolerance 0.001 mm); "
        "expected the label map on the image grid."
    )
    both = "label affine:\n[[-1.   0.   0.   0.5]\n [ 0.  -1.   0.   0. ]"  # rounded, then the image's
    assert both in err and "t1 affine:\n[[-1.  0.  0.  0.]" in err
    assert sorted(path.name for path in out.glob("*.npz")) == [f"{case_id(n)}.npz" for n in (1, 3)]


def test_in_one_folder_a_failed_run_withdraws_the_index_and_names_the_option(tmp_path, capsys):
    root = dataset(tmp_path / "b20", 2)
    table, out = tmp_path / "cases.csv", tmp_path / "p"
    main(["cases", str(root), "--out", str(table)])
    command = ["preprocess", "--cases", str(table), "--all", "--shape", "8,8,8", "--out", str(out)]
    assert main(command) == 0 and (out / "index.csv").is_file()
    good = stamps(out)
    with gzip.open(file_of(root, 1, "t1"), "wb") as stream:  # a changed file is read again
        stream.write(b"not a NIfTI file")
    capsys.readouterr()
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"case {case_id(1)}: cannot read t1 file {file_of(root, 1, 't1').resolve()}" in err
    assert f"2. or leave it out of the case table: revunet cases ... --exclude {case_id(1)}." in err
    assert not (out / "index.csv").exists()  # the folder no longer claims to be complete
    assert {name: value for name, value in stamps(out).items() if case_id(2) in name} == {
        name: value for name, value in good.items() if case_id(2) in name
    }


def test_publish_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    from revunet.data import preprocess_all

    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    for name in ("a.npz", "a.json"):
        (store / name).write_bytes(name.encode())
        os.utime(store / name, ns=(1_000_000_000, 2_000_000_000))

    def refuse(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr(preprocess_all.os, "link", refuse)
    preprocess_all.publish(["a"], store, out)
    assert (out / "a.npz").read_bytes() == b"a.npz" and (out / "a.npz").stat().st_mtime_ns == 2_000_000_000
    assert not (out / "a.npz").samefile(store / "a.npz")
    assert (out / "index.csv").read_text() == "case_id,npz,json\na,a.npz,a.json\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.npz", "index.csv"]  # no temporary left
