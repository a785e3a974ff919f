"""`revunet export`: BraTS 2018-2021 and 2023 names and labels on the original grid, and the predictions it refuses."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.cli import main
from revunet.data.case_table import read_case_table
from revunet.evaluation.export import ExportError, export_name


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    assert main(["synth", "--task", "brats", "--subjects", "2", "--out", str(root / "raw")]) == 0
    assert main(["cases", str(root / "raw"), "--out", str(root / "cases.csv")]) == 0
    return root / "cases.csv"


def references(cases: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case id -> (reference label in its on-disk values, affine)."""
    out = {}
    for _, row in read_case_table(cases).iterrows():
        image = nib.load(row["label"])
        out[row["case_id"]] = (np.asarray(image.dataobj).astype(np.uint8).reshape(image.shape[:3]), image.affine)
    return out


def write_predictions(folder: Path, labels: dict[str, np.ndarray], affines: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, label in labels.items():
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affines[case_id]), folder / f"{case_id}.nii.gz")
    listing = [{"case_id": c, "prediction": f"{c}.nii.gz", "seconds": 1.0} for c in labels]
    pd.DataFrame(listing).to_csv(folder / "predictions.csv", index=False)
    return folder


def export(cases: Path, predictions: Path, convention: str, out: Path) -> int:
    command = ["export", "--cases", str(cases), "--predictions", str(predictions), "--out", str(out)]
    return main([*command, "--convention", convention])


def test_brats2021_keeps_names_and_labels_on_the_original_grid(brats, tmp_path):
    refs = references(brats)
    folder = write_predictions(
        tmp_path / "pred", {c: label for c, (label, _) in refs.items()}, {c: a for c, (_, a) in refs.items()}
    )
    assert export(brats, folder, "brats2021", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{c}.nii.gz" for c in refs)
    for case_id, (label, affine) in refs.items():
        image = nib.load(tmp_path / "out" / f"{case_id}.nii.gz")
        assert image.get_data_dtype() == np.uint8 and np.allclose(image.affine, affine)
        assert np.array_equal(np.asarray(image.dataobj), label)
        assert set(np.unique(label)) <= {0, 1, 2, 4} and 4 in np.unique(label)


def test_brats2023_renames_and_renumbers_enhancing_tumour(brats, tmp_path):
    refs = references(brats)
    ids = list(refs)
    renamed = {ids[0]: "BraTS2021_00017", ids[1]: "BraTS-GLI-00042-001"}
    table = pd.read_csv(brats)
    table["case_id"] = table["case_id"].map(renamed)
    table.to_csv(tmp_path / "cases.csv", index=False)
    labels = {renamed[c]: label for c, (label, _) in refs.items()}
    folder = write_predictions(tmp_path / "pred", labels, {renamed[c]: a for c, (_, a) in refs.items()})
    assert export(tmp_path / "cases.csv", folder, "brats2023", tmp_path / "out") == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"BraTS-GLI-00017-000.nii.gz", "BraTS-GLI-00042-001.nii.gz"}
    exported = np.asarray(nib.load(tmp_path / "out" / "BraTS-GLI-00017-000.nii.gz").dataobj)
    original = labels["BraTS2021_00017"]
    assert np.array_equal(exported, np.where(original == 4, 3, original))
    assert set(np.unique(exported)) == {0, 1, 2, 3}


def test_export_name_refuses_ids_the_2023_challenge_would_not_know():
    assert export_name("BraTS20_Validation_001", "brats2021") == "BraTS20_Validation_001.nii.gz"
    with pytest.raises(ExportError, match=r"case BraTS20_Training_001: .*got case id 'BraTS20_Training_001', expected"):
        export_name("BraTS20_Training_001", "brats2023")


def test_wrong_shape_or_labels_are_refused_naming_the_file_and_nothing_is_written(brats, tmp_path, capsys):
    refs = references(brats)
    ids = list(refs)
    affines = {c: a for c, (_, a) in refs.items()}
    label = refs[ids[1]][0]
    cropped = write_predictions(tmp_path / "cropped", {ids[0]: refs[ids[0]][0], ids[1]: label[:-1]}, affines)
    out = tmp_path / "out"
    short = (label.shape[0] - 1, *label.shape[1:])
    with pytest.raises(
        SystemExit, match=rf"cropped/{ids[1]}\.nii\.gz has shape \({short[0]}, .*expected \({label.shape[0]}, "
    ):
        export(brats, cropped, "brats2021", out)
    assert not out.exists() or not any(out.iterdir())  # the good first case is not written either

    three = write_predictions(tmp_path / "three", {ids[0]: np.where(refs[ids[0]][0] == 4, 3, refs[ids[0]][0])}, affines)
    with pytest.raises(
        SystemExit, match=rf"three/{ids[0]}\.nii\.gz holds label values \[3\] .*expected a subset of \[0, 1, 2, 4\]"
    ):
        export(brats, three, "brats2021", out)
    with pytest.raises(SystemExit, match="BraTS-GLI-XXXXX-YYY"):
        export(brats, write_predictions(tmp_path / "ok", {ids[0]: refs[ids[0]][0]}, affines), "brats2023", out)
