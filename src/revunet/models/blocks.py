"""Building blocks shared by the architectures.

The coupling functions F and G of Brügger et al.'s reversible block are
GroupNorm -> LeakyReLU(0.01) -> Conv3d 3x3x3 (no bias) on half the channels.
"""

from __future__ import annotations

from torch import nn

from revunet.reversible import AdditiveCoupling, ReversibleSequence


class NormActConv3d(nn.Sequential):
    """GroupNorm -> LeakyReLU -> 3x3x3 convolution that keeps the channel count.

    Args:
        channels: input and output channels.
        groups: GroupNorm groups (Brügger et al. use 30 at every level; must divide ``channels``).
        dropout: optional channel dropout (``Dropout3d``) after the activation.
    """

    def __init__(self, channels: int, groups: int, dropout: float = 0.0, negative_slope: float = 0.01) -> None:
        if channels % groups:
            raise ValueError(f"GroupNorm groups ({groups}) must divide the channel count ({channels})")
        layers: list[nn.Module] = [nn.GroupNorm(groups, channels), nn.LeakyReLU(negative_slope, inplace=False)]
        if dropout:
            layers.append(nn.Dropout3d(dropout))
        layers.append(nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False))
        super().__init__(*layers)


def residual_coupling_sequence(
    channels: int,
    depth: int,
    groups: int,
    memory_saving: bool = True,
    dropout: float = 0.0,
) -> ReversibleSequence:
    """``depth`` additive couplings whose F and G are :class:`NormActConv3d` on ``channels/2``.

    With ``memory_saving=False`` it is the plain-autograd twin with the same parameters.
    """
    if channels % 2:
        raise ValueError(f"a coupling splits channels in halves; {channels} is odd")
    half = channels // 2
    blocks = [
        AdditiveCoupling(NormActConv3d(half, groups, dropout), NormActConv3d(half, groups, dropout))
        for _ in range(depth)
    ]
    return ReversibleSequence(blocks, memory_saving=memory_saving)
