"""Invertible 3-D down/upsampling: space-to-channel squeeze and learnable orthogonal mixing.

The squeeze moves each 2x2x2 neighbourhood into the channel dimension
(C x D x H x W -> 8C x D/2 x H/2 x W/2), a pure permutation of the entries and
hence exactly invertible. On its own it is a fixed pixel shuffle; followed by an
orthogonal 1x1x1 channel mixing it becomes a learnable invertible downsampling
(the Fully-InvRes encoder), whose inverse is the matching upsampling.
"""

from __future__ import annotations

import torch

from revunet.reversible.base import InvertibleModule, ParamGrads
from revunet.reversible.mixing import OrthogonalChannelMix3d


def squeeze3d(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, D, H, W) -> (N, 8C, D/2, H/2, W/2)``; new channel = c*8 + 4*dz + 2*dy + dx."""
    if x.dim() != 5:
        raise ValueError(f"squeeze3d expects an (N, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    n, c, d, h, w = x.shape
    odd = [name for name, size in zip("DHW", (d, h, w)) if size % 2]
    if odd:
        raise ValueError(
            f"squeeze3d halves D, H and W, which must be even; got shape {tuple(x.shape)} (odd: {', '.join(odd)})"
        )
    x = x.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(n, c * 8, d // 2, h // 2, w // 2).clone(memory_format=torch.contiguous_format)


def unsqueeze3d(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`squeeze3d`: ``(N, 8C, D, H, W) -> (N, C, 2D, 2H, 2W)``."""
    if y.dim() != 5 or y.shape[1] % 8:
        raise ValueError(
            f"unsqueeze3d expects an (N, 8C, D, H, W) tensor with channels divisible by 8, got shape {tuple(y.shape)}"
        )
    n, c8, d, h, w = y.shape
    c = c8 // 8
    y = y.reshape(n, c, 2, 2, 2, d, h, w)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(n, c, d * 2, h * 2, w * 2).clone(memory_format=torch.contiguous_format)


class InvertibleSqueeze3d(InvertibleModule):
    """Parameter-free space-to-channel squeeze (2x2x2 -> 8x channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squeeze3d(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze3d(y)

    def forward_recording(self, x: torch.Tensor, preserve_rng_state: bool = True) -> tuple[torch.Tensor, None]:
        return squeeze3d(x), None

    def backward_from_output(
        self, y: torch.Tensor, grad_y: torch.Tensor, record: None, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, ParamGrads]:
        # A permutation: its gradient is the inverse permutation of the incoming gradient.
        return unsqueeze3d(y), unsqueeze3d(grad_y), []


class LearnableSqueeze3d(InvertibleModule):
    """Squeeze followed by a learnable orthogonal mixing of the 8C channels.

    Its inverse (wrap it in :class:`~revunet.reversible.base.Inverted`) is the
    learnable invertible upsampling of the decoder.

    Args:
        channels: channels C of the input (the output has 8C).
        init: ``"random"`` starts from a random rotation (neighbouring voxels mixed from
            the first step), ``"identity"`` from the plain squeeze.
    """

    def __init__(self, channels: int, init: str = "random") -> None:
        super().__init__()
        self.squeeze = InvertibleSqueeze3d()
        self.mix = OrthogonalChannelMix3d(channels * 8, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.squeeze(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.squeeze.inverse(self.mix.inverse(y))
