"""`revunet train`: the recipe, the run folder, exact resumption after SIGKILL, non-finite losses,
early stopping, gradient accumulation and two-process DistributedDataParallel (gloo).

Every run uses a tiny partially reversible U-Net (channels 4, 8; 2 groups) on 16^3 synthetic
volumes written directly as preprocessed cases, so a run takes about a second.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from revunet.catalog import TASK_MODALITIES
from revunet.cli import main as cli_main
from revunet.data.preprocess import PreprocessedCase, PreprocessMeta, save_preprocessed
from revunet.data.splits import split_document, write_split
from revunet.evaluation.predict import predict_volume
from revunet.experiments.recipe import Experiment, write_experiment
from revunet.models.build import build_experiment_model
from revunet.training import loop, setup, validation
from revunet.training.early_stopping import EarlyStopping
from revunet.training.errors import TrainError
from revunet.training.loop import train
from revunet.training.losses import SegmentationLoss
from revunet.training.randomness import ShardedOrder, seed_everything
from revunet.training.run_log import step_timing
from revunet.training.state import load_checkpoint, model_from_checkpoint

SHAPE = (16, 16, 16)
TINY = {"channels": [4, 8], "groups": 2}


def store_case(directory: Path, case_id: str, seed: int, task: str = "brats", shape=SHAPE) -> None:
    """A noisy 'brain' whose bright blob is the tumour (label 2 around 1 around 4)."""
    SHAPE = tuple(shape)
    rng = np.random.default_rng(seed)
    modalities = TASK_MODALITIES[task]
    image = rng.normal(0, 0.3, size=(len(modalities), *SHAPE)).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    centre = rng.integers(5, 11, size=3)
    x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    if task == "brats":
        label[distance < 4] = 2
        label[distance < 2.5] = 1
        label[distance < 1.5] = 4
    else:
        label[distance < 5] = 1
        label[distance < 3] = 2
        label[distance < 1.5] = 3
    contrast = 0.3 * np.arange(1, len(modalities) + 1, dtype=np.float32)[:, None, None, None]
    image += label[None].astype(np.float32) * contrast
    meta = PreprocessMeta(
        case_id=case_id,
        task=task,
        modalities=modalities,
        original_shape=SHAPE,
        affine=np.eye(4).tolist(),
        spacing=(1.0, 1.0, 1.0),
        bbox_start=(0, 0, 0),
        bbox_stop=SHAPE,
        offset=(0, 0, 0),
        target_shape=None,
        shape=SHAPE,
        source_files={},
        zscore_mean={m: 0.0 for m in modalities},
        zscore_std={m: 1.0 for m in modalities},
        has_label=True,
    )
    save_preprocessed(directory, PreprocessedCase(image, label, meta))


def make_data(root: Path, n_train: int = 3, n_held: int = 1, task: str = "brats", shapes=None) -> tuple[Path, Path]:
    pre = root / f"pre_{task}"
    ids = [f"case{i}" for i in range(n_train + n_held)]
    for i, case_id in enumerate(ids):
        store_case(pre, case_id, i, task, SHAPE if shapes is None else shapes[i])
    split = root / f"split_{task}.json"
    parts = {"train": ids[:n_train], "validation": ids[n_train:], "unused": []}
    write_split(split, split_document(parts, "fraction:0.8", 0))
    return pre, split


def tiny(**changes) -> Experiment:
    values = {
        "name": "tiny",
        "task": "brats",
        "model": "partially_reversible",
        "model_params": dict(TINY),
        "lr": 3e-3,
        "epochs": 3,
        "seed": 1,
    }
    return Experiment.from_dict({**values, **changes})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: faster for these tiny volumes on a shared machine, and as in the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("data"))


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- units


def test_step_timing_leaves_the_warm_up_step_out_of_the_typical_step() -> None:
    assert step_timing([30.0, 2.0, 4.0, 3.0]) == {"first_step_seconds": 30.0, "step_seconds": 3.0}
    assert step_timing([5.0]) == {"first_step_seconds": 5.0, "step_seconds": 5.0}
    assert step_timing([]) == {"first_step_seconds": None, "step_seconds": None}


def test_early_stopping_stops_patience_epochs_after_the_best_ema() -> None:
    rule = EarlyStopping(alpha=0.5, patience=2)
    dice = [0.2, 0.6, 0.5, 0.3, 0.3, 0.9]
    expected_ema = [0.2, 0.4, 0.45, 0.375, 0.3375]
    stops = []
    for epoch, (value, ema) in enumerate(zip(dice, expected_ema), start=1):
        rule.update(epoch, value)
        assert rule.ema == pytest.approx(ema)
        stops.append(rule.should_stop(epoch))
    # best EMA 0.45 at epoch 3 (the raw Dice peaked at epoch 2): stop once epoch > 3 + 2
    assert rule.best_epoch == 3 and rule.best_dice == 0.5
    assert stops == [False, False, False, False, False]
    assert rule.should_stop(6)
    assert not EarlyStopping(0.5, None, best_epoch=1).should_stop(1000)
    assert EarlyStopping.from_state(rule.state_dict()) == rule


def test_ranks_share_one_permutation_like_cards() -> None:
    single = ShardedOrder(7, seed=3)
    ranks = [ShardedOrder(7, seed=3, rank=r, world_size=2) for r in range(2)]
    for order in (single, *ranks):
        order.set_epoch(4)
    assert sorted(single.order()) == list(range(7))
    assert ranks[0].order() == single.order()[0:6:2] and ranks[1].order() == single.order()[1:6:2]
    single.set_epoch(5)
    assert single.order() != ShardedOrder(7, seed=3).order()  # a fresh permutation per epoch


# --------------------------------------------------------------------------- a finished run


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> tuple[Path, Experiment, dict]:
    pre, split = data
    out = tmp_path_factory.mktemp("run")
    experiment = tiny(milestones=[1, 2], gamma=0.5)
    summary = train(experiment, pre, split, out, device="cpu", progress=False)
    return out, experiment, summary


def test_log_columns_schedule_and_summary(finished) -> None:
    out, experiment, summary = finished
    with open(out / "log.csv", newline="") as stream:
        header = next(csv.reader(stream))
    assert header == [
        "epoch",
        "steps",
        "train_loss",
        "loss_dice",
        "grad_norm",
        "val_dice_WT",
        "val_dice_TC",
        "val_dice_ET",
        "val_mean_dice",
        "ema_dice",
        "lr",
        "epoch_seconds",
        "validation_seconds",
        "first_step_seconds",
        "step_seconds",
        "peak_memory_mib",
        "tensor_peak_mib",
        "time",
    ]
    rows = read_log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["steps"]) for r in rows] == [3, 3, 3]
    # MultiStepLR: x0.5 after epoch 1 and after epoch 2
    assert [float(r["lr"]) for r in rows] == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    for r in rows:
        regions = [float(r[f"val_dice_{k}"]) for k in ("WT", "TC", "ET")]
        assert float(r["val_mean_dice"]) == pytest.approx(np.mean(regions))
        assert float(r["peak_memory_mib"]) > 10
        # 3 steps: the median of steps 2-3 is at most their sum; the epoch holds all three and validation
        assert (
            0 < float(r["step_seconds"])
            and float(r["first_step_seconds"]) + 2 * float(r["step_seconds"]) <= float(r["epoch_seconds"]) * 1.01
        )
    assert float(rows[0]["ema_dice"]) == float(rows[0]["val_mean_dice"])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "tiny" and summary["epochs_completed"] == 3
    assert summary["stopped"] == "max_epochs" and summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["best_ema_dice"] == max(float(r["ema_dice"]) for r in rows)
    assert (summary["selection"], summary["validation_cases"]) == ("best validation EMA", ["case3"])
    assert all(0 < float(r["validation_seconds"]) < float(r["epoch_seconds"]) for r in rows)
    assert Experiment.from_dict(json.loads((out / "experiment.json").read_text())) == experiment


def test_best_checkpoint_is_the_best_ema_epoch_and_loads(finished) -> None:
    out, experiment, summary = finished
    model, stored, payload = model_from_checkpoint(out / "best.pt")
    assert stored == experiment and not model.training
    assert payload["epoch"] == summary["best_epoch"]
    assert payload["ema_dice"] == summary["best_ema_dice"]
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and last["best"]["epoch"] == summary["best_epoch"]
    with torch.no_grad():
        assert model(torch.zeros(1, 4, *SHAPE)).shape == (1, 3, *SHAPE)


def test_without_a_validation_part_nothing_is_selected_and_best_is_the_last_epoch(tmp_path) -> None:
    """A split that selects nothing (Pendse, the invertible-residual paper): no validation, no
    early stopping, best.pt = the last epoch's weights, and the test cases are never read."""
    pre, split = make_data(tmp_path, n_train=3, n_held=0)
    parts = {"train": ["case0", "case1", "case2"], "validation": [], "test": ["elsewhere"], "unused": []}
    write_split(split, split_document(parts, "counts:3,1", 0))
    out = tmp_path / "run"
    summary = train(tiny(epochs=2, snapshot_epochs=[1]), pre, split, out, device="cpu", progress=False)
    assert (summary["selection"], summary["validation_cases"], summary["best_epoch"]) == ("last epoch", [], 2)
    # a snapshot epoch's weights are kept for reporting (Pendse et al.'s "after 50 epochs")
    snapshot = load_checkpoint(out / "epoch_0001.pt")
    assert snapshot["epoch"] == 1 and not states_equal(
        snapshot["model_state"], load_checkpoint(out / "last.pt")["model_state"]
    )
    rows = read_log(out / "log.csv")
    assert [r["val_mean_dice"] for r in rows] == ["", ""] and [r["validation_seconds"] for r in rows] == ["", ""]
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["epoch"] == 2 and states_equal(best["model_state"], last["model_state"])
    with pytest.raises(TrainError, match="stops early .* no validation part"):
        train(tiny(epochs=2, patience=3), pre, split, tmp_path / "stopping", device="cpu", progress=False)
    assert sorted(p.name for p in out.glob("epoch_*.pt")) == ["epoch_0001.pt"]


