"""nnU-Net's U-Net decoder, computed without the concatenation of each skip.

``UNetDecoder`` concatenates the upsampled map and the skip and convolves the pair; the
concatenation is stored for backward (two maps of the level's width). The same convolution
is the sum of two: the weight's first half on the upsampled map and its second half on the
skip. Each convolution stores its own input, and the skip is stored by the encoder anyway, so
a level keeps one map of its width instead of two. Parameters, state_dict keys, deep
supervision and the ``deep_supervision`` switch are nnU-Net's.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn
from torch.nn import functional

from revunet.models.lean_layers import add_into

_CONVOLUTIONS = {3: functional.conv1d, 4: functional.conv2d, 5: functional.conv3d}


def split_convolution(conv: nn.Module, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(torch.cat((upsampled, skip), 1))``, as two convolutions and a sum (no concatenated map)."""
    convolve = _CONVOLUTIONS[upsampled.dim()]
    width = upsampled.shape[1]
    options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    first = convolve(upsampled, conv.weight[:, :width], None, **options)
    return add_into(first, convolve(skip, conv.weight[:, width:], conv.bias, **options))


class LeanUNetDecoder(UNetDecoder):
    """:class:`UNetDecoder` whose stages convolve the upsampled map and the skip separately."""

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        below = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            first, *rest = stage.convs
            x = split_convolution(first.conv, self.transpconvs[s](below), skips[-(s + 2)])
            for layer in list(first.all_modules)[1:]:
                x = layer(x)
            for block in rest:
                x = block(x)
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
            below = x
        outputs.reverse()  # full resolution first, as nnU-Net's loss expects
        return outputs if self.deep_supervision else outputs[0]
