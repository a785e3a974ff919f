"""Preprocessing: bounding-box crop, centre crop/pad, z-score, the exact inverse, files and the CLI."""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from revunet.catalog import TASK_MODALITIES
from revunet.cli import main
from revunet.data.io import load_case
from revunet.data.preprocess import (
    PreprocessMeta,
    centre_offsets,
    input_fingerprint,
    is_current,
    kept_mask,
    load_preprocessed,
    lost_voxels,
    nonzero_bbox,
    parse_shape,
    paste_back,
    preprocess_case,
    read_meta,
    save_preprocessed,
    window,
)

SHAPE = (24, 28, 20)
BOX = (slice(3, 19), slice(5, 25), slice(2, 16))  # the "brain": 16 x 20 x 14


@dataclass(frozen=True)
class FakeCase:
    """What preprocess_case reads of a LoadedCase."""

    case_id: str
    task: str
    images: dict[str, np.ndarray]
    label: np.ndarray | None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source_files: dict[str, str] = field(default_factory=dict)


def brats_case(case_id: str = "case_a", seed: int = 0, with_label: bool = True) -> FakeCase:
    rng = np.random.default_rng(seed)
    images = {}
    for index, modality in enumerate(TASK_MODALITIES["brats"]):
        data = np.zeros(SHAPE, dtype=np.float32)
        data[BOX] = rng.uniform(100, 200, size=data[BOX].shape) * (index + 1)
        images[modality] = data
    # One modality has a few zero voxels inside the brain: they must stay 0.
    images["t2"][10, 10, 5:8] = 0
    label = None
    if with_label:
        label = np.zeros(SHAPE, dtype=np.uint8)
        label[6:14, 8:20, 4:12] = 2
        label[8:12, 10:16, 6:10] = 1
        label[9:11, 12:14, 7:9] = 4
    files = {m: f"/data/{case_id}_{m}.nii.gz" for m in images}
    return FakeCase(case_id, "brats", images, label, source_files=files)


def test_bbox_crop_and_centre_pad_and_zscore():
    case = brats_case()
    result = preprocess_case(case, (20, 24, 18))
    meta = result.meta
    assert result.image.shape == (4, 20, 24, 18) and result.image.dtype == np.float32
    assert result.label.shape == (20, 24, 18) and result.label.dtype == np.uint8
    assert meta.bbox_start == (3, 5, 2) and meta.bbox_stop == (19, 25, 16)
    assert meta.offset == (-2, -2, -2) and meta.shape == (20, 24, 18)
    assert meta.modalities == TASK_MODALITIES["brats"]
    for channel, modality in enumerate(meta.modalities):
        values = result.image[channel]
        original = case.images[modality][BOX]
        nonzero = values != 0
        # Background and zero voxels stay exactly 0; the brain sits centred in the padding.
        assert np.count_nonzero(nonzero) == np.count_nonzero(original)
        assert not nonzero[:2].any() and not nonzero[-2:].any()
        assert values[nonzero].mean() == pytest.approx(0, abs=1e-5)
        assert values[nonzero].std() == pytest.approx(1, abs=1e-4)
        assert meta.zscore_mean[modality] == pytest.approx(original[original != 0].mean(), rel=1e-6)
    assert result.image[2, 9, 7, 5:8].tolist() == [0, 0, 0]  # t2's holes: original - bbox start + 2 of padding
    assert meta.lost_label_voxels == 0 and meta.lost_brain_voxels == 0


def test_shape_none_keeps_the_bounding_box_and_round_trips_exactly():
    case = brats_case()
    result = preprocess_case(case, None)
    assert result.meta.shape == (16, 20, 14) and result.meta.target_shape is None
    assert result.meta.offset == (0, 0, 0)
    np.testing.assert_array_equal(paste_back(result.label, result.meta), case.label)
    brain = paste_back(result.image != 0, result.meta)
    np.testing.assert_array_equal(brain[0], case.images["t1"] != 0)


def test_centre_crop_loses_label_voxels_and_says_so():
    case = brats_case()
    with pytest.warns(RuntimeWarning, match="case_a.*cuts off .* labelled voxels"):
        result = preprocess_case(case, (6, 28, 9))
    meta = result.meta
    assert meta.offset == (5, -4, 2)  # floor((16-6)/2), floor((20-28)/2), floor((14-9)/2)
    back = paste_back(result.label, meta)
    kept = kept_mask(meta)
    # Wherever the crop kept a voxel the label comes back unchanged; elsewhere it is background.
    np.testing.assert_array_equal(back[kept], case.label[kept])
    assert not back[~kept].any()
    lost = int(np.count_nonzero(case.label[~kept]))
    assert lost > 0 and meta.lost_label_voxels == lost == lost_voxels(case.label, meta)
    assert meta.lost_brain_voxels == lost_voxels(np.stack(list(case.images.values())), meta) > 0


