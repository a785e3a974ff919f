"""Training on several processes (torchrun): which process this is, and joining their group."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from revunet.devices import DeviceError, resolve_device
from revunet.training.errors import TrainError


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, or several under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = resolve_device(device_name, local_rank)
    except DeviceError as error:
        raise TrainError(str(error)) from None
    if world_size <= 1:
        yield Processes(), device
        return
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), local_rank), device
    finally:
        if created:
            dist.destroy_process_group()
