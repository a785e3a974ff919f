"""What input sizes a model takes, and padding a volume up to them.

A U-Net that halves its input ``d`` times needs every spatial size to be a multiple of
``2**d``; models say so through a ``size_multiple`` attribute. Volumes are zero-padded at
their far end (zero is the background of the z-scored images, so padding looks like more
background) and outputs are cropped back, in training batches, validation and inference alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from revunet.models.blocks import SegmentationHead


def size_multiple(model: nn.Module) -> int:
    """The multiple every spatial size must be for ``model`` (1 when it does not say)."""
    return max(1, int(getattr(model, "size_multiple", 1)))


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """``shape`` with each size rounded up to a multiple of ``multiple``."""
    return tuple(int(math.ceil(s / multiple) * multiple) for s in shape)


def pad_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad the last ``len(shape)`` axes at their end up to ``shape``."""
    extra = [target - size for size, target in zip(tensor.shape[-len(shape) :], shape, strict=True)]
    if not any(extra):
        return tensor
    # functional.pad lists (before, after) pairs from the last axis backwards.
    return functional.pad(tensor, [amount for e in reversed(extra) for amount in (0, e)])


def pad_to_multiple(tensor: torch.Tensor, multiple: int, axes: int = 3) -> torch.Tensor:
    """Zero-pad the last ``axes`` axes at their end up to the next multiple of ``multiple``."""
    return pad_to(tensor, padded_shape(tensor.shape[-axes:], multiple))


def head_outputs(model: nn.Module) -> set[str]:
    """The activations (``sigmoid``/``softmax``) the model's segmentation heads declare."""
    return {module.output for module in model.modules() if isinstance(module, SegmentationHead)}
