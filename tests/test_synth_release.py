"""`revunet synth --release`: stand-ins of the official training releases, read by the real readers.

The three releases are written once for the module (8 mm, a few seconds each), then counted,
listed with `revunet cases` and split with `revunet split` the way the paper preset does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.cli import main
from revunet.data.case_table import read_case_table
from revunet.data.layouts import BrokenCasesError, LayoutNote, detect_layout, find_cases
from revunet.data.synth.generate import write_dataset
from revunet.data.synth.release import (
    BRATS2020_QUIRK_LABEL,
    RELEASE_SPACING,
    brats2018_cases,
    brats2020_cases,
    grade_subjects,
)
from revunet.data.synth.tumour import case_plan

FOLDERS = {
    "brats2020": "MICCAI_BraTS2020_TrainingData",
    "brats2018": "MICCAI_BraTS_2018_Data_Training",
    "iseg": "iSeg-2019-Training",
}
COUNTS = {"brats2020": 369, "brats2018": 285, "iseg": 10}
CASE_355 = "BraTS20_Training_355"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three releases, written once with the command, in one folder like a paper preset's data_root."""
    out = tmp_path_factory.mktemp("releases")
    for layout in FOLDERS:
        assert main(["synth", "--layout", layout, "--release", "--out", str(out)]) == 0
    return out


def test_release_names_counts_and_grades() -> None:
    cases_2020 = brats2020_cases()
    assert len(cases_2020) == 369 and cases_2020[0][0] == "BraTS20_Training_001"
    assert Counter(grade for _, grade in cases_2020) == {"HGG": 293, "LGG": 76}
    cases_2018 = brats2018_cases()
    names = [name for name, _ in cases_2018]
    assert len(set(names)) == 285 and Counter(grade for _, grade in cases_2018) == {"HGG": 210, "LGG": 75}
    assert {"Brats18_2013_2_1", "Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1"} <= set(names)
    families = Counter(name.split("_")[1][:4] for name in names)
    assert set(families) == {"2013", "CBIC", "TCIA"} and families["2013"] == 30
    # Each case's subject has the case's grade (the tumour agrees with name_mapping.csv and HGG/LGG).
    for cases in (cases_2020, cases_2018):
        indices = grade_subjects(cases, seed=0)
        assert all(case_plan(i, 0).grade == grade for i, (_, grade) in zip(indices, cases, strict=True))


def test_brats2020_release_on_disk_has_369_cases_the_355_quirk_and_name_mapping(releases: Path) -> None:
    root = releases / FOLDERS["brats2020"]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [f"BraTS20_Training_{n:03d}" for n in range(1, 370)]
    quirk = sorted(p.name for p in (root / CASE_355).iterdir())
    assert quirk == [*(f"{CASE_355}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")), BRATS2020_QUIRK_LABEL]
    assert (root / "BraTS20_Training_354" / "BraTS20_Training_354_seg.nii.gz").is_file()
    label, image = (nib.load(root / CASE_355 / name) for name in (BRATS2020_QUIRK_LABEL, f"{CASE_355}_t1.nii.gz"))
    assert isinstance(label, nib.Nifti1Image) and isinstance(image, nib.Nifti1Image)
    assert label.shape == image.shape  # uncompressed, consistent with its images
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 4}
    mapping = pd.read_csv(root / "name_mapping.csv")
    assert mapping["BraTS_2020_subject_ID"].tolist() == folders
    assert mapping["Grade"].value_counts().to_dict() == {"HGG": 293, "LGG": 76}
    manifest = json.loads((root / "synth_manifest.json").read_text())
    assert manifest["settings"]["release"] is True and manifest["settings"]["spacing_mm"] == RELEASE_SPACING


def test_brats2018_and_iseg_releases_on_disk(releases: Path) -> None:
    root = releases / FOLDERS["brats2018"]
    grades = {grade: sorted(p.name for p in (root / grade).iterdir()) for grade in ("HGG", "LGG")}
    assert {grade: len(names) for grade, names in grades.items()} == {"HGG": 210, "LGG": 75}
    case = grades["HGG"][0]
    assert sorted(p.name for p in (root / "HGG" / case).iterdir()) == [
        f"{case}_{role}.nii" for role in ("flair", "seg", "t1", "t1ce", "t2")
    ]
    iseg = sorted(p.name for p in (releases / FOLDERS["iseg"]).glob("subject-*"))
    assert len(iseg) == 10 * 3 * 2 and "subject-10-label.img" in iseg


