"""Which torch device a command runs on: one rule for `revunet train`, `infer` and the tools."""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


class DeviceError(ValueError):
    """A device name that is not known, or names hardware this machine does not have."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device called ``name``.

    ``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda`` is GPU ``local_rank`` (under
    torchrun each process takes the GPU of its ``LOCAL_RANK``); ``cuda:N`` is GPU N. Asking for
    a GPU that torch does not see is an error, never a silent fall-back to the CPU.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    match = _CUDA_INDEX.match(name)
    if name not in ("auto", "cuda") and match is None:
        raise DeviceError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {name!r}")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name} was asked for but torch sees no CUDA device")
    index = int(match.group(1)) if match else local_rank
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), no GPU {index}")
    return torch.device("cuda", index)
