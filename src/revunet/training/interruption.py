"""Graceful stops: SIGTERM, SIGUSR1 and the job's wall-clock budget end training at a step boundary.

A cluster ends a job in one of three ways, and each must cost at most the step in flight:

- SIGTERM: SLURM at the time limit (SIGKILL follows after its ``KillWait``, 30 s by default),
  on preemption and on ``scancel``; also torchrun forwarding its own SIGTERM to the workers;
- SIGUSR1: the warning signal a user asks for with ``sbatch --signal=USR1@300`` in their own
  job script (inside Snakemake's SLURM jobs the warning must be SIGTERM: Snakemake itself dies
  on SIGUSR1, see docs/slurm.md);
- the budget: ``--time-limit`` minutes, or ``auto``, the time left of the SLURM job this runs
  in (``squeue -o %L``). Training stops when the next step (or validation) and the checkpoint
  would not fit before the end, with a safety margin.

The signal handlers only record the request; the loop checks it between optimiser steps and
between validation volumes, writes ``last.pt`` at that point and raises
:class:`TrainingInterrupted`; `revunet train` then exits with :data:`INTERRUPTED_EXIT`, a
failure, so Snakemake retries the job and the retry continues from the checkpoint. Under
torchrun the processes take the decision together (an all-reduce of the reason at each check),
so they stop at the same step.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from types import FrameType

import torch

from revunet.training.distributed import Processes

# EX_TEMPFAIL of sysexits.h, "try again later": any non-zero status makes Snakemake retry.
INTERRUPTED_EXIT = 75
# Reasons by precedence (the all-reduce keeps the largest).
REASONS = ("", "time limit", "SIGUSR1", "SIGTERM")
SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1"}
# At most this much is kept in reserve before the deadline, and at most this share of the job.
SAFETY_SECONDS = 60.0
SAFETY_SHARE = 0.05


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary and ``last.pt`` holds that step."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(f"stopped by {reason} {where}; last.pt holds this point: rerun the same command to continue")
        self.reason = reason


def parse_time_left(text: str) -> float | None:
    """Seconds in SLURM's ``[days-]hours:minutes:seconds`` (also ``minutes:seconds``); None for
    ``UNLIMITED``, ``NOT_SET`` or anything unreadable."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def slurm_time_left() -> float | None:
    """Seconds left of the SLURM job this process runs in (None outside SLURM or when unknown)."""
    job = os.environ.get("SLURM_JOB_ID")
    squeue = shutil.which("squeue")
    if not job or squeue is None:
        return None
    try:
        answer = subprocess.run([squeue, "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_time_left(answer.stdout) if answer.returncode == 0 else None


def time_budget(option: str | float | None) -> float | None:
    """Seconds this run may take: ``auto`` (the SLURM job's time left, else none), ``none``, or minutes."""
    if option is None or option == "none":
        return None
    if option == "auto":
        return slurm_time_left()
    minutes = float(option)
    if minutes <= 0:
        raise ValueError(f"--time-limit must be a positive number of minutes, 'auto' or 'none', got {option!r}")
    return minutes * 60.0


class StopWatch:
    """Records stop requests and the durations that decide whether the next piece of work still fits."""

    def __init__(self, budget_seconds: float | None, processes: Processes) -> None:
        self.processes = processes
        self.deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        self.safety = 0.0 if budget_seconds is None else min(SAFETY_SECONDS, SAFETY_SHARE * budget_seconds)
        self.signal_name: str | None = None
        self.longest = {"step": 0.0, "validation": 0.0, "checkpoint": 0.0}
        self.steps_done = 0  # in this process's lifetime: the clock never stops a run before its first step
        self.last_reason: str | None = None  # what the last :meth:`reason` answered

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.signal_name = SIGNALS[signal.Signals(number)]

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopWatch]:
        """Handle SIGTERM and SIGUSR1 while training (from the main thread; else signals keep their default)."""
        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
            for number in SIGNALS:
                previous[number] = signal.signal(number, self._handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def measured(self, kind: str, seconds: float) -> None:
        """Remember how long a step, a validation or a checkpoint took."""
        self.longest[kind] = max(self.longest[kind], seconds)
        if kind == "step":
            self.steps_done += 1

    def _local_reason(self, upcoming: str) -> int:
        if self.signal_name is not None:
            return REASONS.index(self.signal_name)
        if self.deadline is None or self.steps_done == 0:
            return 0
        needed = self.longest[upcoming] + self.longest["checkpoint"] + self.safety
        return REASONS.index("time limit") if time.monotonic() + needed > self.deadline else 0

    def reason(self, upcoming: str = "step") -> str | None:
        """Why to stop before the next ``upcoming`` piece of work (``step`` or ``validation``), or None.

        Every process calls this at the same points; they all get the same answer.
        """
        code = torch.tensor([self._local_reason(upcoming)], dtype=torch.int64)
        if self.processes.distributed:
            code = self.processes.max(code)
        self.last_reason = REASONS[int(code.item())] or None
        return self.last_reason


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1 (sent to the whole job): the main process ends them."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