def test_an_identical_request_is_a_no_op_and_release_fixes_the_count(releases: Path, capsys) -> None:
    again = write_dataset(None, releases, 369, None, layout="brats2020", release=True)
    assert not again.generated
    assert main(["synth", "--layout", "brats2018", "--release", "--subjects", "285", "--out", str(releases)]) == 0
    assert "already up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="release has 10 subjects.*drop --subjects 9"):
        main(["synth", "--layout", "iseg", "--release", "--subjects", "9", "--out", str(releases)])


@pytest.mark.parametrize("layout", list(FOLDERS))
def test_cases_reads_each_release_with_its_layout_detected(releases: Path, layout: str, tmp_path, capsys) -> None:
    root = releases / FOLDERS[layout]
    assert detect_layout(root) == layout
    out = tmp_path / "cases.csv"
    with pytest.warns(LayoutNote) if layout == "brats2020" else _no_note():
        assert main(["cases", str(root), "--out", str(out)]) == 0
    n = COUNTS[layout]
    assert capsys.readouterr().out.startswith(f"{layout}: {n} cases ({n} labelled, 0 unlabelled)")
    table = read_case_table(out)
    assert len(table) == n and (table["label"] != "").all()
    if layout == "brats2020":
        assert Path(table.set_index("case_id").loc[CASE_355, "label"]).name == BRATS2020_QUIRK_LABEL


@contextlib.contextmanager
def _no_note() -> Iterator[None]:
    """Turns any LayoutNote into an error: only case 355 deserves one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutNote)
        yield


def test_split_of_the_369_cases_needs_329_40_not_330_40(releases: Path, tmp_path, capsys) -> None:
    cases = tmp_path / "cases.csv"
    with pytest.warns(LayoutNote):
        assert main(["cases", str(releases / FOLDERS["brats2020"]), "--out", str(cases)]) == 0
    assert main(["split", "--cases", str(cases), "--counts", "329,40", "--out", str(tmp_path / "ok.json")]) == 0
    split = json.loads((tmp_path / "ok.json").read_text())
    parts = {key: value for key, value in split.items() if isinstance(value, list)}
    assert sum(len(ids) for ids in parts.values()) == 369 and len(parts["train"]) == 329
    assert len(set().union(*parts.values())) == 369
    with pytest.raises(SystemExit, match="needs 370 labelled cases but only 369"):
        main(["split", "--cases", str(cases), "--counts", "330,40", "--out", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


# --------------------------------------------------------------------------- the odd label rule


def _case(releases: Path, tmp_path: Path, number: int = 1) -> Path:
    """A copy of one BraTS 2020 release case under ``tmp_path/train`` (to edit its files)."""
    case = f"BraTS20_Training_{number:03d}"
    shutil.copytree(releases / FOLDERS["brats2020"] / case, tmp_path / "train" / case)
    return tmp_path / "train" / case


def test_a_lone_odd_nifti_is_the_label_with_a_note(releases: Path, tmp_path) -> None:
    folder = _case(releases, tmp_path)
    (folder / f"{folder.name}_seg.nii.gz").rename(folder / "scan_Segm.nii.gz")
    with pytest.warns(
        LayoutNote, match=f"no {folder.name}_seg.nii.gz .*; took the only other NIfTI file, scan_Segm.nii.gz"
    ):
        table = find_cases(tmp_path / "train")
    assert Path(table.loc[0, "label"]).name == "scan_Segm.nii.gz"


def test_two_odd_niftis_are_an_error_and_none_is_unlabelled(releases: Path, tmp_path) -> None:
    folder = _case(releases, tmp_path)
    seg = folder / f"{folder.name}_seg.nii.gz"
    shutil.copy(seg, folder / "a_Segm.nii")
    seg.rename(folder / "b_Segm.nii.gz")
    with pytest.raises(BrokenCasesError, match="2 other NIfTI files that could be its label: a_Segm.nii, b_Segm"):
        find_cases(tmp_path / "train")
    (folder / "a_Segm.nii").unlink()
    (folder / "b_Segm.nii.gz").unlink()
    with _no_note():
        assert find_cases(tmp_path / "train").loc[0, "label"] == ""


def test_a_seg_file_wins_over_a_stray_nifti_without_a_note(releases: Path, tmp_path) -> None:
    folder = _case(releases, tmp_path)
    shutil.copy(folder / f"{folder.name}_seg.nii.gz", folder / "W39_1998.09.19_Segm.nii.gz")
    with _no_note():
        table = find_cases(tmp_path / "train")
    assert Path(table.loc[0, "label"]).name == f"{folder.name}_seg.nii.gz"
