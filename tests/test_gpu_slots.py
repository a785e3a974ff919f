"""`revunet gpu-slots`: each local job gets GPUs of its own from the machine's slot pool.

No GPU needed: the device ids come from ``REVUNET_GPUS`` (or a fake nvidia-smi), the pool is a
private folder, and the "jobs" are small Python processes that report the
``CUDA_VISIBLE_DEVICES`` they were given.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from revunet.gpu_slots import parse_ids, pool_ids

# A job: writes its pid and CUDA_VISIBLE_DEVICES to argv[1], then runs until argv[2] exists.
HOLDER = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '.tmp', 'w').write(f\"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}\")\n"
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    time.sleep(0.05)\n"
)
# A job that only reports CUDA_VISIBLE_DEVICES and exits with argv[1].
REPORT = "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')); sys.exit(int(sys.argv[1]))"


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    """A job environment with no GPU hints of its own (no SLURM, no CUDA_VISIBLE_DEVICES, no nvidia-smi)."""
    env = {key: value for key, value in os.environ.items() if key not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir(exist_ok=True)
    env.pop("REVUNET_GPUS", None)
    env.update({"PATH": str(empty_bin), "REVUNET_GPU_POOL": str(tmp_path / "pool"), **values})
    return env


def slots(gpus: int, *command: str, wait: float | None = None) -> list[str]:
    """The `revunet gpu-slots` command line for ``command``."""
    options = [] if wait is None else ["--wait-seconds", str(wait)]
    return [sys.executable, "-m", "revunet.cli", "gpu-slots", "--gpus", str(gpus), *options, "--", *command]


def run(env: dict[str, str], gpus: int, *command: str, wait: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(slots(gpus, *command, wait=wait), env=env, capture_output=True, text=True, timeout=30)


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Holder:
    """A job holding slots until :meth:`release`; ``pid`` and ``devices`` as the job saw them."""

    def __init__(self, tmp_path: Path, env: dict[str, str], name: str, gpus: int = 1) -> None:
        self.report, self.done = tmp_path / f"{name}.out", tmp_path / f"{name}.release"
        self.stderr = tmp_path / f"{name}.err"
        with open(self.stderr, "w") as stderr:
            command = slots(gpus, sys.executable, "-c", HOLDER, str(self.report), str(self.done))
            self.process = subprocess.Popen(command, env=env, stderr=stderr)

    def started(self) -> bool:
        return self.report.exists()

    def wait_started(self) -> tuple[int, str]:
        wait_for(self.started)
        pid, devices = self.report.read_text().split()
        return int(pid), devices

    def release(self) -> int:
        self.done.touch()
        return self.process.wait(timeout=15)


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(tmp_path):
    env = environment(tmp_path, REVUNET_GPUS="0,1")
    first, second = Holder(tmp_path, env, "first"), Holder(tmp_path, env, "second")
    (first_pid, first_gpu), (_, second_gpu) = first.wait_started(), second.wait_started()
    assert {first_gpu, second_gpu} == {"0", "1"}
    assert first_pid == first.process.pid  # exec'd: the job is the process Snakemake started
    assert f"gpu-slots: CUDA_VISIBLE_DEVICES={first_gpu} for python" in first.stderr.read_text()

    third = Holder(tmp_path, env, "third")
    wait_for(lambda: "waits for 1 free GPU(s) of 0,1" in third.stderr.read_text())
    time.sleep(0.3)
    assert not third.started()
    assert first.release() == 0
    assert third.wait_started()[1] == first_gpu
    assert second.release() == 0 and third.release() == 0


def test_a_failed_job_frees_its_slots_and_its_exit_status_passes_through(tmp_path):
    env = environment(tmp_path, REVUNET_GPUS="0,1")
    failed = run(env, 2, sys.executable, "-c", REPORT, "3")
    assert failed.returncode == 3 and failed.stdout.strip() == "0,1"
    again = run(env, 2, sys.executable, "-c", REPORT, "0", wait=0)
    assert again.returncode == 0 and again.stdout.strip() == "0,1"


def test_a_killed_job_frees_its_slots(tmp_path):
    env = environment(tmp_path, REVUNET_GPUS="0,1")
    holder = Holder(tmp_path, env, "killed", gpus=2)
    assert holder.wait_started()[1] == "0,1"
    busy = run(env, 1, sys.executable, "-c", REPORT, "0", wait=0)
    assert busy.returncode == 1 and "no 1 free GPU(s) of 0,1" in busy.stderr
    holder.process.kill()
    holder.process.wait(timeout=15)
    freed = run(env, 2, sys.executable, "-c", REPORT, "0", wait=0)
    assert freed.returncode == 0 and freed.stdout.strip() == "0,1"


@pytest.mark.parametrize(
    ("values", "gpus", "expected"),
    [
        ({"REVUNET_GPUS": "0,1", "SLURM_JOB_ID": "42"}, 1, "<unset>"),  # SLURM assigns GPUs itself
        ({}, 1, "<unset>"),  # a CPU machine: no REVUNET_GPUS, CUDA_VISIBLE_DEVICES or nvidia-smi
        ({"CUDA_VISIBLE_DEVICES": ""}, 1, ""),  # every GPU hidden stays hidden
        ({"REVUNET_GPUS": "0,1"}, 0, "<unset>"),  # a job without GPUs
    ],
)
def test_pass_through_leaves_the_environment_alone(tmp_path, values, gpus, expected):
    done = run(environment(tmp_path, **values), gpus, sys.executable, "-c", REPORT, "0")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, expected, "")


def test_more_gpus_than_the_pool_has_is_a_clear_error(tmp_path):
    done = run(environment(tmp_path, REVUNET_GPUS="0,1"), 3, sys.executable, "-c", REPORT, "0")
    assert done.returncode == 2 and done.stdout == ""
    assert "python asks for 3 GPU(s) but this machine's pool has 2: 0,1" in done.stderr
    assert "REVUNET_GPUS=0,1,2,3" in done.stderr and len(done.stderr.splitlines()) <= 3


def test_a_command_that_cannot_run_is_exit_status_127(tmp_path):
    done = run(environment(tmp_path, REVUNET_GPUS="0,1"), 1, str(tmp_path / "no-such-program"))
    assert done.returncode == 127 and "cannot run" in done.stderr


def test_device_ids_come_from_revunet_gpus_then_cuda_visible_devices_then_nvidia_smi(tmp_path, monkeypatch):
    assert parse_ids(" 2, 3,,3, -1") == ["2", "3"]
    assert pool_ids({"REVUNET_GPUS": "1,2", "CUDA_VISIBLE_DEVICES": "3"}) == ["1", "2"]
    assert pool_ids({"CUDA_VISIBLE_DEVICES": "GPU-1a,GPU-2b"}) == ["GPU-1a", "GPU-2b"]
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pool_ids({}) == ["0", "1", "2"]
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert pool_ids({}) == []


SNAKEFILE = """
rule all:
    input:
        "one_a.txt",
        "one_b.txt",
        "two.txt",


