"""Graceful stops and resumption by default: SIGTERM/SIGUSR1 at a step inside an epoch (or before its
validation), the wall-clock budget, the same stop on two torchrun-style processes, and the
resume-or-start-over decision (changed experiment, changed or copied inputs, an unreadable checkpoint).

Every interrupted run is compared with an uninterrupted one: final weights, best weights and
the log rows must be identical (``torch.equal``), with augmentation, dropout, gradient
accumulation (an uneven last step), bf16 autocast, a DataLoader worker, warm-up and a schedule on.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from revunet.experiments.recipe import Experiment, write_experiment
from revunet.training import interruption, loop
from revunet.training.distributed import Processes
from revunet.training.interruption import INTERRUPTED_EXIT, StopWatch, TrainingInterrupted, parse_time_left
from revunet.training.loop import train
from revunet.training.state import load_checkpoint
from test_train import TINY, _free_port, make_data, states_equal, store_case, tiny

STEPS_PER_EPOCH = 5  # 3 cases x 3 samples, batch 1, accumulation 2: four steps of 2 and one of 1
EPOCHS = 3
TIMING = ("epoch_seconds", "validation_seconds", "first_step_seconds", "step_seconds", "peak_memory_mib", "time")

SIGNALLING_RUN = """
import os, signal, sys
from revunet.cli import main
from revunet.training import loop

at_step, name = int(sys.argv[1]), sys.argv[2]
original = loop._optimizer_step

def signalling(run, global_step):
    norm = original(run, global_step)
    if global_step == at_step:  # to every process of the job, the DataLoader worker included, as SLURM does
        os.killpg(os.getpgrp(), getattr(signal, name))
    return norm

