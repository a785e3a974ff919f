"""Through the workflow: SIGTERM to the training job of a running `snakemake`, then the same
`snakemake` command: the job's log says it resumed, and the weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_workflow import CONFIG, ROOT, TINY, snakemake

EXPERIMENT = "bruegger_rev_1_1_128"
OVERLAY = f"""
select: [{EXPERIMENT}]
memory_tables: []
experiments:
  {EXPERIMENT}:
    demo: {{epochs: 6, max_steps_per_epoch: 4, validate_every: 2}}
"""


def training_process(workdir: Path, run_dir: str) -> int | None:
    """The pid of the `revunet train` started in ``workdir`` writing into ``run_dir`` (from /proc),
    if it runs; other runs of the same experiment on this machine are left alone."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if (entry / "cwd").resolve() != workdir.resolve():
                continue
        except OSError:
            continue
        out = any(arg.endswith(run_dir.encode()) for arg in argv)
        if b"train" in argv and out and any(arg.endswith(b"revunet") for arg in argv[:2]):
            return int(entry.name)
    return None


@pytest.mark.slow(75)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the training job through /proc")
def test_sigterm_to_the_training_job_then_the_same_command_resumes_exactly(tmp_path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(OVERLAY)
    results = tmp_path / "results"
    target = f"results/train/{EXPERIMENT}/summary.json"
    files = (CONFIG, TINY, str(overlay))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", *files, "--cores", "1", target]
    running = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_log = results / "logs" / "train" / f"{EXPERIMENT}.log"
    run_dir = results / "train" / EXPERIMENT
    deadline = time.monotonic() + 300
    pid = None
    while pid is None:  # wait for the end of epoch 2 of 6, then signal the job (not Snakemake)
        assert running.poll() is None, running.communicate()[0]
        assert time.monotonic() < deadline, "the training never reached epoch 2"
        if train_log.exists() and "epoch 2/6" in train_log.read_text():
            pid = training_process(tmp_path, f"train/{EXPERIMENT}")
        time.sleep(0.05)
    signalled = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    os.kill(pid, signal.SIGTERM)
    output = running.communicate(timeout=300)[0]
    assert running.returncode != 0, f"signalled {pid}: {signalled}\n{output}"
    stopped = train_log.read_text()
    assert "stopped by SIGTERM" in stopped and "exit status 75" in stopped, stopped
    assert (run_dir / "last.pt").exists() and not (run_dir / "summary.json").exists()

    code, output = snakemake(tmp_path, "--cores", "1", target, configfiles=files)
    assert code == 0, output
    assert "resuming at epoch" in train_log.read_text() or "resuming after epoch" in train_log.read_text()

    reference = tmp_path / "uninterrupted"
    data = results / "data" / "brats"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "revunet.cli",
            "train",
            "--experiment",
            str(results / "experiments" / f"{EXPERIMENT}.json"),
        ]
        + ["--preprocessed", str(data / "preprocessed"), "--split", str(data / "splits" / "bruegger.json")]
        + ["--out", str(reference), "--device", "cpu", "--no-progress", "--time-limit", "none"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as Snakemake runs a one-thread job
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got, expected = (torch.load(path / "last.pt", weights_only=False) for path in (run_dir, reference))
    assert got["epoch"] == expected["epoch"] == 6 and len(got["interruptions"]) == 1
    assert got["model_state"].keys() == expected["model_state"].keys()
    assert all(torch.equal(got["model_state"][k], v) for k, v in expected["model_state"].items())