rule one:
    output:
        "one_{name}.txt",
    resources:
        gpu=1,
    shell:
        "revunet gpu-slots --gpus {resources.gpu} -- sh -c 'echo $CUDA_VISIBLE_DEVICES > {output}; sleep 2'"


rule two:
    output:
        "two.txt",
    resources:
        gpu=2,
    shell:
        "revunet gpu-slots --gpus {resources.gpu} -- sh -c 'echo $CUDA_VISIBLE_DEVICES > {output}'"
"""


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
def test_snakemake_jobs_running_at_once_get_different_gpus(tmp_path):
    """The issue's case: `--resources gpu=2` runs two one-GPU jobs at once; before, both used GPU 0."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = environment(tmp_path, REVUNET_GPUS="0,1", PATH=path)
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2", "--quiet", "all"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    one = {(tmp_path / f"one_{name}.txt").read_text().strip() for name in "ab"}
    assert one == {"0", "1"}
    assert (tmp_path / "two.txt").read_text().strip() == "0,1"


def test_a_job_of_one_process_per_gpu_is_refused_on_fewer_gpus(tmp_path):
    """--resources gpu=2 caps a 4-GPU job at 2: its 4 processes would find no GPU 2, so it stops first."""
    env = environment(tmp_path, REVUNET_GPUS="0,1")
    command = [sys.executable, "-m", "revunet.cli", "gpu-slots", "--gpus", "2", "--processes", "4", "--"]
    refused = subprocess.run(
        [*command, "torchrun", "--nproc_per_node=4"], env=env, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0].startswith("gpu-slots: torchrun starts 4 processes, one per GPU,")
    assert "--resources gpu=4" in refused.stderr and "experiments.<name>.paper.resources.gpus" in refused.stderr
    assert not (tmp_path / "pool").exists() or not list((tmp_path / "pool").iterdir())  # no slot taken
    granted = subprocess.run(
        [*command[:7], "2", "--", sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert granted.returncode == 0 and granted.stdout.strip() == "0,1"
