"""The synthetic datasets: anatomy, nested tumour labels, contrasts, determinism and the on-disk layouts."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from revunet.cli import main
from revunet.data.io import load_case
from revunet.data.labels import ISEG_DISK_VALUES
from revunet.data.synth.anatomy import TEMPLATE_NOTICE
from revunet.data.synth.generate import (
    BRATS_ROOT,
    DEFAULT_SUBJECTS,
    ISEG_ROOT,
    MANIFEST_NAME,
    NAME_MAPPING_COLUMNS,
    NOTICE_NAME,
    generate_brats_like,
    generate_iseg_like,
    write_dataset,
)
from revunet.data.synth.subjects import (
    DEFAULT_SPACING,
    MAX_SPACING,
    MIN_SPACING,
    brats_grid,
    iseg_grid,
    make_brats_subject,
    make_iseg_subject,
    synth_brats_subject,
    synth_iseg_subject,
)
from revunet.data.synth.tumour import case_plan
from revunet.tasks import TASKS

SPACING = 5.0  # coarse: a subject takes about 0.1 s
CUBE = np.ones((3, 3, 3), dtype=bool)
N_BRATS = 12


@pytest.fixture(scope="module")
def brats_subjects():
    return [make_brats_subject(index, seed=0, spacing=SPACING) for index in range(N_BRATS)]


@pytest.fixture(scope="module")
def iseg_subjects():
    return [make_iseg_subject(index, seed=0, spacing=SPACING) for index in range(4)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- arrays


def test_array_api_types_and_label_values(brats_subjects, iseg_subjects):
    images, label, affine = synth_brats_subject(0, seed=0, spacing=SPACING)
    assert sorted(images) == ["flair", "t1", "t1ce", "t2"]
    assert all(image.dtype == np.int16 and image.shape == label.shape for image in images.values())
    assert label.dtype == np.uint8 and affine.shape == (4, 4)
    for subject in brats_subjects:
        assert set(np.unique(subject.label).tolist()) <= {0, 1, 2, 4}
        values = set(np.unique(subject.label).tolist())
        assert 2 in values and values & {1, 4}
    images, label, _ = synth_iseg_subject(0, seed=0, spacing=SPACING)
    assert sorted(images) == ["t1", "t2"] and all(image.dtype == np.int16 for image in images.values())
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}


def test_grids_follow_the_real_geometry():
    grid = brats_grid(3.0)
    assert grid.shape == (80, 80, 52)
    assert np.allclose(np.abs(np.diag(grid.affine)[:3]), 3.0)
    assert brats_grid(1.0).shape == (240, 240, 155)
    assert iseg_grid(1.0).shape == (144, 192, 256)
    assert iseg_grid(3.0).shape == (48, 64, 85)


def test_labels_are_nested(brats_subjects):
    for subject in brats_subjects:
        wt, tc, et = TASKS["brats"].region_stack(subject.label)
        assert not (et & ~tc).any() and not (tc & ~wt).any()
        # The core is enclosed by edema, necrosis by the core (on the 26-neighbourhood).
        assert not (ndimage.binary_dilation(tc, CUBE) & ~wt).any()
        necrosis = subject.label == 1
        if subject.plan.enhancing:
            assert not (ndimage.binary_dilation(necrosis, CUBE) & ~tc).any()
        # Every tumour voxel is brain.
        assert not (wt & ~subject.anatomy.mask).any()


def test_about_a_quarter_without_enhancing_tumour_and_some_multifocal(brats_subjects):
    plans = [case_plan(index, seed=0) for index in range(N_BRATS)]
    assert [s.plan for s in brats_subjects] == plans
    without = [not plan.enhancing for plan in plans]
    assert sum(without) == N_BRATS // 4
    for subject, lacks in zip(brats_subjects, without):
        assert (4 in subject.label) != lacks
    many = [case_plan(index, seed=3) for index in range(120)]
    assert sum(not p.enhancing for p in many) == 30
    assert sum(p.foci == 2 for p in many) == 20
    multifocal = [s for s in brats_subjects if s.plan.foci == 2]
    assert len(multifocal) == 2
    for subject in multifocal:
        tc = (subject.label == 1) | (subject.label == 4)
        assert ndimage.label(tc, CUBE)[1] >= 2


def test_edema_spreads_along_white_matter(brats_subjects):
    edema_wm, brain_wm = [], []
    for subject in brats_subjects:
        edema_wm.append(subject.anatomy.wm[subject.label == 2])
        brain_wm.append(subject.anatomy.wm[subject.anatomy.mask])
        # None into CSF-dominated voxels.
        assert not ((subject.label == 2) & (subject.anatomy.csf >= 0.5)).any()
    assert np.concatenate(edema_wm).mean() > np.concatenate(brain_wm).mean() + 0.15


def test_brats_contrasts(brats_subjects):
    for subject in brats_subjects:
        images = {k: v.astype(np.float64) for k, v in subject.images.items()}
        label, anatomy = subject.label, subject.anatomy
        wm = (anatomy.wm > 0.8) & (label == 0)
        gm = (anatomy.gm > 0.8) & (label == 0)
        csf = (anatomy.csf > 0.8) & (label == 0)
        mean = {
            name: {m: images[m][region].mean() for m in images}
            for name, region in (("wm", wm), ("gm", gm), ("csf", csf))
        }
        assert mean["wm"]["t1"] > mean["gm"]["t1"] > mean["csf"]["t1"]
        assert mean["csf"]["t2"] > mean["gm"]["t2"] > mean["wm"]["t2"]
        assert mean["csf"]["flair"] < mean["wm"]["flair"]
        assert images["flair"][label == 2].mean() > mean["wm"]["flair"]
        assert images["t2"][label == 2].mean() > mean["wm"]["t2"]
        if subject.plan.enhancing:
            assert images["t1ce"][label == 4].mean() > 1.1 * mean["wm"]["t1ce"]
            if (label == 1).sum() >= 5:
                assert images["t1ce"][label == 1].mean() < images["t1ce"][label == 4].mean()


def test_iseg_contrasts_are_isointense(iseg_subjects):
    for subject in iseg_subjects:
        label = subject.label
        means = {m: [subject.images[m][label == k].astype(np.float64).mean() for k in (1, 2, 3)] for m in ("t1", "t2")}
        csf, gm, wm = means["t1"]
        assert csf < gm and csf < wm and abs(gm - wm) < 0.12 * wm
        csf, gm, wm = means["t2"]
        assert csf > gm and csf > wm and abs(gm - wm) < 0.12 * wm


def test_zero_outside_the_brain_and_non_zero_inside(brats_subjects, iseg_subjects):
    for subject in brats_subjects + iseg_subjects:
        mask = subject.anatomy.mask
        for image in subject.images.values():
            assert np.array_equal(image != 0, mask)
            assert image.min() >= 0
        assert not subject.label[~mask].any()


def test_subjects_are_the_same_brain_at_any_voxel_size():
    volumes = [make_brats_subject(4, seed=0, spacing=s).anatomy.mask.sum() * s**3 for s in (3.0, 4.0)]
    assert abs(volumes[0] - volumes[1]) < 0.03 * volumes[0]


def test_subjects_depend_on_seed_and_index_only():
    a, b = make_brats_subject(1, seed=5, spacing=6.0), make_brats_subject(1, seed=5, spacing=6.0)
    assert np.array_equal(a.label, b.label)
    assert all(np.array_equal(a.images[m], b.images[m]) for m in a.images)
    c = make_brats_subject(1, seed=6, spacing=6.0)
    assert not np.array_equal(a.images["t1"], c.images["t1"])
    d = make_brats_subject(2, seed=5, spacing=6.0)
    assert not np.array_equal(a.images["t1"], d.images["t1"])


# ----------------------------------------------------------------------------- files


def test_brats_layout_on_disk(tmp_path):
    root = generate_brats_like(tmp_path, n_subjects=4, spacing=6.0, seed=0)
    assert root == tmp_path / BRATS_ROOT
    cases = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert cases == [f"BraTS20_Training_{n:03d}" for n in range(1, 5)]
    for case in cases:
        names = sorted(p.name for p in (root / case).iterdir())
        assert names == sorted(f"{case}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg"))
        for modality in ("flair", "t1", "t1ce", "t2"):
            image = nib.load(root / case / f"{case}_{modality}.nii.gz")
            assert image.get_data_dtype() == np.int16
            assert np.asanyarray(image.dataobj).dtype == np.int16
            assert np.allclose(image.header.get_zooms(), (6.0, 6.0, 6.0))
            assert np.allclose(np.abs(np.diag(image.affine)[:3]), 6.0)
        seg = nib.load(root / case / f"{case}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}

    with open(root / "name_mapping.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0].keys()) == NAME_MAPPING_COLUMNS
    assert [row["BraTS_2020_subject_ID"] for row in rows] == cases
    for index, row in enumerate(rows):
        assert row["BraTS_2019_subject_ID"] == row["BraTS_2016_subject_ID"] == "NA"
        seg = np.asanyarray(nib.load(root / cases[index] / f"{cases[index]}_seg.nii.gz").dataobj)
        assert row["Grade"] == ("HGG" if 4 in seg else "LGG")

    # What is on disk is exactly what the array API returns.
    images, label, affine = synth_brats_subject(2, seed=0, spacing=6.0)
    case = cases[2]
    assert np.array_equal(np.asanyarray(nib.load(root / case / f"{case}_t1ce.nii.gz").dataobj), images["t1ce"])
    assert np.array_equal(np.asanyarray(nib.load(root / case / f"{case}_seg.nii.gz").dataobj), label)
    assert np.allclose(nib.load(root / case / f"{case}_seg.nii.gz").affine, affine)


def test_iseg_layout_on_disk(tmp_path):
    root = generate_iseg_like(tmp_path, n_subjects=2, spacing=6.0, seed=0)
    assert root == tmp_path / ISEG_ROOT
    expected = {f"subject-{n}-{role}.{ext}" for n in (1, 2) for role in ("T1", "T2", "label") for ext in ("hdr", "img")}
    assert expected | {MANIFEST_NAME, NOTICE_NAME} == {p.name for p in root.iterdir()}
    shape = iseg_grid(6.0).shape
    for n in (1, 2):
        for role in ("T1", "T2"):
            image = nib.load(root / f"subject-{n}-{role}.hdr")
            assert isinstance(image, nib.AnalyzeImage)  # nibabel picks its SPM2 flavour for .hdr/.img
            assert image.shape == shape + (1,)
            assert image.get_data_dtype() == np.int16
            assert np.allclose(image.header.get_zooms()[:3], 6.0)
        label = nib.load(root / f"subject-{n}-label.hdr")
        assert isinstance(label, nib.AnalyzeImage) and label.get_data_dtype() == np.uint8
        values = np.asanyarray(label.dataobj)
        assert set(np.unique(values).tolist()) == set(ISEG_DISK_VALUES)
    _, canonical, affine = synth_iseg_subject(1, seed=0, spacing=6.0)
    on_disk = nib.load(root / "subject-2-label.hdr")
    lookup = np.zeros(256, dtype=np.uint8)
    for disk, value in ISEG_DISK_VALUES.items():
        lookup[disk] = value
    assert np.array_equal(lookup[np.asanyarray(on_disk.dataobj)[..., 0]], canonical)
    assert np.allclose(on_disk.affine, affine)


def test_files_are_deterministic_and_prefix_stable(tmp_path):
    first = _files(generate_brats_like(tmp_path / "a", n_subjects=2, spacing=6.0, seed=3))
    again = _files(generate_brats_like(tmp_path / "b", n_subjects=2, spacing=6.0, seed=3))
    assert first == again
    longer = _files(generate_brats_like(tmp_path / "c", n_subjects=3, spacing=6.0, seed=3))
    images = [name for name in first if name.endswith(".nii.gz")]
    assert all(longer[name] == first[name] for name in images)
    other = _files(generate_brats_like(tmp_path / "d", n_subjects=2, spacing=6.0, seed=4))
    assert all(other[name] != first[name] for name in images)
    iseg = [_files(generate_iseg_like(tmp_path / name, n_subjects=1, spacing=6.0, seed=3)) for name in ("e", "f")]
    assert iseg[0] == iseg[1]


def test_manifest_idempotence_and_atomic_replacement(tmp_path):
    summary = write_dataset("iseg", tmp_path, n_subjects=1, spacing=6.0, seed=0)
    assert summary.generated
    manifest = json.loads((summary.root / MANIFEST_NAME).read_text())
    assert manifest["settings"]["n_subjects"] == 1 and manifest["settings"]["spacing_mm"] == 6.0
    assert manifest["template_notice"] == TEMPLATE_NOTICE
    assert TEMPLATE_NOTICE in (summary.root / NOTICE_NAME).read_text()
    assert set(manifest["files"]) == {p.name for p in summary.root.iterdir()} - {MANIFEST_NAME}

    assert not write_dataset("iseg", tmp_path, n_subjects=1, spacing=6.0, seed=0).generated
    # A damaged file is noticed and the dataset rebuilt; so is a change of settings.
    (summary.root / "subject-1-T1.img").write_bytes(b"truncated")
    assert write_dataset("iseg", tmp_path, n_subjects=1, spacing=6.0, seed=0).generated
    assert write_dataset("iseg", tmp_path, n_subjects=2, spacing=6.0, seed=0).generated
    assert (summary.root / "subject-2-T1.hdr").is_file()
    # Nothing is left behind but the dataset itself.
    assert [p.name for p in tmp_path.iterdir()] == [ISEG_ROOT]
    assert not [p for p in summary.root.rglob("*") if p.name.startswith(".")]

    foreign = tmp_path / "elsewhere" / BRATS_ROOT
    foreign.mkdir(parents=True)
    (foreign / "real_case.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        write_dataset("brats", tmp_path / "elsewhere", n_subjects=1, spacing=6.0)
    assert (foreign / "real_case.txt").read_text() == "not ours"


def test_cli_synth(tmp_path, capsys):
    arguments = ["synth", "--task", "brats", "--out", str(tmp_path), "--subjects", "2", "--spacing", "6", "--seed", "1"]
    assert main(arguments) == 0
    assert "generated" in capsys.readouterr().out
    assert (tmp_path / BRATS_ROOT / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz").is_file()
    assert main(arguments) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["synth", "--task", "brats", "--out", str(tmp_path), "--spacing", "0"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default {DEFAULT_SPACING:g})" in help_text and f"{MIN_SPACING:g} to {MAX_SPACING:g}" in help_text
    assert f"default {DEFAULT_SUBJECTS['brats']} for brats, {DEFAULT_SUBJECTS['iseg']} for iseg" in help_text


def test_readers_accept_the_synthetic_layouts(tmp_path):
    layouts = pytest.importorskip("revunet.data.layouts")
    for generate, n, subject, layout in (
        (generate_brats_like, 3, synth_brats_subject, "brats2020"),
        (generate_iseg_like, 2, synth_iseg_subject, "iseg"),
    ):
        root = generate(tmp_path, n_subjects=n, spacing=6.0, seed=0)
        assert layouts.detect_layout(root) == layout
        rows = layouts.find_cases(root).to_dict("records")
        assert len(rows) == n
        for index, row in enumerate(sorted(rows, key=lambda r: int(re.sub(r"\D", "", str(r["case_id"]))))):
            case = load_case(row)
            images, label, affine = subject(index, seed=0, spacing=6.0)
            assert np.array_equal(case.label, label)
            assert np.allclose(case.affine, affine) and np.allclose(case.spacing, 6.0)
            for modality, image in images.items():
                assert np.array_equal(case.images[modality], image.astype(np.float32))
