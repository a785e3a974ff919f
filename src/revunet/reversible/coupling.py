"""Additive coupling (Gomez et al. 2017): the reversible block all three papers use.

The channels are split into halves ``x1, x2`` and

    y1 = x1 + F(x2)        x2 = y2 - G(y1)
    y2 = x2 + G(y1)        x1 = y1 - F(x2)

so the input is recovered from the output whatever F and G are, as long as
they keep the shape of a half.
"""

from __future__ import annotations

import torch
from torch import nn

from revunet.reversible.base import InvertibleModule, ParamGrads, gradients, trainable_parameters
from revunet.reversible.replay import RandomState, replaying, running_stats_frozen


def _halves(tensor: torch.Tensor, dim: int, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    size = tensor.shape[dim]
    if size % 2:
        raise ValueError(
            f"{owner} splits dimension {dim} into two halves, but the input has {size} "
            f"(odd) entries along it (shape {tuple(tensor.shape)})"
        )
    first, second = tensor.split(size // 2, dim=dim)
    return first, second


class AdditiveCoupling(InvertibleModule):
    """``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)`` over the two halves of dimension ``split_dim``.

    Args:
        f: maps a half to a tensor of the same shape (any module, e.g. GN-LeakyReLU-Conv).
        g: likewise; pass a different module instance from ``f``.
        split_dim: dimension split into halves (1, the channels, for NC... tensors).
    """

    def __init__(self, f: nn.Module, g: nn.Module, split_dim: int = 1) -> None:
        super().__init__()
        self.f = f
        self.g = g
        self.split_dim = split_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = _halves(x, self.split_dim, type(self).__name__)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=self.split_dim)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = _halves(y, self.split_dim, type(self).__name__)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=self.split_dim)

    def forward_overwriting(self, x: torch.Tensor) -> torch.Tensor:
        # x1 += F(x2), then x2 += G(x1): the output takes the input's place.
        x1, x2 = _halves(x, self.split_dim, type(self).__name__)
        x1.add_(self.f(x2))
        x2.add_(self.g(x1))
        return x

    def forward_recording(
        self, x: torch.Tensor, preserve_rng_state: bool = True
    ) -> tuple[torch.Tensor, tuple[RandomState | None, RandomState | None]]:
        # Writes each half straight into the output: no concatenation copy.
        y = torch.empty_like(x)
        x1, x2 = _halves(x, self.split_dim, type(self).__name__)
        y1, y2 = _halves(y, self.split_dim, type(self).__name__)
        f_state = RandomState.capture(x) if preserve_rng_state else None
        torch.add(x1, self.f(x2), out=y1)
        g_state = RandomState.capture(x) if preserve_rng_state else None
        torch.add(x2, self.g(y1), out=y2)
        return y, (f_state, g_state)

    def backward_from_output(
        self,
        y: torch.Tensor,
        grad_y: torch.Tensor,
        record: tuple[RandomState | None, RandomState | None],
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, ParamGrads]:
        """Invert and differentiate together: F and G are each evaluated once, with grad.

        G is recomputed from ``y1`` (which is known), giving ``x2`` and the gradient
        flowing into ``y1``; then F is recomputed from ``x2``, giving ``x1``. With
        ``inplace`` (the caller owns ``y`` and ``grad_y``) the input and its gradient
        overwrite them, so a deep sequence allocates nothing per block.
        """
        if inplace:
            return self._backward_in_place(y, grad_y, record)
        f_state, g_state = record
        name = type(self).__name__
        y1, y2 = _halves(y, self.split_dim, name)
        dy1, dy2 = _halves(grad_y, self.split_dim, name)
        g_params, f_params = trainable_parameters(self.g), trainable_parameters(self.f)

        # Buffers are allocated as late as possible: while F and G are differentiated
        # (where the peak lies) only the halves still needed are alive.
        with running_stats_frozen(self):
            with torch.enable_grad(), replaying(g_state):
                y1_leaf = y1.detach().requires_grad_(True)
                g_out = self.g(y1_leaf)
            grad_through_g, *g_grads = gradients(g_out, [y1_leaf, *g_params], dy2)
            del y1_leaf
            x2 = y2 - g_out.detach()
            del g_out
            dx1 = _plus(dy1, grad_through_g, may_overwrite_base=False)  # total gradient reaching y1
            del grad_through_g

            with torch.enable_grad(), replaying(f_state):
                x2_leaf = x2.detach().requires_grad_(True)
                f_out = self.f(x2_leaf)
            grad_through_f, *f_grads = gradients(f_out, [x2_leaf, *f_params], dx1)
            del x2_leaf
            x = torch.empty_like(y)
            x1_part, x2_part = _halves(x, self.split_dim, name)
            torch.sub(y1, f_out.detach(), out=x1_part)
            x2_part.copy_(x2)
            del f_out, x2

        grad_x = _input_gradient(grad_y, dx1, dy2, grad_through_f, self.split_dim)
        return x, grad_x, [*zip(g_params, g_grads), *zip(f_params, f_grads)]

    def _backward_in_place(
        self, y: torch.Tensor, grad_y: torch.Tensor, record: tuple[RandomState | None, RandomState | None]
    ) -> tuple[torch.Tensor, torch.Tensor, ParamGrads]:
        """The backward when ``y`` and ``grad_y`` are ours: ``y`` becomes the input and ``grad_y``
        its gradient, and each function's output is subtracted (and freed) before its gradient
        is computed, so that only one function's recomputation is alive at a time."""
        f_state, g_state = record
        name = type(self).__name__
        y1, y2 = _halves(y, self.split_dim, name)
        dy1, dy2 = _halves(grad_y, self.split_dim, name)
        with running_stats_frozen(self):
            grad_through_g, g_grads = _subtract_differentiated(self.g, y1, y2, dy2, g_state)  # y2 is x2
            _plus(dy1, grad_through_g, may_overwrite_base=True)  # dy1 is the gradient reaching y1
            del grad_through_g
            grad_through_f, f_grads = _subtract_differentiated(self.f, y2, y1, dy1, f_state)  # y1 is x1
            _plus(dy2, grad_through_f, may_overwrite_base=True)
        return y, grad_y, [*g_grads, *f_grads]


