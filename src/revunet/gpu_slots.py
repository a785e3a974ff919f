"""Which GPUs a local job runs on: a machine-wide pool of device slots held by file locks.

Snakemake's ``gpu`` resource only counts: with ``--resources gpu=4`` four single-GPU jobs run
at once, but nothing tells each one which card is its own, so all of them land on GPU 0.
:func:`run_on_slots` takes free device ids from a pool every job on the machine shares (one lock
file per id), sets ``CUDA_VISIBLE_DEVICES`` to them and replaces itself with the job's command.
The locks live on in the command's open file descriptors, so the kernel frees the slots when the
command's last process ends, however it ends (exit, failure, SIGKILL, a crash).
Torch-free: it starts every training and inference job.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

GPUS_ENV = "REVUNET_GPUS"
POOL_ENV = "REVUNET_GPU_POOL"
POLL_SECONDS = 1.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SlotError(Exception):
    """Why the command did not start; ``status`` is the exit status that says so.

    1: no free slots before the wait ran out; 2: more GPUs asked for than the pool has;
    127: the command cannot run (as a shell reports it).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def default_pool(environ: Mapping[str, str]) -> Path:
    """``$REVUNET_GPU_POOL``, else a folder per user under ``$TMPDIR``: one pool per machine and user."""
    if environ.get(POOL_ENV):
        return Path(environ[POOL_ENV])
    return Path(environ.get("TMPDIR") or "/tmp") / f"revunet-gpu-slots-{os.getuid()}"


def parse_ids(text: str) -> list[str]:
    """Device ids of a comma-separated list; negative ones (CUDA's way to hide every GPU) are none."""
    ids = (part.strip() for part in text.split(","))
    return list(dict.fromkeys(device for device in ids if device and not device.startswith("-")))


def pool_ids(environ: Mapping[str, str]) -> list[str]:
    """The device ids jobs may take: ``$REVUNET_GPUS``, else ``$CUDA_VISIBLE_DEVICES``, else nvidia-smi's.

    ``CUDA_VISIBLE_DEVICES`` set but empty hides every GPU from CUDA, so it gives no ids rather
    than falling back to nvidia-smi, which would hand out the GPUs the user hid.
    """
    if environ.get(GPUS_ENV, "").strip():
        return parse_ids(environ[GPUS_ENV])
    if "CUDA_VISIBLE_DEVICES" in environ:
        return parse_ids(environ["CUDA_VISIBLE_DEVICES"])
    return nvidia_smi_ids()


def nvidia_smi_ids() -> list[str]:
    """The GPU indices nvidia-smi lists; none where it is missing or fails (a CPU machine)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    query = [binary, "--query-gpu=index", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_ids(",".join(done.stdout.split())) if done.returncode == 0 else []


def lock_path(pool: Path, device: str) -> Path:
    """The lock file of ``device``; ids such as MIG UUIDs may hold characters a file name should not."""
    return pool / f"gpu-{_UNSAFE.sub('_', device)}.lock"


def try_take(pool: Path, ids: Sequence[str], count: int, holder: str) -> dict[str, int] | None:
    """``count`` free slots as ``{id: locked fd}``, or None (nothing held) when fewer are free."""
    held: dict[str, int] = {}
    for device in ids:
        if len(held) == count:
            break
        fd = os.open(lock_path(pool, device), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {holder}\n".encode())
        held[device] = fd
    if len(held) == count:
        return held
    for fd in held.values():
        os.close(fd)
    return None


def take_slots(
    pool: Path, ids: Sequence[str], count: int, wait_seconds: float | None, command: Sequence[str], log: TextIO
) -> dict[str, int]:
    """``count`` slots of ``ids``, waiting while other jobs hold them (one line says so).

    Polls rather than blocking on one lock: the job needs any ``count`` of the ids, not given ones.
    A little jitter keeps two waiting jobs from retrying in lockstep.
    """
    name = describe(command)
    if count > len(ids):
        raise SlotError(
            f"gpu-slots: {name} asks for {count} GPU(s) but this machine's pool has {len(ids)}: "
            f"{','.join(ids)}\nSet {GPUS_ENV} (e.g. {GPUS_ENV}=0,1,2,3) to the device ids jobs may use, "
            f"or cap every job's GPUs with snakemake --resources gpu={len(ids)}.",
            status=2,
        )
    pool.mkdir(parents=True, exist_ok=True)
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    waited = False
    while (held := try_take(pool, ids, count, shlex.join(command))) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise SlotError(f"gpu-slots: {name}: no {count} free GPU(s) of {','.join(ids)} within {wait_seconds:g} s")
        if not waited:
            print(f"gpu-slots: {name} waits for {count} free GPU(s) of {','.join(ids)} (pool {pool})", file=log)
            waited = True
        time.sleep(POLL_SECONDS * random.uniform(0.75, 1.25))
    return held


def describe(command: Sequence[str]) -> str:
    """A short name for messages: the program and its sub-command (``revunet train``, ``torchrun``)."""
    words = [os.path.basename(command[0])]
    if len(command) > 1 and not command[1].startswith("-"):
        words.append(command[1])
    return " ".join(words)


def run_on_slots(
    command: Sequence[str], gpus: int, pool: Path | None, wait_seconds: float | None, processes: int = 0
) -> NoReturn:
    """Take ``gpus`` slots, set ``CUDA_VISIBLE_DEVICES``, and become ``command``.

    Passes ``command`` through unchanged under SLURM (it assigns GPUs itself), for ``gpus == 0``
    and where the pool has no ids (a CPU machine). ``os.execvp`` keeps the pid, so signals and
    the exit status go straight to and from the command; the lock fds are made inheritable so
    they stay open in it. Raises :class:`SlotError`, also when the command starts ``processes``
    processes, one per GPU, on fewer GPUs than that.
    """
    environ = os.environ
    if "SLURM_JOB_ID" in environ or gpus == 0 or not (ids := pool_ids(environ)):
        _exec(command)
    if processes > gpus:
        raise SlotError(too_few_gpus(command, gpus, processes), status=2)
    held = take_slots(pool or default_pool(environ), ids, gpus, wait_seconds, command, sys.stderr)
    for fd in held.values():
        os.set_inheritable(fd, True)
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
    print(f"gpu-slots: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} for {describe(command)}", file=sys.stderr)
    _exec(command)


def too_few_gpus(command: Sequence[str], gpus: int, processes: int) -> str:
    """Why a job that starts one process per GPU cannot run on the GPUs it was granted."""
    return (
        f"gpu-slots: {describe(command)} starts {processes} processes, one per GPU, but this job was granted "
        f"{gpus} GPU(s): Snakemake lowers a job's gpu resource to the run's total (--resources gpu=N).\n"
        f"Give the run {processes} GPUs (--resources gpu={processes}), or lower the experiment's GPUs "
        "(experiments.<name>.paper.resources.gpus, with accumulation to keep its batch; docs/multi-gpu.md)."
    )


def _exec(command: Sequence[str]) -> NoReturn:
    """Become ``command`` (flushing our messages first: exec drops Python's buffers)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))
    except OSError as error:
        raise SlotError(f"gpu-slots: cannot run {command[0]!r}: {error.strerror or error}", status=127) from error
