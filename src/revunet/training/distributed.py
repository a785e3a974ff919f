"""Training on several processes (torchrun): which process this is, and joining their group.

The group's timeout (``init_process_group(timeout=...)``) bounds both the wait for every rank to
join and any one collective (a rank waiting at a barrier while rank 0 writes a checkpoint, say).
It is ``REVUNET_PROCESS_GROUP_TIMEOUT`` seconds, 1800 unless that variable is set: longer than
NCCL's own default of 10 minutes, so that slow cluster storage does not end a run.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from revunet.devices import DeviceError, resolve_device
from revunet.training.errors import TrainError

TIMEOUT_VARIABLE = "REVUNET_PROCESS_GROUP_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0


def process_group_timeout() -> datetime.timedelta:
    """The process group's timeout: ``REVUNET_PROCESS_GROUP_TIMEOUT`` seconds, else the default.

    A bad value is an error naming the variable, not a silent default: a too-short timeout
    would end the run much later, far from its cause.
    """
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_SECONDS)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise TrainError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, or several under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def launched(cls) -> Processes:
        """This process's place as torchrun's environment says it: known before the group forms."""
        return cls(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (so all ranks take the same decision)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over ranks."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over ranks (on CPU; through the GPU under nccl)."""
        if not self.distributed:
            return values
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
        reduced = values.to(device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return reduced.cpu()

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
        if self.distributed:
            dist.barrier()


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[tuple[Processes, torch.device]]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    launched = Processes.launched()
    try:
        device = resolve_device(device_name, launched.local_rank)
    except DeviceError as error:
        raise TrainError(str(error)) from None
    if launched.world_size <= 1:
        yield Processes(), device
        return
    created = not dist.is_initialized()
    if created:
        timeout = process_group_timeout()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), launched.local_rank), device
    finally:
        if created:
            dist.destroy_process_group()
