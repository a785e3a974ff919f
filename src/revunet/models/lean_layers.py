"""Layers that keep less for backward than their ``torch.nn`` equivalents, and compute the same.

They matter where a reversible network's peak lies: in the recomputation of a coupling's F and
G during backward, and at the level transitions, whose stored tensors are all a reversible
network keeps.

* :func:`max_pool3d_lean`: ``torch.nn.functional.max_pool3d`` saves its input and an int64
  index per output voxel (twice the bytes of a float32 output); under CPU autocast it also runs
  in float32, so a half-precision input is copied to float32 and the copy is saved. Before a
  reversible sequence's level transition the input is the sequence's output, kept anyway: the
  indices are recomputed from it in backward, and the maximum is taken in the input's own
  dtype (a maximum is exact in any dtype: the values, and the gradients routed to the winning
  voxels, are those of the plain layer bit for bit).
* :class:`LeanLeakyReLU`: ``nn.LeakyReLU(inplace=True)`` whose backward writes the incoming
  gradient over itself when nothing else holds it (the same test as a reversible sequence's,
  :func:`~revunet.reversible.sequence.engine_gradient`) instead of allocating a second one.

* :func:`add_into`: a sum written into a fresh map that nothing else reads (a residual
  branch's output, an interpolation's), so a join holds two maps instead of three.

Under ``torch.compile`` the layers are the plain ones (the compiler plans its own buffers).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional

from revunet.reversible.sequence import engine_gradient


def add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, in ``fresh``'s storage unless that would round the sum to a narrower dtype.

    ``fresh`` must be a map the caller made and nothing else reads: an output no backward
    needs (a convolution's, an interpolation's), never a saved or shared tensor.
    """
    if torch.result_type(fresh, other) != fresh.dtype or fresh.shape != torch.broadcast_shapes(
        fresh.shape, other.shape
    ):
        return fresh + other
    return fresh.add_(other)


def _runs_plain(x: torch.Tensor) -> bool:
    """No graph to save anything for, or a compiler that plans its own buffers: the plain layer."""
    return not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling()


def max_pool3d_lean(x: torch.Tensor, kernel: int | tuple[int, int, int] = 2) -> torch.Tensor:
    """``functional.max_pool3d(x, kernel)`` (stride = kernel, one per axis or one for all) that saves only ``x``."""
    if _runs_plain(x):
        with torch.autocast(x.device.type, enabled=False):
            return functional.max_pool3d(x, kernel)
    output: torch.Tensor = _LeanMaxPool3d.apply(x, kernel)
    return output


class _LeanMaxPool3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: int | tuple[int, int, int]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.kernel = [kernel] * 3 if isinstance(kernel, int) else list(kernel)
        with torch.autocast(x.device.type, enabled=False):
            return functional.max_pool3d(x, kernel)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        kernel = ctx.kernel
        _, indices = functional.max_pool3d(x, kernel, return_indices=True)
        backward = torch.ops.aten.max_pool3d_with_indices_backward
        return backward(grad, x, kernel, kernel, [0] * 3, [1] * 3, False, indices), None


class LeanLeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU(negative_slope, inplace=True)`` whose backward needs no second gradient map."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _runs_plain(x):
            return functional.leaky_relu(x, self.negative_slope, inplace=True)
        output: torch.Tensor = _LeakyReLUInPlace.apply(x, self.negative_slope)
        return output


class _LeakyReLUInPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slope: float) -> torch.Tensor:
        functional.leaky_relu(x, slope, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)  # the output: its sign is the input's (the slope is positive)
        ctx.slope = slope
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        refs = sys.getrefcount(grad)  # the first statement, as where the count is calibrated
        (output,) = ctx.saved_tensors
        if ctx.slope <= 0 or not engine_gradient(grad, refs):
            return torch.ops.aten.leaky_relu_backward(grad, output, ctx.slope, True), None
        # the same kernel, written over the gradient it reads (an elementwise op may alias exactly)
        backward = torch.ops.aten.leaky_relu_backward.grad_input
        return backward(grad, output, ctx.slope, True, grad_input=grad), None
