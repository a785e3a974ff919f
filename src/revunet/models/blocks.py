"""Building blocks shared by the architectures.

The coupling functions F and G of Brügger et al.'s reversible block are
GroupNorm -> LeakyReLU(0.01) -> Conv3d 3x3x3 (no bias) on half the channels;
Pendse et al. replace them by mobile inverted bottlenecks (MBConv); the
invertible-residual paper uses instance normalisation instead of groups.
Every architecture takes its blocks from here so that a change of block is one
argument, never a copy of a network.

Activations after a norm are in place, as in Brügger et al.'s code: a norm's backward needs
its input, not its output, so overwriting the output is safe and saves one tensor per layer
(in the twin's stored activations and in every recomputation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from revunet.models.lean_layers import LeanLeakyReLU
from revunet.reversible import AdditiveCoupling, ReversibleSequence

NORMS = ("group", "instance")
BLOCKS = ("residual", "mbconv")
OUTPUTS = ("sigmoid", "softmax")


def make_norm(kind: str, channels: int, groups: int = 30, lean: bool = False) -> nn.Module:
    """GroupNorm or affine InstanceNorm over ``channels``.

    For GroupNorm the group count is ``gcd(groups, channels)``: Brügger et al.'s 30 groups
    divide every width they use, and Pendse et al.'s narrower MBConv halves (15 channels)
    get the largest group count that still divides them. ``lean``: instance normalisation as
    :class:`GroupInstanceNorm3d` (the layers of the reversible networks; the baselines keep
    ``nn.InstanceNorm3d``, as the papers ran them).
    """
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "instance":
        return GroupInstanceNorm3d(channels) if lean else nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class GroupInstanceNorm3d(nn.GroupNorm):
    """``nn.InstanceNorm3d(channels, affine=True)`` computed as a group norm with one group per channel.

    The same function with the same parameters (``weight``, ``bias``: the state_dict keys do not
    change). ``nn.InstanceNorm3d`` reshapes to a batch norm and returns a view of its output, so an
    in-place activation after it makes autograd copy the whole map back (three extra maps in
    backward); the fused group-norm kernel returns a tensor of its own.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, eps=1e-5, affine=True)


class NormActConv3d(nn.Sequential):
    """Norm -> LeakyReLU -> 3x3x3 convolution that keeps the channel count (pre-activation).

    Args:
        channels: input and output channels.
        groups: GroupNorm groups (Brügger et al. use 30 at every level; must divide ``channels``).
        dropout: optional channel dropout (``Dropout3d``) after the activation.
        norm: ``"group"`` or ``"instance"``.
    """

    def __init__(
        self,
        channels: int,
        groups: int = 30,
        dropout: float = 0.0,
        negative_slope: float = 0.01,
        norm: str = "group",
    ) -> None:
        if norm == "group" and channels % groups:
            raise ValueError(f"GroupNorm groups ({groups}) must divide the channel count ({channels})")
        layers: list[nn.Module] = [make_norm(norm, channels, groups, lean=True), LeanLeakyReLU(negative_slope)]
        if dropout:
            layers.append(nn.Dropout3d(dropout))
        layers.append(nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False))
        super().__init__(*layers)


