"""Learnable channel mixing that is orthogonal by construction (Cayley parameterisation).

An orthogonal matrix W is inverted by its transpose, so the mixing is exactly
invertible at every step of training, with no determinant to watch and no
matrix inverse to compute. W = Q0 · (I - A)^-1 (I + A) with A = M - Mᵀ
skew-symmetric: any learnable M gives an orthogonal W; Q0 is a fixed random
orthogonal start (or the identity).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from revunet.reversible.base import InvertibleModule


class OrthogonalChannelMix3d(InvertibleModule):
    """1x1x1 convolution with an orthogonal weight: ``y[:, i] = sum_j W[i, j] x[:, j]``.

    Args:
        channels: number of channels mixed.
        init: ``"random"`` (a fixed random orthogonal Q0, seeded by the global
            generator) or ``"identity"``.
    """

    def __init__(self, channels: int, init: str = "random") -> None:
        super().__init__()
        if init not in ("random", "identity"):
            raise ValueError(f"OrthogonalChannelMix3d init must be 'random' or 'identity', got {init!r}")
        self.channels = channels
        self.generator = nn.Parameter(torch.zeros(channels, channels))
        start = torch.eye(channels)
        if init == "random":
            # QR in float64: a float32 QR is orthogonal only to ~1e-6, which would show as
            # reconstruction error through the transpose used as the inverse.
            start = torch.linalg.qr(torch.randn(channels, channels).double()).Q.float()
        self.register_buffer("start", start)

    def weight(self) -> torch.Tensor:
        """The current orthogonal matrix (differentiable in ``generator``)."""
        skew = self.generator - self.generator.T
        eye = torch.eye(self.channels, dtype=skew.dtype, device=skew.device)
        return self.start.to(skew.dtype) @ torch.linalg.solve(eye - skew, eye + skew)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"OrthogonalChannelMix3d({self.channels}) expects (N, {self.channels}, D, H, W), "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return F.conv3d(x, self.weight().to(x.dtype)[:, :, None, None, None])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        # The exact inverse, not the transpose: ``start`` is orthogonal only to the precision
        # it was stored in (float32 even after ``.double()``), and a C x C inverse is cheap.
        inverse = torch.linalg.inv(self.weight().double())
        return F.conv3d(y, inverse.to(y.dtype)[:, :, None, None, None])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