def _subtract_differentiated(
    function: nn.Module,
    source: torch.Tensor,
    target: torch.Tensor,
    grad_target: torch.Tensor,
    state: RandomState | None,
) -> tuple[torch.Tensor | None, ParamGrads]:
    """``target -= function(source)`` in place, and the gradients of ``<function(source), grad_target>``
    with respect to ``source`` and the function's parameters.

    The function's output is added into ``-target`` as soon as it exists, so it is freed before
    the gradient is computed (an addition's backward passes the gradient through without a copy);
    negating twice is exact. ``target`` is written through an alias with a version counter of its
    own: ``source`` (the other half of the same storage) is saved by the graph, and writing the
    other half does not change it.
    """
    params = trainable_parameters(function)
    with torch.enable_grad(), replaying(state):
        leaf = source.detach().requires_grad_(True)
        root = _separately_versioned(target).neg_().add_(function(leaf))
    grad_source, *grads = gradients(root, [leaf, *params], grad_target)
    del leaf
    root.detach().neg_()
    return grad_source, list(zip(params, grads))


def _separately_versioned(tensor: torch.Tensor) -> torch.Tensor:
    """An alias of ``tensor`` (same storage, offset, shape and strides) with its own version counter."""
    alias = torch.empty((0,), dtype=tensor.dtype, device=tensor.device)
    # The Tensor overload (missing from the type stubs): fake mode would cache a storage argument.
    return alias.set_(tensor)  # type: ignore[call-overload]


def _input_gradient(
    grad_y: torch.Tensor, dx1: torch.Tensor, dy2: torch.Tensor, grad_through_f: torch.Tensor | None, split_dim: int
) -> torch.Tensor:
    """The gradient reaching a coupling's input, in a new tensor: ``dx1`` and ``dy2 + dF/dx2``."""
    grad_x = torch.empty_like(grad_y)
    gx1, gx2 = _halves(grad_x, split_dim, "AdditiveCoupling")
    gx1.copy_(dx1)
    if grad_through_f is None:
        gx2.copy_(dy2)
    else:
        torch.add(dy2, grad_through_f, out=gx2)
    return grad_x


def _plus(base: torch.Tensor, extra: torch.Tensor | None, may_overwrite_base: bool) -> torch.Tensor:
    """``base + extra`` (``extra`` may be missing), in ``base``'s storage when allowed."""
    if extra is None:
        return base
    if may_overwrite_base:
        return base.add_(extra)
    return base + extra