class ConvNormAct3d(nn.Sequential):
    """3x3x3 convolution (no bias: the norm removes it) -> Norm -> LeakyReLU: a plain U-Net layer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "group",
        groups: int = 30,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            make_norm(norm, out_channels, groups),
            nn.LeakyReLU(negative_slope, inplace=True),
        )


class MBConv3d(nn.Sequential):
    """Mobile inverted bottleneck at constant width (Pendse et al.'s F and G).

    Pointwise expansion to ``expand_ratio * channels``, depthwise 3x3x3 convolution
    (a grouped Conv3d with one group per channel), pointwise projection back; a norm after
    every convolution, an activation after the first two only (a linear bottleneck).
    """

    def __init__(
        self,
        channels: int,
        expand_ratio: int = 2,
        norm: str = "group",
        groups: int = 30,
        negative_slope: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        if expand_ratio < 1:
            raise ValueError(f"expand_ratio must be >= 1, got {expand_ratio}")
        hidden = channels * expand_ratio
        layers: list[nn.Module] = [
            nn.Conv3d(channels, hidden, kernel_size=1, bias=False),
            make_norm(norm, hidden, groups, lean=True),
            LeanLeakyReLU(negative_slope),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden, bias=False),
            make_norm(norm, hidden, groups, lean=True),
            LeanLeakyReLU(negative_slope),
        ]
        if dropout:
            layers.append(nn.Dropout3d(dropout))
        layers += [nn.Conv3d(hidden, channels, kernel_size=1, bias=False), make_norm(norm, channels, groups, lean=True)]
        super().__init__(*layers)


def coupling_function(
    channels: int,
    block: str = "residual",
    norm: str = "group",
    groups: int = 30,
    expand_ratio: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """One F or G of an additive coupling, acting on ``channels`` (half the coupled width)."""
    if block == "residual":
        return NormActConv3d(channels, math.gcd(groups, channels) if norm == "group" else groups, dropout, norm=norm)
    if block == "mbconv":
        return MBConv3d(channels, expand_ratio, norm=norm, groups=groups, dropout=dropout)
    raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")


def coupling_blocks(
    channels: int,
    depth: int,
    block: str = "residual",
    norm: str = "group",
    groups: int = 30,
    expand_ratio: int = 2,
    dropout: float = 0.0,
) -> list[AdditiveCoupling]:
    """``depth`` additive couplings on ``channels``, each with its own F and G."""
    if channels % 2:
        raise ValueError(f"a coupling splits channels in halves; {channels} is odd")
    if depth < 1:
        raise ValueError(f"a reversible sequence needs at least one block, got depth {depth}")
    half = channels // 2
    return [
        AdditiveCoupling(
            coupling_function(half, block, norm, groups, expand_ratio, dropout),
            coupling_function(half, block, norm, groups, expand_ratio, dropout),
        )
        for _ in range(depth)
    ]


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
    return ReversibleSequence(
        coupling_blocks(channels, depth, "residual", "group", groups, dropout=dropout), memory_saving=memory_saving
    )


class SegmentationHead(nn.Module):
    """1x1x1 convolution to the output channels; returns logits.

    ``output`` says how logits become probabilities: ``"sigmoid"`` for BraTS's independent
    WT/TC/ET regions, ``"softmax"`` for iSeg's exclusive classes. The activation is not
    applied in ``forward`` so that losses can use the numerically stable logit forms;
    :meth:`probabilities` applies it (Brügger et al.'s network ends in the sigmoid itself,
    which is the same function).
    """

    def __init__(
        self, in_channels: int, out_channels: int, output: str = "sigmoid", norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.output = output
        # optional Norm -> LeakyReLU before the convolution: bounds the scale of what the
        # convolution reads (see PartiallyReversibleUNet's head_norm)
        self.norm = nn.Sequential(norm, nn.LeakyReLU(0.01)) if norm is not None else None
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.norm is None else self.norm(x))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.softmax(logits, dim=1)


def check_spatial_size(model_name: str, x: torch.Tensor, multiple: int, in_channels: int) -> None:
    """Refuse an input the network cannot take, naming the multiple it needs.

    Inputs are not padded silently: the data layer crops/pads volumes to the experiment's
    size once, so a wrong size here is a configuration error worth seeing.
    """
    if x.dim() != 5:
        raise ValueError(f"{model_name} expects a 5-D input (batch, channels, x, y, z), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model_name} expects {in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    bad = [s for s in x.shape[2:] if s % multiple]
    if bad:
        fixed = tuple(max(multiple, round(s / multiple) * multiple) for s in x.shape[2:])
        raise ValueError(
            f"{model_name} needs every spatial size divisible by {multiple} (it halves the resolution "
            f"{int(math.log2(multiple))} times); got {tuple(x.shape[2:])}; crop or pad to e.g. {fixed}"
        )


def channel_list(channels: Sequence[int], name: str = "channels") -> tuple[int, ...]:
    """Validate a per-level channel list (positive, at least two levels)."""
    values = tuple(int(c) for c in channels)
    if len(values) < 2 or any(c <= 0 for c in values):
        raise ValueError(f"{name} must list at least two positive widths (one per level), got {list(channels)}")
    return values