def test_paste_back_with_channels_and_fill():
    case = brats_case()
    result = preprocess_case(case, (18, 18, 16))
    probabilities = np.random.default_rng(1).random((2, 3, 18, 18, 16)).astype(np.float32)
    back = paste_back(probabilities, result.meta, fill=-1)
    assert back.shape == (2, 3, *SHAPE) and back.dtype == np.float32
    kept = kept_mask(result.meta)
    assert np.all(back[:, :, ~kept] == -1)
    assert np.isclose(back[:, :, kept].sum(), probabilities[(..., *_inner(result.meta))].sum())
    # The image's brain comes back where it was (channel axis leading).
    brain = paste_back(result.image, result.meta) != 0
    np.testing.assert_array_equal(brain[0][kept], case.images["t1"][kept] != 0)
    with pytest.raises(ValueError, match="ending in shape"):
        paste_back(np.zeros((4, 4, 4)), result.meta)


def _inner(meta: PreprocessMeta) -> tuple[slice, ...]:
    """Preprocessed-space slices that hold bounding-box voxels."""
    return tuple(
        slice(max(0, -offset), min(size, stop - start - offset))
        for start, stop, offset, size in zip(meta.bbox_start, meta.bbox_stop, meta.offset, meta.shape)
    )


def test_zero_variance_and_empty_modalities_are_named():
    case = brats_case()
    flat = dict(case.images)
    flat["flair"] = np.where(case.images["flair"] != 0, 7.0, 0.0).astype(np.float32)
    with pytest.raises(ValueError, match="case case_a: modality flair has zero variance"):
        preprocess_case(FakeCase("case_a", "brats", flat, None), None)
    # A modality whose only non-zero voxels fall outside the centre crop.
    sparse = dict(case.images)
    sparse["t1ce"] = np.zeros(SHAPE, dtype=np.float32)
    sparse["t1ce"][3, 5, 2] = 1.0
    with pytest.raises(ValueError, match="modality t1ce has no non-zero voxel inside the crop"):
        preprocess_case(FakeCase("case_a", "brats", sparse, None), (4, 4, 4))
    zero = {m: np.zeros(SHAPE, dtype=np.float32) for m in case.images}
    with pytest.raises(ValueError, match="case case_a: every voxel is zero"):
        preprocess_case(FakeCase("case_a", "brats", zero, None), None)
    with pytest.raises(ValueError, match=r"modalities \['t2'\] are missing"):
        preprocess_case(FakeCase("case_a", "brats", {m: case.images[m] for m in ("t1", "t1ce", "flair")}, None), None)


def test_helpers():
    assert centre_offsets((151, 160, 171), (160, 160, 160)) == (-5, 0, 5)
    assert parse_shape("160,192,160") == (160, 192, 160) and parse_shape("8x8x8") == (8, 8, 8)
    assert parse_shape("None") is None
    for bad in ("1,2", "a,b,c", "0,4,4"):
        with pytest.raises(ValueError, match="three positive integers"):
            parse_shape(bad)
    array = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    cut = window(array, (-1, 3), (3, 4), fill=-9)
    assert cut.shape == (2, 3, 4)
    np.testing.assert_array_equal(cut[:, 1:, :2], array[:, :2, 3:])
    assert np.all(cut[:, 0] == -9) and np.all(cut[:, :, 2:] == -9)
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1, 2, 3] = mask[3, 4, 3] = True
    assert nonzero_bbox(mask) == ((1, 2, 3), (4, 5, 4))


def test_save_and_load_round_trip(tmp_path):
    result = preprocess_case(brats_case(), (20, 24, 18))
    path = save_preprocessed(tmp_path / "out", result)
    assert path == tmp_path / "out" / "case_a.npz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_a.json", "case_a.npz"]
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    for source in (load_preprocessed(tmp_path / "out", "case_a"), load_preprocessed(tmp_path / "out" / "case_a.json")):
        np.testing.assert_array_equal(source.image, result.image)
        np.testing.assert_array_equal(source.label, result.label)
        assert source.image.dtype == np.float32 and source.label.dtype == np.uint8
        assert source.meta == result.meta
    document = json.loads((tmp_path / "out" / "case_a.json").read_text())
    assert document["bbox_start"] == [3, 5, 2] and document["source_files"]["t1"] == "/data/case_a_t1.nii.gz"
    assert document["has_label"] is True and len(document["affine"]) == 4

    unlabelled = preprocess_case(brats_case("case_b", with_label=False), None)
    save_preprocessed(tmp_path / "out", unlabelled)
    back = load_preprocessed(tmp_path / "out", "case_b")
    assert back.label is None and back.meta.has_label is False
    with pytest.raises(FileNotFoundError, match="no preprocessing metadata"):
        load_preprocessed(tmp_path / "out", "missing")


