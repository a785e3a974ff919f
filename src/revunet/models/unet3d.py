"""The 3-D U-Net baseline of the invertible-residual paper (after Çiçek et al. 2016).

Two Conv3d 3x3x3 -> InstanceNorm -> LeakyReLU layers per level, max-pooling down,
transposed-convolution (2x2x2, stride 2) up, skips concatenated, 1x1x1 head. The paper
states only "3D U-Net with instance normalisation and LeakyReLU"; we keep Çiçek et al.'s
four levels and layer pattern and choose the widths (24, 48, 96, 192): 3.15 M parameters,
within ±10 % of Partially-InvRes and Fully-InvRes without their VAE branch (checked by a
test), which keeps the memory comparison about reversibility rather than size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from revunet.models.blocks import ConvNormAct3d, SegmentationHead, channel_list, check_spatial_size

UNET3D_CHANNELS = (24, 48, 96, 192)


class UNet3D(nn.Module):
    """Çiçek-style 3-D U-Net; not reversible (it is its own twin)."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = UNET3D_CHANNELS,
        norm: str = "instance",
        groups: int = 8,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        widths = channel_list(channels)
        self.in_channels = in_channels
        self.size_multiple = 2 ** (len(widths) - 1)

        def double_conv(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(ConvNormAct3d(a, b, norm, groups), ConvNormAct3d(b, b, norm, groups))

        self.encoder = nn.ModuleList(double_conv(a, b) for a, b in zip((in_channels, *widths[:-1]), widths))
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(b, a, kernel_size=2, stride=2) for a, b in zip(widths[:-1], widths[1:])
        )
        self.decoder = nn.ModuleList(double_conv(2 * a, a) for a in widths[:-1])
        self.head = SegmentationHead(widths[0], out_channels, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_size(type(self).__name__, x, self.size_multiple, self.in_channels)
        skips = []
        for level, stage in enumerate(self.encoder):
            if level:
                skips.append(x)
                x = functional.max_pool3d(x, 2)
            x = stage(x)
        for level in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[level](torch.cat((self.up[level](x), skips.pop()), dim=1))
        return self.head(x)
