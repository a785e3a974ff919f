"""An invertible U-Net run as one memory-saving autograd node (the structure of iUNets, Etmann et al. 2020).

Encoder level ``l`` runs a :class:`ReversibleSequence` and splits its output along channels:
the first channels are the level's skip, the last ``down[l]`` go down to the next level
(whose sequence starts with an invertible downsampling). Decoder level ``l > 0`` runs a
sequence that ends with an invertible upsampling back to ``down[l - 1]`` channels; they are
concatenated after the skip of the level above (the exact inverse of the encoder's split),
and decoder level 0 gives the output. Every step is invertible, so the whole map is.

Joined by plain autograd (``split``/``cat`` between per-level memory-saving sequences), each
level's output and every skip would stay stored from forward to backward. Here the node keeps
the output only. Its backward inverts the decoder from the output down to the bottleneck,
which hands back the skips (and their gradients), then the encoder up to the input,
differentiating one block at a time with the sequences' own block protocol.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from revunet.reversible.base import trainable_parameters
from revunet.reversible.sequence import (
    BackwardWalk,
    ReversibleSequence,
    _parameters_bound,
    engine_gradient,
    forward_recording,
    keep_output,
    remember_context,
    sole_tensor,
    take_output,
)


class UNetPath:
    """The levels of an invertible U-Net: its encoder and decoder sequences, top level first.

    ``down[l]`` is how many channels encoder level ``l`` sends to level ``l + 1``; decoder level
    ``l + 1`` must bring back that many channels at level ``l``'s resolution.
    """

    def __init__(
        self, encoder: Sequence[ReversibleSequence], decoder: Sequence[ReversibleSequence], down: Sequence[int]
    ) -> None:
        if not len(encoder) == len(decoder) == len(down) + 1:
            raise ValueError(
                f"an invertible U-Net needs as many encoder as decoder levels and one channel split fewer; "
                f"got {len(encoder)} encoder, {len(decoder)} decoder levels and {len(down)} splits"
            )
        self.encoder = list(encoder)
        self.decoder = list(decoder)
        self.down = list(down)

    def split(self, level: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(skip, part going down) of level ``level``'s map."""
        skip, down = torch.split(h, [h.shape[1] - self.down[level], self.down[level]], dim=1)
        return skip, down

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skips (top level first) and the bottleneck, under plain autograd."""
        skips = []
        h = x
        for level, sequence in enumerate(self.encoder):
            h = sequence(h)
            if level < len(self.down):
                skip, h = self.split(level, h)
                skips.append(skip)
        return skips, h

    def decode(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        h = bottleneck
        for level in range(len(self.decoder) - 1, 0, -1):
            h = torch.cat((skips[level - 1], self.decoder[level](h)), dim=1)
        return self.decoder[0](h)

    @torch.no_grad()
    def invert_encoder(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        h = bottleneck
        for level in range(len(self.encoder) - 1, -1, -1):
            h = self.encoder[level].inverse(h)
            if level:
                h = torch.cat((skips[level - 1], h), dim=1)
        return h

    @torch.no_grad()
    def invert_decoder(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The skips and the bottleneck that :meth:`decode` maps to ``y``."""
        skips = []
        h = self.decoder[0].inverse(y)
        for level in range(1, len(self.decoder)):
            skip, h = self.split(level - 1, h)
            skips.append(skip)
            h = self.decoder[level].inverse(h)
        return skips, h

    def parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter of the levels, each once."""
        return list({id(p): p for s in (*self.encoder, *self.decoder) for p in trainable_parameters(s)}.values())


def invertible_unet(path: UNetPath, x: torch.Tensor, memory_saving: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, bottleneck)`` of the U-Net on ``x``; memory-saving when a graph is needed.

    The bottleneck is returned for branches that read it (a VAE): its gradient joins the
    backward where the decoder's inversion reaches it.
    """
    params = path.parameters()
    if memory_saving and torch.is_grad_enabled() and (x.requires_grad or params):
        y, bottleneck = _InvertibleUNetFunction.apply(x, path, *params)
        return y, bottleneck
    skips, bottleneck = path.encode(x)
    return path.decode(skips, bottleneck), bottleneck


class _InvertibleUNetFunction(torch.autograd.Function):
    """One autograd node for the whole U-Net; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, path: UNetPath, *params: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.path = path
        remember_context(ctx, x, [*path.encoder, *path.decoder], params)
        ctx.encoder_records, ctx.decoder_records = [], [None] * len(path.decoder)
        skips = []
        h = x
        for level, sequence in enumerate(path.encoder):
            h, records = forward_recording(sequence, h)
            ctx.encoder_records.append(records)
            if level < len(path.down):
                skip, h = path.split(level, h)
                skips.append(skip)
        bottleneck = h
        for level in range(len(path.decoder) - 1, -1, -1):
            h, ctx.decoder_records[level] = forward_recording(path.decoder[level], h)
            if level:
                h = torch.cat((skips.pop(), h), dim=1)
        return keep_output(ctx, x, h), bottleneck

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor | None, grad_bottleneck: torch.Tensor | None) -> tuple[Any, ...]:
        refs = sys.getrefcount(grad_y)  # the first statement, as where the count is calibrated
        handed_over = grad_y is None or engine_gradient(grad_y, refs)  # zeros made below are ours too
        y = take_output(ctx, "invertible U-Net")
        path: UNetPath = ctx.path
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        foreign = [] if grad_bottleneck is None else [grad_bottleneck]
        walk = BackwardWalk(ctx.param_index, y, grad_y, *foreign, owned=handed_over and sole_tensor(y))
        del y, grad_y  # the walk holds the only references (see BackwardWalk)
        with ctx.autocast.restored(), _parameters_bound(ctx.bindings):
            walk.through(path.decoder[0], ctx.decoder_records[0])
            skips = []  # (skip, its gradient), rebuilt by inverting the decoder
            for level in range(1, len(path.decoder)):
                (skip, h), (grad_skip, grad) = (path.split(level - 1, t) for t in walk.take())
                skips.append((skip, grad_skip))
                walk.resume(h, grad)
                del skip, h, grad_skip, grad
                walk.through(path.decoder[level], ctx.decoder_records[level])
            if grad_bottleneck is not None:
                h, grad = walk.take()
                walk.resume(h, grad.add_(grad_bottleneck) if walk.owned else grad + grad_bottleneck, adopt=True)
                del h, grad
            for level in range(len(path.encoder) - 1, -1, -1):
                walk.through(path.encoder[level], ctx.encoder_records[level])
                if level:
                    skip, grad_skip = skips.pop()
                    h, grad = walk.take()
                    walk.resume(torch.cat((skip, h), dim=1), torch.cat((grad_skip, grad), dim=1), adopt=True)
                    del skip, grad_skip, h, grad
        grad_x = walk.take()[1] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *walk.param_grads)
