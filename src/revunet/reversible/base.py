"""The contract every block of a memory-saving sequence fulfils.

An :class:`InvertibleModule` can do three things:

* ``forward(x)``: the ordinary function, differentiated by plain autograd (this is
  what the non-reversible twin runs);
* ``inverse(y)``: recover ``x`` exactly (up to floating-point rounding) from ``y``;
* ``forward_recording(x)`` / ``backward_from_output(y, grad_y, record)``: the pair a
  :class:`~revunet.reversible.sequence.ReversibleSequence` uses to run without
  storing activations. The forward records whatever hidden state (random-number
  generator states) is needed to recompute itself; the backward reconstructs
  the input from the output and returns the gradients.

The default pair (invert under ``no_grad``, then recompute the forward with
grad) is correct for any invertible module; subclasses override it where the
structure allows less work, as :class:`~revunet.reversible.coupling.AdditiveCoupling` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from revunet.reversible.replay import RandomState, replaying, running_stats_frozen

ParamGrads = list[tuple[nn.Parameter, torch.Tensor | None]]


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that receive gradients, each once."""
    return [p for p in module.parameters() if p.requires_grad]


def gradients(
    outputs: torch.Tensor, inputs: list[torch.Tensor], grad_outputs: torch.Tensor
) -> list[torch.Tensor | None]:
    """``torch.autograd.grad`` that tolerates inputs the output does not depend on."""
    if not inputs:
        return []
    if not outputs.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(outputs, inputs, grad_outputs.to(outputs.dtype), allow_unused=True))


class InvertibleModule(nn.Module):
    """Base class of every block a memory-saving :class:`ReversibleSequence` accepts.

    Subclasses implement :meth:`forward` and :meth:`inverse`. Both must return a
    new tensor (never a view of their argument).
    """

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse()")

    def forward_overwriting(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` without a graph, free to write the output into ``x``'s storage.

        The default returns a new tensor; blocks that can compute in place (a coupling) do, so
        inference holds one map per block instead of an input and an output.
        """
        return self.forward(x)

    def forward_recording(self, x: torch.Tensor, preserve_rng_state: bool = True) -> tuple[torch.Tensor, Any]:
        """Forward without a graph, plus what :meth:`backward_from_output` needs to replay it."""
        record = RandomState.capture(x) if preserve_rng_state else None
        return self.forward(x), record

    def backward_from_output(
        self, y: torch.Tensor, grad_y: torch.Tensor, record: Any, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, ParamGrads]:
        """Reconstruct the input from ``y`` and back-propagate ``grad_y`` through this block.

        Returns ``(x, grad_x, [(parameter, gradient), ...])``. ``inplace`` tells that the
        caller owns ``y`` and ``grad_y`` and lets them be overwritten; blocks that
        cannot make use of it ignore it. Returned tensors must not alias ``y`` or
        ``grad_y`` unless ``inplace`` is set.
        """
        with torch.no_grad():
            x = self.inverse(y)
        params = trainable_parameters(self)
        with torch.enable_grad(), running_stats_frozen(self), replaying(record):
            x_leaf = x.detach().requires_grad_(True)
            y_again = self.forward(x_leaf)
        grads = gradients(y_again, [x_leaf, *params], grad_y)
        grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return x, grad_x, list(zip(params, grads[1:]))


class Inverted(InvertibleModule):
    """Run an invertible module backwards: ``forward`` is its inverse and vice versa.

    Used for upsampling by an inverted learnable squeeze, so that the decoder of a
    fully invertible network shares the encoder's building blocks.
    """

    def __init__(self, module: InvertibleModule) -> None:
        super().__init__()
        if not isinstance(module, InvertibleModule):
            raise TypeError(f"Inverted needs an InvertibleModule, got {type(module).__name__}")
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.inverse(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.module(y)
