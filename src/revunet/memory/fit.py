"""Will a training job fit the node it runs on? Decided before it starts, from its predicted peak.

A job that outgrows its node's memory is killed by the kernel (or CUDA) halfway, after minutes of
data loading, and can take its neighbours with it. The smoke run knows each experiment's predicted
training peak beforehand (`revunet memory --experiment`, :mod:`revunet.memory.experiment_peak`),
so it can lower a data-parallel job's CPU process count to what fits (`revunet processes
--predicted`) or refuse the job with one line saying what it needs (`revunet train --predicted`).

The prediction counts live tensors only. A process also holds the interpreter, the libraries, the
data loader's volumes and allocator slack: on the CPU the measured resident set of a training step
runs about 10-20 % above the prediction (benchmarks: 467 MiB against 433 MiB of activations), so
each process is budgeted ``RELATIVE_MARGIN`` times its prediction plus ``PROCESS_OVERHEAD``; on a
GPU the CUDA context and cuDNN workspaces take the place of the interpreter.

Torch-free unless a CUDA device is asked about: `revunet processes` runs before torchrun starts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
RELATIVE_MARGIN = 1.25
PROCESS_OVERHEAD = {"cpu": int(1.5 * GIB), "cuda": int(0.75 * GIB)}


class DoesNotFit(ValueError):
    """A job that cannot fit its node; the message says what it needs and what there is."""


@dataclass(frozen=True)
class Budget:
    """What one process of a job needs and what the node offers, in bytes."""

    experiment: str
    predicted: int  # the predicted peak of one process's training step
    per_process: int  # with the margin and the per-process overhead
    available: int
    where: str  # "this node's memory" or the GPU's name

    def processes(self, wanted: int) -> int:
        """How many of ``wanted`` processes fit (0: not even one)."""
        return max(0, min(wanted, self.available // self.per_process))

    def refusal(self, processes: int) -> str:
        """One line: what ``processes`` processes need and what the node has."""
        return (
            f"experiment {self.experiment} needs about {processes * self.per_process / GIB:.1f} GiB "
            f"({processes} process(es) x {self.per_process / GIB:.1f} GiB: {self.predicted / GIB:.1f} GiB predicted "
            f"peak x {RELATIVE_MARGIN:g} + the process's own) but {self.where} has {self.available / GIB:.1f} GiB "
            "available: not started (run it where more memory is free, or with fewer processes)"
        )


def read_predicted_peak(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(experiment name, predicted peak in bytes) from `revunet memory --experiment --out FILE.json`."""
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        return str(row["experiment"]), int(float(row["peak_mib"]) * 2**20)
    except FileNotFoundError:
        raise FileNotFoundError(f"no predicted peak at {path} (written by `revunet memory --experiment`)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a prediction of `revunet memory --experiment` ({error!r})") from None


def available_cpu_bytes() -> int:
    """Memory a new process can take without swapping: MemAvailable, or the cgroup's limit left if lower."""
    available = _meminfo_available()
    limit = _cgroup_left()
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_left() -> int | None:
    """What a cgroup v2 memory limit leaves (None: no limit, or not cgroup v2)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def budget(predicted_path: str | os.PathLike[str], device_type: str, gpu: int = 0) -> Budget:
    """The budget of one process of the job whose prediction is ``predicted_path``, on this node
    (on CUDA: on GPU ``gpu``)."""
    experiment, predicted = read_predicted_peak(predicted_path)
    per_process = math.ceil(predicted * RELATIVE_MARGIN) + PROCESS_OVERHEAD[device_type]
    if device_type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(gpu)
        return Budget(experiment, predicted, per_process, free, f"GPU {gpu} ({torch.cuda.get_device_name(gpu)})")
    return Budget(experiment, predicted, per_process, available_cpu_bytes(), "this node's memory")


def check_fits(predicted_path: str | os.PathLike[str], device_type: str, processes: int, gpu: int = 0) -> Budget:
    """Raise :class:`DoesNotFit` when ``processes`` processes of the job (those on this node; one per
    GPU on CUDA, where each has its own device ``gpu``) cannot fit; return the budget otherwise."""
    plan = budget(predicted_path, device_type, gpu)
    sharing = 1 if device_type == "cuda" else processes
    if plan.processes(sharing) < sharing:
        raise DoesNotFit(plan.refusal(sharing))
    return plan