loop._optimizer_step = signalling
sys.exit(main(sys.argv[3:]))
"""


def hard_recipe(**changes) -> Experiment:
    return tiny(
        epochs=EPOCHS,
        accumulation=2,
        samples_per_volume=3,
        augmentation="invres2020",
        amp=True,
        num_workers=1,
        milestones=[2],
        warmup_steps=3,
        grad_clip_norm=1.0,
        model_params={**TINY, "dropout": 0.2},
        **changes,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "experiment.json"
    write_experiment(path, hard_recipe())
    return path


def command(spec: Path, data: tuple[Path, Path], out: Path) -> list[str]:
    pre, split = data
    return ["train", "--experiment", str(spec), "--preprocessed", str(pre), "--split", str(split), "--out", str(out)]


def run_cli(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    argv = [sys.executable, *(prefix or ["-m", "revunet.cli"]), *args, "--device", "cpu", "--no-progress"]
    # a session of its own: the run signals its whole process group, not pytest's
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)


@pytest.fixture(scope="module")
def reference(spec, data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    done = run_cli(command(spec, data, out))
    assert done.returncode == 0, done.stdout + done.stderr
    return load_checkpoint(out / "last.pt")


def assert_same_run(got: dict, expected: dict) -> None:
    assert got["epoch"] == expected["epoch"] == EPOCHS
    assert states_equal(got["model_state"], expected["model_state"])
    assert states_equal(got["best"]["model_state"], expected["best"]["model_state"])
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in got["log_rows"]]
    assert strip == [{k: v for k, v in row.items() if k not in TIMING} for row in expected["log_rows"]]


# --------------------------------------------------------------------------- signals


def chosen_step(name: str) -> int:
    """SIGTERM: a random step strictly inside a random epoch; SIGUSR1: a random epoch's last step
    (the stop then falls before its validation). Chosen per run (and reported on failure)."""
    chooser = random.Random()
    if name == "SIGTERM":
        return chooser.randrange(EPOCHS) * STEPS_PER_EPOCH + chooser.randrange(1, STEPS_PER_EPOCH)
    return chooser.randrange(1, EPOCHS) * STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_signal_then_same_command_equals_uninterrupted_run(name, spec, data, reference, tmp_path) -> None:
    at_step = chosen_step(name)
    print(f"{name} after optimiser step {at_step}")  # shown by pytest when the test fails
    out = tmp_path / "run"
    stopped = run_cli(command(spec, data, out), ["-c", SIGNALLING_RUN, str(at_step), name])
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == INTERRUPTED_EXIT, output
    epoch, steps_done = divmod(at_step, STEPS_PER_EPOCH)
    if steps_done:
        assert f"stopped by {name} at epoch {epoch + 1}, step {steps_done} of {STEPS_PER_EPOCH} done" in output
    else:  # the epoch's last step: its validation had not begun
        assert f"stopped by {name} before the validation of epoch {epoch}" in output
    saved = load_checkpoint(out / "last.pt")
    assert saved["progress"]["steps_done"] == (steps_done or STEPS_PER_EPOCH)
    assert not (out / "summary.json").exists()

    resumed = run_cli(command(spec, data, out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at epoch" in resumed.stdout and "(stopped 1 time(s) so far)" in resumed.stdout
    got = load_checkpoint(out / "last.pt")
    assert_same_run(got, reference)
    assert got["interruptions"][0]["reason"] == name


def test_time_left_is_read_in_slurm_s_formats() -> None:
    assert parse_time_left("1-02:03:04") == 93784
    assert parse_time_left("02:03:04") == 7384
    assert parse_time_left("3:04") == 184
    assert parse_time_left("UNLIMITED") is None and parse_time_left("") is None
    with pytest.raises(ValueError, match="--time-limit must be a positive number"):
        interruption.time_budget("-5")


def test_the_clock_keeps_room_for_the_next_step_and_the_checkpoint(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(interruption, "time", SimpleNamespace(monotonic=lambda: now[0]))
    watch = StopWatch(600.0, Processes())  # deadline 1600, safety min(60, 5 % of 600) = 30 s
    now[0] = 1590.0
    assert watch.reason() is None  # no step done yet in this process: never stop before progress
    watch.measured("step", 20.0)
    watch.measured("checkpoint", 5.0)
    now[0] = 1544.0
    assert watch.reason() is None  # 1544 + 20 + 5 + 30 < 1600
    watch.measured("validation", 40.0)
    assert watch.reason("validation") == "time limit"
    now[0] = 1546.0
    assert watch.reason("step") == "time limit"
    assert StopWatch(None, Processes()).reason() is None


@pytest.mark.slow(60)
def test_time_budget_stops_then_a_rerun_finishes_identically(data, tmp_path, monkeypatch) -> None:
    experiment = tiny(epochs=3, accumulation=2, samples_per_volume=2, model_params={**TINY, "dropout": 0.2})
    pre, split = data
    expected = train(experiment, pre, split, tmp_path / "reference", device="cpu", progress=False)
    now = [0.0]

    def ticking() -> float:  # ten seconds pass at every look at the clock
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(interruption, "time", SimpleNamespace(monotonic=ticking))
    with pytest.raises(TrainingInterrupted, match=r"stopped by time limit at epoch 2"):
        train(experiment, pre, split, tmp_path / "run", device="cpu", progress=False, time_limit=1.0)
    monkeypatch.undo()
    summary = train(experiment, pre, split, tmp_path / "run", device="cpu", progress=False)
    varying = ("train_seconds", "peak_memory_mib", "interruptions")
    assert {k: v for k, v in summary.items() if k not in varying} == {
        k: v for k, v in expected.items() if k not in varying
    }
    assert summary["interruptions"] == 1 and expected["interruptions"] == 0
    got, reference = (load_checkpoint(tmp_path / name / "last.pt") for name in ("run", "reference"))
    assert states_equal(got["model_state"], reference["model_state"])


# --------------------------------------------------------------------------- two processes


def _stopping_worker(rank: int, port: int, experiment: dict, pre: str, split: str, out: str, stop_at: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    original = loop._optimizer_step

    def signalling(run, global_step):
        norm = original(run, global_step)
        if rank == 1 and global_step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 hears it
        return norm

    loop._optimizer_step = signalling
    try:
        train(Experiment.from_dict(experiment), pre, split, out, device="cpu", progress=False)
    except TrainingInterrupted as stop:
        Path(out, f"stopped_rank{rank}").write_text(str(stop))


@pytest.mark.slow(45)
def test_two_processes_stop_at_the_same_step_and_resume_exactly(tmp_path) -> None:
    pre, split = make_data(tmp_path, n_train=4, n_held=1)
    recipe = tiny(epochs=2, samples_per_volume=2, augmentation="invres2020", model_params={**TINY, "dropout": 0.2})
    arguments = (recipe.to_dict(), str(pre), str(split))
    for out, stop_at in (("reference", -1), ("run", 3), ("run", -1)):
        mp.spawn(_stopping_worker, args=(_free_port(), *arguments, str(tmp_path / out), stop_at), nprocs=2, join=True)
        if stop_at > 0:
            texts = [(tmp_path / out / f"stopped_rank{rank}").read_text() for rank in range(2)]
            assert texts[0] == texts[1] and "stopped by SIGTERM at epoch 1, step 3 of 4 done" in texts[0]
    got, reference = (load_checkpoint(tmp_path / name / "last.pt") for name in ("run", "reference"))
    assert got["world_size"] == 2 and got["interruptions"][0]["steps_done"] == 3
    assert states_equal(got["model_state"], reference["model_state"])


# --------------------------------------------------------------------------- resume or start over


def test_inputs_decide_between_resuming_and_starting_over(tmp_path, capsys) -> None:
    pre, split = make_data(tmp_path / "a")
    out = tmp_path / "run"
    experiment = tiny(epochs=1)
    train(experiment, pre, split, out, device="cpu", progress=False)
    # the same bytes in a new place (new modification times): still the same run
    copied = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copied, copy_function=shutil.copy)
    capsys.readouterr()
    train(experiment, copied / pre.name, copied / split.name, out, device="cpu", progress=False)
    assert "nothing to do" in capsys.readouterr().out
    # one case re-preprocessed with other contents: start over, naming it
    store_case(copied / pre.name, "case1", seed=99)
    train(experiment, copied / pre.name, copied / split.name, out, device="cpu", progress=False)
    assert "the inputs changed (changed cases: case1): starting over" in capsys.readouterr().out
    # an unreadable checkpoint is kept aside, not overwritten
    (out / "last.pt").write_bytes(b"not a checkpoint")
    train(experiment, copied / pre.name, copied / split.name, out, device="cpu", progress=False)
    said = capsys.readouterr().out
    assert "not a readable checkpoint" in said and "moved it to last.pt.unreadable: starting over" in said
    assert (out / "last.pt.unreadable").read_bytes() == b"not a checkpoint"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
