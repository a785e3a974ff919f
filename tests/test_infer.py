"""`revunet infer`: sliding windows agree with whole volumes, flips average what they should,
predictions land on the original grid in the dataset's own label values, and the command
writes one NIfTI per case plus predictions.csv or refuses clearly."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from revunet.cli import main
from revunet.data.case_table import read_case_table, write_case_table
from revunet.data.labels import canonical_to_disk
from revunet.data.layouts import find_cases
from revunet.data.preprocess import load_preprocessed, npz_path
from revunet.data.splits import read_split
from revunet.data.synth.generate import write_dataset
from revunet.evaluation.predict import (
    FLIP_AXES,
    InferenceSettings,
    predict_case,
    predict_volume,
    write_label_nifti,
)
from revunet.experiments.recipe import Experiment
from revunet.models.build import build_experiment_model
from revunet.models.vae import SegmentationWithVAE
from revunet.tasks import TASKS
from revunet.training.state import save_checkpoint

SPACING = 4.0  # mm: a 60x60x39 BraTS grid whose brains (about 34x43x34) are cropped in y, padded in x and z
SHAPE = "36,40,36"


# --------------------------------------------------------------------------- test models


class Pointwise(nn.Module):
    """A 1x1x1 convolution: translation- and flip-equivariant. ``size_multiple`` makes
    predict_volume pad; the model refuses other sizes, as the registry models do."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, size_multiple: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)
        self.size_multiple = size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert all(s % self.size_multiple == 0 for s in x.shape[2:]), x.shape
        return self.conv(x)


