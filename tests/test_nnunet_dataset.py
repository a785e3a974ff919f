"""The nnU-Net raw dataset converter (`revunet.integrations.nnunet.raw`) and `revunet nnunet-dataset`.

nnU-Net's own checker must accept what is written, so that `nnUNetv2_plan_and_preprocess` can run on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from revunet.cli import main
from revunet.data.synth.generate import write_dataset
from revunet.integrations.nnunet.raw import write_raw_dataset

MODALITIES = ("t1", "t1ce", "t2", "flair")  # nnU-Net channels 0000..0003
BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}  # nnU-Net's BraTS conversion: edema 1, necrosis 2, enhancing 3


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic BraTS 2020 cases at 8 mm."""
    return write_dataset("brats", tmp_path_factory.mktemp("synth"), n_subjects=3, spacing=8.0, seed=0).root


@pytest.fixture(scope="module")
def converted(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raw_dataset(source, tmp_path_factory.mktemp("nnUNet_raw"), 7)


def _case_files(source: Path, case: str) -> dict[str, Path]:
    return {key: source / case / f"{case}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def test_converts_brats(source: Path, converted: Path) -> None:
    assert converted.name == "Dataset007_RevunetBraTS"
    cases = sorted(p.name for p in source.iterdir() if p.is_dir())
    assert sorted(p.name for p in (converted / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    expected_images = [f"{c}_{k:04d}.nii.gz" for c in cases for k in range(4)]
    assert sorted(p.name for p in (converted / "imagesTr").iterdir()) == expected_images
    assert not (converted / "imagesTs").exists()
    found = set()
    for case in cases:
        files = _case_files(source, case)
        label = nib.load(converted / "labelsTr" / f"{case}.nii.gz")
        assert label.get_data_dtype() == np.uint8
        values = np.asarray(label.dataobj)
        found |= set(np.unique(values).tolist())
        reference = np.asarray(nib.load(files["seg"]).dataobj)
        for brats, nnunet in BRATS_TO_NNUNET.items():
            assert np.array_equal(values == nnunet, reference == brats), (case, brats, nnunet)
        for channel, modality in enumerate(MODALITIES):
            original = nib.load(files[modality])
            copied = nib.load(converted / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
            assert copied.get_data_dtype() == original.get_data_dtype()
            np.testing.assert_array_equal(np.asarray(copied.dataobj), np.asarray(original.dataobj))
            np.testing.assert_array_equal(copied.affine, original.affine)
            np.testing.assert_array_equal(label.affine, original.affine)
    assert found == {0, 1, 2, 3}  # every label occurs, so the voxel checks above are not vacuous
    document = json.loads((converted / "dataset.json").read_text())
    assert document["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert document["labels"] == {
        "background": 0,
        "whole tumor": [1, 2, 3],
        "tumor core": [2, 3],
        "enhancing tumor": [3],
    }
    assert document["regions_class_order"] == [1, 2, 3]
    assert document["numTraining"] == 3
    assert document["file_ending"] == ".nii.gz"


@pytest.mark.nnunet
def test_nnunet_accepts_it(converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nnunetv2", reason="needs the nnunet extra: pip install -c constraints.txt -e '.[nnunet]'")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    verify_dataset_integrity(str(converted), num_processes=1)  # raises on any problem


def test_decathlon_channels_and_unlabelled_cases(source: Path, tmp_path: Path) -> None:
    """The Decathlon's 4-D files (FLAIR, T1, T1ce, T2) become one file per channel in revunet's order;
    its labels (1 edema, 2 non-enhancing, 3 enhancing) already are nnU-Net's; imagesTs stays unlabelled."""
    case = sorted(p.name for p in source.iterdir() if p.is_dir())[0]
    files = _case_files(source, case)
    first = nib.load(files["t1"])
    stacked = np.stack([np.asarray(nib.load(files[m]).dataobj) for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
    seg = np.asarray(nib.load(files["seg"]).dataobj)
    msd = tmp_path / "Task01_BrainTumour"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (msd / folder).mkdir(parents=True)
    for folder, number in (("imagesTr", 1), ("imagesTs", 2)):
        nib.save(nib.Nifti1Image(stacked, first.affine), msd / folder / f"BRATS_00{number}.nii.gz")
    msd_seg = np.select([seg == 2, seg == 1, seg == 4], [1, 2, 3], 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(msd_seg, first.affine), msd / "labelsTr" / "BRATS_001.nii.gz")

    out = write_raw_dataset(msd, tmp_path / "raw", 12, "Msd")
    for channel, modality in enumerate(MODALITIES):
        written = nib.load(out / "imagesTr" / f"BRATS_001_{channel:04d}.nii.gz")
        assert written.shape == seg.shape
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(nib.load(files[modality]).dataobj))
    np.testing.assert_array_equal(np.asarray(nib.load(out / "labelsTr" / "BRATS_001.nii.gz").dataobj), msd_seg)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"BRATS_002_{k:04d}.nii.gz" for k in range(4)]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1


def test_unexpected_label_names_the_file(source: Path, tmp_path: Path) -> None:
    broken = tmp_path / "BraTS"
    shutil.copytree(source, broken)
    case = sorted(p.name for p in broken.iterdir() if p.is_dir())[1]
    seg_file = _case_files(broken, case)["seg"]
    image = nib.load(seg_file)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, image.affine, image.header), seg_file)

    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"(?s)BraTS20_Training_002_seg\.nii\.gz.*\[7\].*\[0, 1, 2, 4\]") as error:
        write_raw_dataset(broken, raw, 3)
    assert str(seg_file) in str(error.value)
    assert list(raw.iterdir()) == []  # no partial DatasetNNN_ folder, no staging folder left behind


def test_existing_folder_needs_force(source: Path, tmp_path: Path) -> None:
    existing = tmp_path / "Dataset004_RevunetBraTS"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="Dataset004_RevunetBraTS"):
        write_raw_dataset(source, tmp_path, 4)
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]
    with pytest.raises(FileExistsError, match="Dataset004_RevunetBraTS"):  # the same id under another name
        write_raw_dataset(source, tmp_path, 4, "Other", force=True)

    assert write_raw_dataset(source, tmp_path, 4, force=True) == existing
    assert not (existing / "mine.txt").exists() and (existing / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset004_RevunetBraTS"]


def test_iseg_is_refused(tmp_path: Path) -> None:
    iseg = write_dataset("iseg", tmp_path, n_subjects=1, spacing=8.0, seed=0).root
    with pytest.raises(ValueError, match=r"iseg dataset.*supports only the brats task"):
        write_raw_dataset(iseg, tmp_path / "raw", 5)
    assert not (tmp_path / "raw").exists()


def test_command(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["nnunet-dataset", "--source", str(source), "--out", str(tmp_path), "--id", "9", "--name", "Cli"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'Dataset009_Cli'}: 3 training cases" in out
    assert len(list((tmp_path / "Dataset009_Cli" / "imagesTr").iterdir())) == 12
    with pytest.raises(SystemExit, match=r"revunet nnunet-dataset: .*Dataset009_Cli already exists"):
        main(arguments)
    assert main([*arguments, "--force"]) == 0