def test_fingerprint_tracks_inputs_and_settings(tmp_path):
    source = tmp_path / "t1.nii.gz"
    source.write_bytes(b"x")
    row = {"case_id": "case_a", "task": "brats", "t1": str(source), "t1ce": f"{source}#1", "label": ""}
    fingerprint = input_fingerprint(row, (20, 24, 18))
    assert list(fingerprint["files"]) == [str(source)]
    result = preprocess_case(brats_case(), (20, 24, 18))
    assert not is_current(tmp_path / "out", "case_a", fingerprint)
    save_preprocessed(
        tmp_path / "out", result.__class__(result.image, result.label, _with_fingerprint(result.meta, fingerprint))
    )
    assert is_current(tmp_path / "out", "case_a", fingerprint)
    assert not is_current(tmp_path / "out", "case_a", input_fingerprint(row, None))
    source.write_bytes(b"changed")
    assert not is_current(tmp_path / "out", "case_a", input_fingerprint(row, (20, 24, 18)))


def _with_fingerprint(meta: PreprocessMeta, fingerprint: dict) -> PreprocessMeta:
    import dataclasses

    return dataclasses.replace(meta, fingerprint=fingerprint)


# --------------------------------------------------------------------------- real files, the CLI


def write_brats2020(root: Path, case_ids: list[str], broken: str | None = None) -> None:
    """A miniature BraTS 2020 training folder written with nibabel."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for number, case_id in enumerate(case_ids):
        case = brats_case(case_id, seed=number)
        folder = root / case_id
        folder.mkdir(parents=True)
        for modality, data in case.images.items():
            if case_id == broken and modality == "flair":
                data = np.zeros_like(data)
            nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{modality}.nii.gz")
        nib.save(nib.Nifti1Image(case.label, affine), folder / f"{case_id}_seg.nii.gz")


def test_layout_to_preprocessed_round_trip(tmp_path):
    layouts = pytest.importorskip("revunet.data.layouts")
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_brats2020(root, ["BraTS20_Training_001", "BraTS20_Training_002"])
    table = layouts.find_cases(root)
    assert table["case_id"].tolist() == ["BraTS20_Training_001", "BraTS20_Training_002"]
    row = table.iloc[1].to_dict()
    loaded = load_case(row)
    result = preprocess_case(loaded, (18, 22, 16))
    save_preprocessed(tmp_path / "pre", result)
    back = load_preprocessed(tmp_path / "pre", "BraTS20_Training_002")
    np.testing.assert_array_equal(back.image, result.image)
    assert back.meta.source_files["label"].endswith("BraTS20_Training_002_seg.nii.gz")
    assert np.allclose(np.array(back.meta.affine), np.diag([-1.0, -1.0, 1.0, 1.0]))
    original = np.asarray(nib.load(row["label"]).dataobj)
    np.testing.assert_array_equal(paste_back(back.label, back.meta), original)


def test_preprocess_command(tmp_path, capsys):
    pytest.importorskip("revunet.data.layouts")
    root = tmp_path / "data"
    ids = ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    write_brats2020(root, ids, broken="BraTS20_Training_002")
    table = tmp_path / "cases.csv"
    assert main(["cases", str(root), "--out", str(table)]) == 0
    out = tmp_path / "pre"
    base = ["preprocess", "--cases", str(table), "--out", str(out), "--shape", "18,22,16"]

    assert main([*base, "--case-id", ids[0]]) == 0
    meta_file = out / f"{ids[0]}.json"
    stamp = meta_file.stat().st_mtime_ns
    assert read_meta(out, ids[0]).shape == (18, 22, 16)
    capsys.readouterr()
    assert main([*base, "--case-id", ids[0]]) == 0
    assert "skipped" in capsys.readouterr().out and meta_file.stat().st_mtime_ns == stamp
    assert main([*base, "--case-id", ids[0], "--force"]) == 0
    assert "skipped" not in capsys.readouterr().out and meta_file.stat().st_mtime_ns != stamp
    # Other settings are other outputs: a new shape recomputes.
    assert main([*base[:-1], "none", "--case-id", ids[0]]) == 0
    assert read_meta(out, ids[0]).shape == (16, 20, 14)

    # --all: the broken case is reported, the others still complete, the exit code says so.
    assert main([*base, "--all"]) == 1
    captured = capsys.readouterr()
    assert "BraTS20_Training_002" in captured.err and "all zero" in captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.glob("*.npz")) == [f"{ids[0]}.npz", f"{ids[2]}.npz"]

    with pytest.raises(SystemExit, match="case 'nope' is not in"):
        main([*base, "--case-id", "nope"])
    with pytest.raises(SystemExit, match="all zero"):
        main([*base, "--case-id", ids[1]])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["preprocess", "--cases", str(tmp_path / "missing.csv"), "--out", str(out), "--all"])
    with pytest.raises(SystemExit):
        main([*base[:-1], "1,2", "--all"])
    assert "three positive integers" in capsys.readouterr().err


def test_warning_from_the_command_reaches_stderr(tmp_path, capsys):
    pytest.importorskip("revunet.data.layouts")
    root = tmp_path / "data"
    write_brats2020(root, ["BraTS20_Training_001"])
    table = tmp_path / "cases.csv"
    main(["cases", str(root), "--out", str(table)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            main(["preprocess", "--cases", str(table), "--all", "--out", str(tmp_path / "p"), "--shape", "6,28,9"]) == 0
        )
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "labelled voxels" in captured.err
    assert "crop cut" in captured.out