class Lopsided(nn.Module):
    """A 3x3x3 convolution with random (asymmetric) weights: not flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(4, 3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class WithVAE(Pointwise):
    def forward(self, x: torch.Tensor) -> SegmentationWithVAE:
        return SegmentationWithVAE(super().forward(x))


class LabelOracle(nn.Module):
    """Returns confident logits of a stored canonical label, whatever the image says."""

    def __init__(self, label: np.ndarray, task: str) -> None:
        super().__init__()
        if task == "brats":
            target = TASKS["brats"].region_stack(label).astype(np.float32) * 2 - 1
        else:
            target = np.eye(4, dtype=np.float32)[label].transpose(3, 0, 1, 2)
        self.logits = torch.from_numpy(np.ascontiguousarray(target) * 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert tuple(x.shape[2:]) == tuple(self.logits.shape[1:])
        return self.logits[None].expand(x.shape[0], *self.logits.shape)


def image(shape=(19, 23, 17), channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32))


# --------------------------------------------------------------------------- predict_volume


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
@pytest.mark.parametrize(("window", "overlap"), [((8, 10, 16), 4), ((8, 30, 6), 2), ((19, 23, 16), 0)])
def test_sliding_windows_blend_to_the_whole_volume_prediction(output, window, overlap):
    model = Pointwise(size_multiple=4)
    volume = image()
    whole = predict_volume(model, volume, output)
    assert whole.shape == (3, 19, 23, 17) and whole.dtype == torch.float32
    with torch.no_grad():
        logits = model.conv(volume[None])[0]
    torch.testing.assert_close(whole, torch.sigmoid(logits) if output == "sigmoid" else torch.softmax(logits, 0))
    windows = predict_volume(model, volume, output, window=window, overlap=overlap)
    torch.testing.assert_close(windows, whole, atol=1e-6, rtol=1e-5)


def test_windows_of_a_convolution_are_exact_wherever_every_covering_window_saw_the_neighbourhood():
    """A 3x3x3 model sees zero padding at inner window borders (indices 8 and 15 of 24 with 16-voxel
    windows overlapping by 8); every other voxel is exact in each window that covers it, so the
    Hann blend must reproduce the whole-volume prediction there, and differ at the seams."""
    model = Lopsided()
    volume = image((24, 24, 24))
    whole = predict_volume(model, volume, "sigmoid")
    windows = predict_volume(model, volume, "sigmoid", window=(16, 16, 16), overlap=8)
    clean = np.ones(24, dtype=bool)
    clean[[8, 15]] = False
    mask = torch.from_numpy(clean[:, None, None] & clean[None, :, None] & clean[None, None, :])
    torch.testing.assert_close(windows[:, mask], whole[:, mask], atol=1e-6, rtol=1e-5)
    assert (windows[:, ~mask] - whole[:, ~mask]).abs().max() > 1e-4


def test_a_window_covering_the_volume_is_the_whole_volume_prediction():
    from revunet.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("partially_reversible", channels=[4, 8], groups=2)
    volume = image((13, 12, 11))  # odd sizes: padded to the model's multiple of 2, then cropped
    whole = predict_volume(model, volume, "sigmoid")
    assert whole.shape == (3, 13, 12, 11)
    assert torch.equal(predict_volume(model, volume, "sigmoid", window=(16, 16, 16), overlap=4), whole)
    assert model.training, "predict_volume must leave the model in the mode it found it in"


def test_flips_leave_an_equivariant_model_unchanged_and_average_a_lopsided_one():
    volume = image((10, 12, 8))
    pointwise = Pointwise()
    plain = predict_volume(pointwise, volume, "sigmoid")
    torch.testing.assert_close(predict_volume(pointwise, volume, "sigmoid", flips=True), plain)

    lopsided = Lopsided()
    plain = predict_volume(lopsided, volume, "softmax")
    flipped = predict_volume(lopsided, volume, "softmax", flips=True)
    assert (flipped - plain).abs().max() > 1e-3
    with torch.no_grad():
        by_hand = sum(torch.softmax(lopsided(volume[None].flip(a)), 1).flip(a) for a in FLIP_AXES if a)
        by_hand = (by_hand + torch.softmax(lopsided(volume[None]), 1)) / 8
    assert len(set(FLIP_AXES)) == 8
    torch.testing.assert_close(flipped, by_hand[0])
    # Flips are applied per window too.
    torch.testing.assert_close(
        predict_volume(pointwise, volume, "sigmoid", window=(6, 6, 8), overlap=2, flips=True),
        predict_volume(pointwise, volume, "sigmoid"),
        atol=1e-6,
        rtol=1e-5,
    )


def test_vae_outputs_are_read_through_logits():
    volume = image((8, 8, 8))
    expected = predict_volume(Pointwise(), volume, "sigmoid")
    torch.testing.assert_close(predict_volume(WithVAE(), volume, "sigmoid"), expected)


def test_out_of_memory_falls_back_to_windows():
    class Limited(Pointwise):
        def forward(self, x):
            if x.shape[2:].numel() > 1000:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    volume = image((16, 16, 16))
    with pytest.raises(torch.OutOfMemoryError):
        predict_volume(Limited(), volume, "sigmoid")
    with pytest.warns(RuntimeWarning, match="does not fit"):
        fallback = predict_volume(Limited(), volume, "sigmoid", fallback_window=(8, 8, 8), overlap=2)
    torch.testing.assert_close(fallback, predict_volume(Pointwise(), volume, "sigmoid"), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "relu"}, "output must be one of"),
        ({"window": (8, 8, 8), "overlap": 3}, "even"),
        ({"window": (8, 8, 8), "overlap": 8}, "smaller than every window"),
        ({"window": (8, 8)}, "three positive sizes"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_volume(Pointwise(), image((16, 16, 16)), **{"output": "sigmoid", **kwargs})


# --------------------------------------------------------------------------- labels


def test_labels_from_probabilities_follow_the_overwrite_order_and_argmax():
    probs = np.zeros((3, 5, 1, 1), dtype=np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.2, 0.1]  # WT only -> edema 2
    probs[:, 1, 0, 0] = [0.9, 0.8, 0.1]  # WT + TC -> 1
    probs[:, 2, 0, 0] = [0.2, 0.1, 0.7]  # ET alone still wins -> 4
    probs[:, 3, 0, 0] = [0.5, 0.5, 0.5]  # exactly 0.5 is not above the threshold -> 0
    probs[:, 4, 0, 0] = [0.6, 0.9, 0.9]
    assert TASKS["brats"].labels_from_probabilities(torch.from_numpy(probs))[:, 0, 0].tolist() == [2, 1, 4, 0, 4]

    classes = np.array([[0.1, 0.7], [0.2, 0.1], [0.6, 0.1], [0.1, 0.1]], dtype=np.float32).reshape(4, 2, 1, 1)
    assert TASKS["iseg"].labels_from_probabilities(classes)[:, 0, 0].tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\(4, x, y, z\)"):
        TASKS["iseg"].labels_from_probabilities(probs)


def test_canonical_to_disk_inverts_the_layouts():
    canonical = np.array([0, 1, 2, 4], dtype=np.uint8)
    assert canonical_to_disk(canonical, "brats2020").tolist() == [0, 1, 2, 4]
    assert canonical_to_disk(canonical, "brats2023").tolist() == [0, 1, 2, 3]
    assert canonical_to_disk(canonical, "msd").tolist() == [0, 2, 1, 3]
    disk = canonical_to_disk(np.array([[0, 1], [2, 3]]), "iseg")
    assert disk.dtype == np.uint8 and disk.tolist() == [[0, 10], [150, 250]]
    with pytest.raises(ValueError, match="'brats2099'"):
        canonical_to_disk(canonical, "brats2099")
    with pytest.raises(ValueError, match=r"layout 'iseg': label values \[4\]"):
        canonical_to_disk(canonical, "iseg")


def test_label_nifti_is_uint8_gzip_with_the_affine_and_written_atomically(tmp_path):
    # NIfTI stores the affine in float32: values that float32 holds exactly come back exactly.
    affine = np.array([[-2.0, 0, 0, 90], [0, 3.0, 0.125, -126], [0, 0, 1.5, -72.5], [0, 0, 0, 1]])
    label = np.random.default_rng(0).choice([0, 10, 150, 250], size=(5, 6, 7)).astype(np.uint8)
    path = write_label_nifti(tmp_path / "p.nii.gz", label, affine)
    assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"
    stored = nib.load(path)
    assert stored.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(stored.dataobj), label)
    np.testing.assert_array_equal(stored.affine, affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz"]
    with pytest.raises(ValueError, match=".nii.gz"):
        write_label_nifti(tmp_path / "p.nii", label, affine)


# --------------------------------------------------------------------------- synthetic datasets


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> dict[str, Path]:
    """3 synthetic BraTS-2020 cases at 4 mm, preprocessed to 36x40x36 (cropped in y, padded in x and z), split 2/1."""
    root = tmp_path_factory.mktemp("brats")
    data = write_dataset("brats", root / "raw", 3, SPACING).root
    cases = write_case_table(find_cases(data), root / "cases.csv")
    assert main(["preprocess", "--cases", str(cases), "--all", "--shape", SHAPE, "--out", str(root / "pre")]) == 0
    assert main(["split", "--cases", str(cases), "--fraction", "0.67", "--out", str(root / "split.json")]) == 0
    return {"root": root, "cases": cases, "pre": root / "pre", "split": root / "split.json"}


def _round_trip(case_row: dict, pre: Path, out: Path) -> tuple[nib.Nifti1Image, nib.spatialimages.SpatialImage]:
    case = load_preprocessed(pre, case_row["case_id"])
    assert case.label is not None and case.meta.lost_label_voxels == 0
    model = LabelOracle(case.label, case.meta.task)
    settings = InferenceSettings(output="sigmoid" if case.meta.task == "brats" else "softmax")
    label = predict_case(model, case, case_row["layout"], settings)
    written = write_label_nifti(out / f"{case_row['case_id']}.nii.gz", label, case.meta.affine)
    return nib.load(written), nib.load(case_row["label"])


@pytest.mark.slow  # the module's synthetic dataset is made for this test (about 5 s)
def test_a_perfect_prediction_reproduces_the_reference_label_file(brats, tmp_path):
    table = read_case_table(brats["cases"])
    for row in table.to_dict(orient="records"):
        meta = load_preprocessed(brats["pre"], row["case_id"]).meta
        assert min(meta.offset) < 0 < max(meta.offset), "the fixture must both crop and pad"
        predicted, reference = _round_trip(row, brats["pre"], tmp_path)
        assert predicted.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(predicted.dataobj), np.asarray(reference.dataobj)), row["case_id"]
        np.testing.assert_allclose(predicted.affine, reference.affine, atol=1e-6)


@pytest.mark.slow
def test_iseg_predictions_use_the_disk_values(tmp_path):
    data = write_dataset("iseg", tmp_path / "raw", 1, SPACING).root
    cases = write_case_table(find_cases(data), tmp_path / "cases.csv")
    assert main(["preprocess", "--cases", str(cases), "--all", "--shape", "none", "--out", str(tmp_path / "pre")]) == 0
    row = read_case_table(cases).to_dict(orient="records")[0]
    predicted, reference = _round_trip(row, tmp_path / "pre", tmp_path)
    values = np.asarray(predicted.dataobj)
    assert set(np.unique(values).tolist()) == {0, 10, 150, 250}
    assert np.array_equal(values, np.asarray(reference.dataobj).reshape(values.shape))
    np.testing.assert_allclose(predicted.affine, reference.affine, atol=1e-6)


# --------------------------------------------------------------------------- the command


def tiny_checkpoint(path: Path, **changes) -> Path:
    params = {"channels": [4, 8], "groups": 2}
    experiment = Experiment(name="tiny", task="brats", model="partially_reversible", model_params=params, **changes)
    torch.manual_seed(0)
    model = build_experiment_model(experiment)
    payload = {"format": 1, "experiment": experiment.to_dict(), "model_state": model.state_dict(), "epoch": 0}
    return save_checkpoint(path, payload)


def _infer(brats, checkpoint, out, *extra) -> int:
    return main(
        ["infer", "--checkpoint", str(checkpoint), "--cases", str(brats["cases"]), "--preprocessed", str(brats["pre"]),
         "--split", str(brats["split"]), "--out", str(out), "--device", "cpu", *extra]
    )  # fmt: skip


@pytest.mark.slow
def test_infer_command_writes_one_label_file_per_test_case_and_the_list_last(brats, tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", sliding_window=(24, 40, 36), window_overlap=4)
    out = tmp_path / "pred"
    assert _infer(brats, checkpoint, out) == 0
    assert "24x40x36 windows, overlap 4, flips off" in capsys.readouterr().out
    held_out = read_split(brats["split"]).test
    with open(out / "predictions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["case_id", "prediction", "seconds"]
    assert [r["case_id"] for r in rows] == held_out
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.nii.gz" for c in held_out] + ["predictions.csv"])
    table = read_case_table(brats["cases"]).set_index("case_id")
    for row in rows:
        assert float(row["seconds"]) > 0
        predicted = nib.load(out / row["prediction"])
        reference = nib.load(table.loc[row["case_id"], "label"])
        assert predicted.shape == reference.shape and predicted.get_data_dtype() == np.uint8
        np.testing.assert_allclose(predicted.affine, reference.affine, atol=1e-6)
        assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= {0, 1, 2, 4}

    assert _infer(brats, checkpoint, tmp_path / "train", "--part", "train", "--window", "none") == 0
    assert "whole volumes, flips off" in capsys.readouterr().out
    listed = (tmp_path / "train" / "predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in listed] == read_split(brats["split"]).train

    # Without a split, every case of the table: a challenge's unlabelled validation folder.
    assert main(
        ["infer", "--checkpoint", str(checkpoint), "--cases", str(brats["cases"]), "--preprocessed", str(brats["pre"]),
         "--out", str(tmp_path / "online"), "--device", "cpu"]
    ) == 0  # fmt: skip
    assert "3 listed case(s)" in capsys.readouterr().out
    listed = (tmp_path / "online" / "predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in listed] == table.index.tolist()


def test_infer_options_override_the_experiment(brats, tmp_path, monkeypatch):
    import revunet.evaluation.predict

    calls = []

    def record(model, image, output, **options):
        calls.append({"output": output, **options})
        return torch.zeros((3, *image.shape[1:]))

    monkeypatch.setattr(revunet.evaluation.predict, "predict_volume", record)
    recipe = {"sliding_window": (24, 24, 24), "window_overlap": 4, "test_time_flips": True}
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", **recipe)
    assert _infer(brats, checkpoint, tmp_path / "a") == 0
    assert calls[-1] == {"output": "sigmoid", "window": (24, 24, 24), "overlap": 4, "flips": True,
                         "device": torch.device("cpu"), "fallback_window": None}  # fmt: skip
    overrides = ["--window", "16,20,18", "--overlap", "2", "--no-tta", "--part", "all"]
    assert _infer(brats, checkpoint, tmp_path / "b", *overrides) == 0
    assert len(calls) == 1 + 3, "--part all predicts every case of the table"
    assert (calls[-1]["window"], calls[-1]["overlap"], calls[-1]["flips"]) == ((16, 20, 18), 2, False)
    assert _infer(brats, checkpoint, tmp_path / "c", "--window", "none") == 0
    assert calls[-1]["window"] is None and calls[-1]["flips"]
    empty = nib.load(tmp_path / "c" / f"{read_split(brats['split']).test[0]}.nii.gz")
    assert not np.asarray(empty.dataobj).any()


def test_infer_command_refuses_missing_or_corrupt_checkpoints_and_cases(brats, tmp_path):
    out = tmp_path / "pred"
    with pytest.raises(SystemExit, match="no checkpoint at .*missing.pt"):
        _infer(brats, tmp_path / "missing.pt", out)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt.pt: not a readable checkpoint"):
        _infer(brats, corrupt, out)

    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    held_out = read_split(brats["split"]).test[0]
    pre = tmp_path / "pre"
    pre.mkdir()
    for path in brats["pre"].iterdir():
        if not path.name.startswith(held_out + "."):
            (pre / path.name).symlink_to(path)
    with pytest.raises(SystemExit, match=f"case {held_out}: no preprocessed file .*{held_out}.npz"):
        main(["infer", "--checkpoint", str(checkpoint), "--cases", str(brats["cases"]), "--preprocessed", str(pre),
              "--split", str(brats["split"]), "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert not out.exists(), "nothing may be written when an input is missing"

    # A run that fails half-way leaves no predictions.csv claiming to be complete.
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "predictions.csv").write_text("case_id,prediction,seconds\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in brats["pre"].iterdir():
        (broken / path.name).symlink_to(path)
    (broken / f"{held_out}.npz").unlink()
    (broken / f"{held_out}.npz").write_bytes(b"truncated")
    with pytest.raises(SystemExit, match=f"{held_out}"):
        main(["infer", "--checkpoint", str(checkpoint), "--cases", str(brats["cases"]), "--preprocessed", str(broken),
              "--split", str(brats["split"]), "--out", str(tmp_path / "done"), "--device", "cpu"])  # fmt: skip
    assert not (tmp_path / "done" / "predictions.csv").exists()
    assert npz_path(brats["pre"], held_out).is_file()

    table = read_case_table(brats["cases"])
    write_case_table(table[table["case_id"] != held_out], tmp_path / "fewer.csv")
    with pytest.raises(SystemExit, match=f"{held_out}.*not in the case table"):
        main(["infer", "--checkpoint", str(checkpoint), "--cases", str(tmp_path / "fewer.csv"), "--preprocessed",
              str(brats["pre"]), "--split", str(brats["split"]), "--out", str(out), "--device", "cpu"])  # fmt: skip

    params = {"in_channels": 2, "out_channels": 4, "output": "softmax", "channels": [4, 8]}
    iseg = Experiment(name="other", task="iseg", model="unet3d", model_params=params)
    state = build_experiment_model(iseg).state_dict()
    save_checkpoint(tmp_path / "iseg.pt", {"format": 1, "experiment": iseg.to_dict(), "model_state": state, "epoch": 0})
    with pytest.raises(SystemExit, match="trained for task 'iseg'"):
        _infer(brats, tmp_path / "iseg.pt", out)
    with pytest.raises(SystemExit):
        _infer(brats, checkpoint, out, "--overlap", "3")


@pytest.mark.parametrize("layout", ["brats2020", "brats2023", "msd", "iseg"])
def test_disk_to_canonical_inverts_canonical_to_disk(layout):
    from revunet.data.labels import canonical_to_disk, disk_to_canonical, disk_values

    canonical = np.array(sorted(disk_values(layout)), dtype=np.uint8).reshape(1, 1, -1)
    assert np.array_equal(disk_to_canonical(canonical_to_disk(canonical, layout), layout), canonical)
    assert np.array_equal(disk_to_canonical(canonical_to_disk(canonical, layout).astype(np.float32), layout), canonical)
    with pytest.raises(ValueError, match=f"layout {layout} does not define"):
        disk_to_canonical(np.full((1, 1, 1), 7), layout)
    with pytest.raises(ValueError, match="non-integer"):
        disk_to_canonical(np.full((1, 1, 1), 0.5), layout)
