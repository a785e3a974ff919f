"""The partially reversible U-Net (Brügger et al., Pendse et al.) under nnU-Net's contract.

nnU-Net's topology (``features_per_stage``, ``strides``) sets the levels: each level's work is a
reversible sequence of couplings (residual or MBConv F/G), each transition max-pools by the
plans' stride for that level (anisotropic strides included) and mixes channels with a 1x1x1
convolution; up, a 1x1x1 convolution and a trilinear interpolation by the same stride. With deep
supervision the decoder's level maps get 1x1x1 heads, full resolution first, as nnU-Net's loss
expects; ``decoder.deep_supervision`` switches them as nnU-Net's trainer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn import functional

from revunet.models.blocks import check_spatial_size
from revunet.models.lean_layers import max_pool3d_lean
from revunet.models.partially_reversible import PartiallyReversibleUNet


def _level_strides(strides: Sequence[Any], n_stages: int) -> list[tuple[int, int, int]]:
    """The plans' strides as one 3-tuple per level transition (the first stage's stride must be 1)."""
    expanded = [tuple([int(s)] * 3) if isinstance(s, int) else tuple(int(v) for v in s) for s in strides]
    if len(expanded) != n_stages or any(len(s) != 3 for s in expanded):
        raise ValueError(f"strides: expected {n_stages} 3-D strides (one per stage), got {list(strides)}")
    if expanded[0] != (1, 1, 1):
        raise ValueError(f"strides: the first stage must keep the resolution (stride 1), got {list(expanded[0])}")
    return expanded[1:]  # type: ignore[return-value]


@torch.compiler.disable
def eager(sequence: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A level's reversible sequence on a map made for it alone, eager under nnU-Net's whole-model ``torch.compile``.

    The sequence is a custom autograd function whose backward recomputes; traced, its graph
    would save the activations it exists not to store. So it is a graph break, and the levels'
    transitions and heads between the breaks are compiled.
    """
    result: torch.Tensor = sequence(x, overwrite_input=True)
    return result


class PartiallyReversibleNNUNet(PartiallyReversibleUNet):
    """:class:`~revunet.models.partially_reversible.PartiallyReversibleUNet` with nnU-Net's constructor and outputs.

    Args:
        input_channels, num_classes, deep_supervision: what nnU-Net passes to every network.
        n_stages, features_per_stage, strides: the plans' topology (3-D only).
        block: ``"residual"`` or ``"mbconv"`` couplings in the encoder; the decoder's are residual.
        encoder_depth, decoder_depth, norm, skip, groups, expand_ratio, memory_saving: as in the
            parent class (instance norm and concatenated skips by default, as in Pendse et al.'s
            Partially-InvRes).
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        n_stages: int,
        features_per_stage: Sequence[int],
        strides: Sequence[Any],
        deep_supervision: bool = False,
        block: str = "residual",
        encoder_depth: int = 1,
        decoder_depth: int = 1,
        norm: str = "instance",
        skip: str = "concat",
        groups: int = 8,
        expand_ratio: int = 2,
        memory_saving: bool = True,
    ) -> None:
        widths = [int(w) for w in features_per_stage]
        if len(widths) != n_stages:
            raise ValueError(f"features_per_stage: expected {n_stages} widths (n_stages), got {widths}")
        super().__init__(
            input_channels,
            num_classes,
            widths,
            encoder_depth=encoder_depth,
            decoder_depth=decoder_depth,
            groups=groups,
            block=block,
            expand_ratio=expand_ratio,
            norm=norm,
            skip=skip,
            output="softmax",
            memory_saving=memory_saving,
        )
        self.level_widths = widths
        self.strides = _level_strides(strides, n_stages)
        self.size_multiple = 1  # the plans' patch sizes are divisible by the strides' products
        self.deep_supervision_heads = nn.ModuleList(nn.Conv3d(w, num_classes, kernel_size=1) for w in widths[1:-1])
        self.decoder.deep_supervision = deep_supervision  # nnU-Net's trainer switches it here

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        check_spatial_size(type(self).__name__, x, 1, self.in_channels)
        skips = []
        h = eager(self.encoder[0], self.stem(x))
        for stride, down, sequence in zip(self.strides, self.down, self.encoder[1:]):
            skips.append(h)
            h = eager(sequence, down(max_pool3d_lean(h, stride)))
        supervised = bool(self.decoder.deep_supervision)
        outputs = []
        for level in range(len(self.decoder) - 1, 0, -1):
            h = eager(self.decoder[level], h)
            if supervised and level < len(self.decoder) - 1:
                outputs.append(self.deep_supervision_heads[level - 1](h))
            h = self._upsampled_part(level - 1, self.up[level - 1](h))
            h = functional.interpolate(h, scale_factor=self.strides[level - 1], mode="trilinear", align_corners=False)
            h = self._join(level - 1, h, skips.pop())
        outputs.append(self.head(eager(self.decoder[0], h)))
        outputs.reverse()  # full resolution first
        return outputs if supervised else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """nnU-Net's planner heuristic for this network: the maps a training step keeps, in elements.

        Per level: the encoder's stored output, the transition's output, the decoder's stored
        output and its join (four maps of the level's width), and a head's output.
        """
        size = np.array(input_size, dtype=np.int64)
        total = np.int64(0)
        for level, width in enumerate(self.level_widths):
            if level:
                size = size // np.array(self.strides[level - 1])
            total += (4 * width + self.head.conv.out_channels) * np.prod(size)
        return np.int64(total)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's He-normal initialisation of the convolutions."""
        InitWeights_He(1e-2)(module)
