"""Brügger et al.'s non-reversible baseline "NO_NEW30", a No-New-Net style 3-D U-Net.

Channels 30·2^k over five levels; every layer is Conv3d 3x3x3 (no bias) -> GroupNorm(30)
-> LeakyReLU(0.01); max-pooling down, trilinear upsampling up, skips ADDED (not
concatenated). 12,425,253 parameters with the defaults, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from revunet.models.blocks import ConvNormAct3d, SegmentationHead, channel_list, check_spatial_size


class NoNewNet(nn.Module):
    """Encoder: level 0 two convolutions; levels 1..n-2 max-pool and two convolutions;
    the bottom level max-pool and one convolution to the widest width.
    Decoder: a convolution back to the next width then upsampling; at each level above,
    the skip is added, then one convolution at the level's width, one to the next width
    and upsampling; at the top two convolutions, then the 1x1x1 head.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (30, 60, 120, 240, 480),
        groups: int = 30,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        widths = channel_list(channels)
        self.in_channels = in_channels
        self.size_multiple = 2 ** (len(widths) - 1)
        norm = {"norm": "group", "groups": groups}
        self.encoder = nn.ModuleList()
        self.encoder.append(
            nn.Sequential(ConvNormAct3d(in_channels, widths[0], **norm), ConvNormAct3d(widths[0], widths[0], **norm))
        )
        for previous, width in zip(widths[:-2], widths[1:-1]):
            self.encoder.append(
                nn.Sequential(ConvNormAct3d(previous, width, **norm), ConvNormAct3d(width, width, **norm))
            )
        self.encoder.append(ConvNormAct3d(widths[-2], widths[-1], **norm))
        # decoder[0] leaves the bottom; decoder[k] works at level n-1-k and ends at the next width.
        self.decoder = nn.ModuleList([ConvNormAct3d(widths[-1], widths[-2], **norm)])
        for width, below in zip(widths[-2:0:-1], widths[-3::-1]):
            self.decoder.append(nn.Sequential(ConvNormAct3d(width, width, **norm), ConvNormAct3d(width, below, **norm)))
        self.top = nn.Sequential(
            ConvNormAct3d(widths[0], widths[0], **norm), ConvNormAct3d(widths[0], widths[0], **norm)
        )
        self.head = SegmentationHead(widths[0], out_channels, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_size(type(self).__name__, x, self.size_multiple, self.in_channels)
        skips = []
        for level, stage in enumerate(self.encoder):
            if level:
                x = functional.max_pool3d(x, 2)
            x = stage(x)
            skips.append(x)
        skips.pop()  # the bottom output is not a skip
        for stage in self.decoder:
            x = functional.interpolate(stage(x), scale_factor=2, mode="trilinear", align_corners=False)
            x = x + skips.pop()
        return self.head(self.top(x))