def test_rerun_of_finished_run_does_nothing_and_regenerates_deleted_outputs(finished, data) -> None:
    out, experiment, summary = finished
    pre, split = data
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert train(experiment, pre, split, out, device="cpu", progress=False) == summary
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    log_text = (out / "log.csv").read_text()
    for name in ("best.pt", "log.csv", "summary.json"):  # what Snakemake deletes before a rerun
        (out / name).unlink()
    assert train(experiment, pre, split, out, device="cpu", progress=False) == summary
    assert (out / "log.csv").read_text() == log_text
    assert json.loads((out / "summary.json").read_text()) == summary
    assert load_checkpoint(out / "best.pt")["epoch"] == summary["best_epoch"]


def test_changed_experiment_starts_over_saying_why_and_restart_always_does(data, tmp_path, capsys) -> None:
    pre, split = data
    out = tmp_path / "run"
    train(tiny(epochs=1), pre, split, out, device="cpu", progress=False)
    spec = tmp_path / "changed.json"
    write_experiment(spec, tiny(epochs=1, lr=1e-3))
    args = ["train", "--experiment", str(spec), "--preprocessed", str(pre), "--split", str(split), "--out", str(out)]
    args += ["--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert cli_main(args) == 0
    assert "the experiment changed (keys: lr): starting over" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["experiment"]["lr"] == 1e-3
    assert cli_main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli_main([*args, "--restart"]) == 0
    assert "--restart: starting over" in capsys.readouterr().out


# --------------------------------------------------------------------------- resumption after SIGKILL

KILLED_RUN = """
import sys, time
from pathlib import Path
from revunet.data.dataset import PatchDataset
from revunet.cli import main

marker = Path(sys.argv[1])
original = PatchDataset.__getitem__
calls = []

def stall_in_epoch_3(self, index):
    if self.epoch == 2 and self.augment is not None:  # the training set, third epoch
        calls.append(index)
        if len(calls) == 3:  # one optimiser step of epoch 3 is done
            marker.write_text("epoch 3 running")
            time.sleep(600)
    return original(self, index)

PatchDataset.__getitem__ = stall_in_epoch_3
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow(35)
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(data, tmp_path) -> None:
    pre, split = data
    spec = tmp_path / "exp.json"
    # batch 2, accumulation, augmentation, a schedule, a warm-up into epoch 3 (2 steps per epoch),
    # clipping and dropout (torch's global generator):
    # every piece of state a resumed run must restore is exercised
    write_experiment(
        spec,
        tiny(
            epochs=4,
            batch_size=2,
            accumulation=2,
            samples_per_volume=2,
            augmentation="invres2020",
            milestones=[2],
            optimizer="adamw",
            weight_decay=1e-3,
            warmup_steps=5,
            grad_clip_norm=0.5,
            model_params={**TINY, "dropout": 0.2},
        ),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

    def command(out: Path) -> list[str]:
        return [
            "train",
            "--experiment",
            str(spec),
            "--preprocessed",
            str(pre),
            "--split",
            str(split),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]

    cli = [sys.executable, "-m", "revunet.cli"]
    reference = subprocess.Popen(
        [*cli, *command(tmp_path / "reference")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    marker = tmp_path / "marker"
    killed_out = tmp_path / "killed"
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(marker), *command(killed_out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached epoch 3"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    before_resume = load_checkpoint(killed_out / "last.pt")
    assert before_resume["epoch"] == 2
    assert not (killed_out / "summary.json").exists()

    resumed = subprocess.run([*cli, *command(killed_out)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert reference.wait(timeout=120) == 0, reference.communicate()[0]

    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    got = load_checkpoint(killed_out / "last.pt")
    assert got["epoch"] == expected["epoch"] == 4
    assert states_equal(got["model_state"], expected["model_state"])
    assert states_equal(got["best"]["model_state"], expected["best"]["model_state"])
    strip = ("epoch_seconds", "validation_seconds", "first_step_seconds", "step_seconds", "peak_memory_mib", "time")
    assert [{k: v for k, v in r.items() if k not in strip} for r in got["log_rows"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in expected["log_rows"]
    ]
    assert got["log_rows"][:2] == before_resume["log_rows"]  # epochs 1-2 were not trained again
    assert len(read_log(killed_out / "log.csv")) == 4
    assert json.loads((killed_out / "summary.json").read_text())["epochs_completed"] == 4


# --------------------------------------------------------------------------- failures


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(data, tmp_path, monkeypatch) -> None:
    pre, split = data
    real_loss = setup.make_loss(tiny())
    calls = []

    class PoisonedLoss(SegmentationLoss):
        def terms(self, output, target, image=None):
            calls.append(1)
            terms = real_loss.terms(output, target, image)
            if len(calls) == 5:  # epoch 2 (3 steps per epoch), step 2
                terms["dice"] = terms["dice"] * float("nan")
            return terms

    poisoned = PoisonedLoss("sigmoid", dice_scale=0.2, dice_reduction="sum")
    monkeypatch.setattr(setup, "make_loss", lambda experiment: poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"non-finite loss \(nan\) at epoch 2 step 2"):
        train(tiny(), pre, split, out, device="cpu", progress=False)
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 1 and last["stopped"] is None
    assert all(torch.isfinite(v).all() for v in last["model_state"].values() if v.is_floating_point())
    assert len(read_log(out / "log.csv")) == 1 and not (out / "summary.json").exists()


def test_huge_learning_rate_is_reported_by_the_command(data, tmp_path) -> None:
    pre, split = data
    spec = tmp_path / "exp.yaml"
    # PyYAML writes 1.0e+30 (a JSON 1e+30 would be read back as a string)
    spec.write_text(yaml.safe_dump({**tiny(optimizer="sgd", epochs=2).to_dict(), "lr": 1e30}))
    with pytest.raises(SystemExit) as info:
        cli_main(
            [
                "train",
                "--experiment",
                str(spec),
                "--preprocessed",
                str(pre),
                "--split",
                str(split),
                "--out",
                str(tmp_path / "run"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
    assert info.value.code != 0
    assert str(info.value).startswith("revunet train: non-finite loss")
    assert "at epoch 1 step 2" in str(info.value)


def test_bad_inputs_name_what_is_wrong(data, tmp_path) -> None:
    pre, split = data
    base = ["train", "--preprocessed", str(pre), "--split", str(split), "--out", str(tmp_path / "run"), "--no-progress"]
    with pytest.raises(SystemExit, match=r"revunet train: no experiment file at .*nowhere\.yaml"):
        cli_main(["train", "--experiment", str(tmp_path / "nowhere.yaml"), *base[1:]])
    spec = tmp_path / "exp.json"
    write_experiment(spec, tiny())
    with pytest.raises(SystemExit, match=r"revunet train: no split file at .*missing\.json"):
        cli_main(
            [
                "train",
                "--experiment",
                str(spec),
                "--preprocessed",
                str(pre),
                "--split",
                str(tmp_path / "missing.json"),
                "--out",
                str(tmp_path / "run"),
            ]
        )
    bad_split = tmp_path / "bad_split.json"
    write_split(bad_split, split_document({"train": ["case0", "ghost"], "validation": ["case3"]}, "fraction:0.8", 0))
    with pytest.raises(TrainError, match="ghost"):
        train(tiny(), pre, bad_split, tmp_path / "run2", device="cpu", progress=False)
    iseg = tiny(
        model_params={**TINY, "in_channels": 2, "out_channels": 4, "output": "softmax"}, task="iseg", loss="invres2020"
    )
    with pytest.raises(TrainError, match=r"for task 'iseg' but the preprocessed cases .* are \['brats'\]"):
        train(iseg, pre, split, tmp_path / "run3", device="cpu", progress=False)
    with pytest.raises(TrainError, match="task iseg needs softmax outputs"):
        train(tiny(task="iseg"), pre, split, tmp_path / "run4", device="cpu", progress=False)


# --------------------------------------------------------------------------- early stopping in a run


def test_run_stops_early_at_the_rule_s_epoch(data, tmp_path, monkeypatch) -> None:
    pre, split = data
    scripted = iter([0.5, 0.4, 0.45, 0.3, 0.2, 0.9, 0.9, 0.9])
    monkeypatch.setattr(validation, "validate", lambda *args: {"WT": (v := next(scripted)), "TC": v, "ET": v})
    experiment = tiny(epochs=8, ema_alpha=0.0, patience=2)
    summary = train(experiment, pre, split, tmp_path / "run", device="cpu", progress=False)
    # alpha 0: the EMA is the Dice itself; best at epoch 1, stop after epoch 4 > 1 + 2
    assert summary["stopped"] == "early_stopping" and summary["epochs_completed"] == 4
    assert summary["best_epoch"] == 1 and summary["best_val_mean_dice"] == pytest.approx(0.5)
    assert len(read_log(tmp_path / "run" / "log.csv")) == 4


# --------------------------------------------------------------------------- sizes, precision, batches, processes


def test_volumes_of_any_size_are_padded_to_the_model_multiple_and_cropped_back(tmp_path) -> None:
    shapes = [(15, 14, 13), (16, 12, 11), (13, 16, 16), (11, 13, 15)]
    pre, split = make_data(tmp_path, n_train=3, n_held=1, shapes=shapes)
    model = build_experiment_model(tiny(model_params={**TINY, "channels": [4, 8, 8]}))
    batch = setup.collate(
        [{"image": torch.ones(4, *s), "label": torch.ones(s, dtype=torch.int64)} for s in shapes[:2]], multiple=4
    )
    assert batch["image"].shape == (2, 4, 16, 16, 16) and batch["label"].shape == (2, 16, 16, 16)
    assert batch["label"][1, :, 12:].sum() == 0 and batch["image"][0, :, 15:].sum() == 0
    probabilities = predict_volume(model.eval(), torch.zeros(4, *shapes[3]), "sigmoid")
    assert probabilities.shape == (3, *shapes[3])
    summary = train(
        tiny(epochs=1, batch_size=2, model_params={**TINY, "channels": [4, 8, 8]}),
        pre,
        split,
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    assert summary["epochs_completed"] == 1 and 0 <= summary["best_val_mean_dice"] <= 1


def test_mixed_precision_on_cpu_trains_with_bfloat16(data, tmp_path) -> None:
    pre, split = data
    summary = train(tiny(epochs=1, amp=True), pre, split, tmp_path / "run", device="cpu", progress=False)
    row = load_checkpoint(tmp_path / "run" / "last.pt")["log_rows"][0]
    assert np.isfinite(row["train_loss"]) and summary["stopped"] == "max_epochs"


def mean_bce() -> SegmentationLoss:
    """Binary cross-entropy only: a mean over voxels of equal-sized samples, so a mean over samples."""
    return SegmentationLoss("sigmoid", dice=0.0, cross_entropy=1.0)


def test_batch_two_equals_batch_one_with_accumulation_two_for_a_mean_loss(data, tmp_path, monkeypatch) -> None:
    pre, split = make_data(tmp_path, n_train=4, n_held=1)
    monkeypatch.setattr(setup, "make_loss", lambda experiment: mean_bce())
    recipe = {"epochs": 2, "augmentation": "invres2020", "validate_every": 5}
    train(tiny(batch_size=2, **recipe), pre, split, tmp_path / "batch", device="cpu", progress=False)
    train(tiny(accumulation=2, **recipe), pre, split, tmp_path / "accumulated", device="cpu", progress=False)
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("batch", "accumulated"))
    assert [r["steps"] for r in a["log_rows"]] == [r["steps"] for r in b["log_rows"]] == [2, 2]
    for key, value in a["model_state"].items():
        torch.testing.assert_close(value, b["model_state"][key], rtol=1e-5, atol=1e-6, msg=key)
    initial = build_experiment_model(tiny()).state_dict()
    assert not torch.equal(a["model_state"]["stem.weight"], initial["stem.weight"])  # it did train


def _one_sgd_step(data, out: Path, **changes) -> tuple[float, float]:
    """(L2 norm of the parameter change, logged grad_norm) after one plain SGD step with lr 1."""
    pre, split = data
    experiment = tiny(optimizer="sgd", lr=1.0, epochs=1, max_steps_per_epoch=1, validate_every=5, **changes)
    seed_everything(experiment.seed)
    initial = build_experiment_model(experiment).state_dict()
    train(experiment, pre, split, out, device="cpu", progress=False)
    final = load_checkpoint(out / "last.pt")
    change = torch.cat([(final["model_state"][k] - v).flatten() for k, v in initial.items() if v.is_floating_point()])
    return float(change.norm()), float(read_log(out / "log.csv")[0]["grad_norm"])


def test_gradient_clipping_bounds_the_step_and_the_log_keeps_the_norm_before_clipping(data, tmp_path) -> None:
    # SGD's first step with momentum is lr * gradient, so the parameter change is the gradient itself
    free, free_norm = _one_sgd_step(data, tmp_path / "free")
    assert free == pytest.approx(free_norm, rel=1e-4)  # the logged norm is the gradient's true norm
    clipped, logged = _one_sgd_step(data, tmp_path / "clipped", grad_clip_norm=free_norm / 10)
    assert clipped == pytest.approx(free_norm / 10, rel=1e-4)
    assert logged == pytest.approx(free_norm, rel=1e-6)  # logged before clipping
    loose, _ = _one_sgd_step(data, tmp_path / "loose", grad_clip_norm=free_norm * 10)
    assert loose == pytest.approx(free, rel=1e-6)  # a bound above the norm changes nothing
    with pytest.raises(ValueError, match="grad_clip_norm must be positive"):
        tiny(grad_clip_norm=0)


def test_warmup_scales_the_first_steps_and_leaves_the_schedule_alone(data, tmp_path) -> None:
    _, free_norm = _one_sgd_step(data, tmp_path / "free")
    warm, _ = _one_sgd_step(data, tmp_path / "warm", warmup_steps=4)
    assert warm == pytest.approx(free_norm / 4, rel=1e-4)  # step 1 of 4: a quarter of the rate
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    for step, expected in ((1, 0.125), (3, 0.375), (4, 0.5), (9, 0.5)):
        with loop.warmed_up(optimizer, step, 4):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        assert optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0, got -1"):
        tiny(warmup_steps=-1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, experiment: dict, pre: str, split: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    summary = train(Experiment.from_dict(experiment), pre, split, out, device="cpu", progress=False)
    assert summary["world_size"] == 2  # every rank gets rank 0's summary


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path) -> None:
    """Two ranks x batch 1 all-reduce the mean gradient of two samples; one process with batch 1
    and accumulation 2 sums half of each sample's gradient: the same update for any loss."""
    pre, split = make_data(tmp_path, n_train=4, n_held=1)
    recipe = {"epochs": 2, "augmentation": "invres2020", "milestones": [1]}
    mp.spawn(
        _ddp_worker,
        args=(_free_port(), tiny(**recipe).to_dict(), str(pre), str(split), str(tmp_path / "ddp")),
        nprocs=2,
        join=True,
    )
    train(tiny(accumulation=2, **recipe), pre, split, tmp_path / "single", device="cpu", progress=False)
    ddp, single = (load_checkpoint(tmp_path / name / "last.pt") for name in ("ddp", "single"))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["inputs"] == single["inputs"]  # the ranks' fingerprint shares merge into the single one
    assert [r["steps"] for r in ddp["log_rows"]] == [r["steps"] for r in single["log_rows"]] == [2, 2]
    for key, value in single["model_state"].items():
        torch.testing.assert_close(ddp["model_state"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    for r, s in zip(ddp["log_rows"], single["log_rows"]):
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-5)
        assert r["val_mean_dice"] == pytest.approx(s["val_mean_dice"], abs=1e-3)
