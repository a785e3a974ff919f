"""A reversible counterpart of nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``).

nnU-Net's residual encoder stacks ``n_blocks_per_stage[s]`` residual blocks per stage; the
first block of a stage changes the resolution (``strides[s]``) and the width, the others keep
the shape. Here every block that keeps the shape is an additive coupling, and a stage's run of
them is one reversible sequence, which stores only its output for backward (its input is
rebuilt from it). Widths, strides, kernel sizes and stage depths are the plans' own; the stem,
the shape-changing blocks (nnU-Net's ``BasicBlockD``) and the decoder (nnU-Net's
``UNetDecoder``, deep supervision included) are nnU-Net's modules, unchanged.

A coupling's F and G each map half the stage's width through ``conv (to the full width) ->
norm -> nonlin -> conv (back to half) -> norm``: the two functions hold the parameters of one
residual block of that width (two ``k x k x k`` convolutions of ``width x width`` channels), so
the network has the parameter count of the network it replaces, up to norm affines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn

from revunet.integrations.nnunet.decoder import LeanUNetDecoder
from revunet.reversible import AdditiveCoupling, ReversibleSequence


def _per_stage(value: Any, n_stages: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * n_stages


def coupling_function(channels: int, kernel_size: Any, conv_op: type[nn.Module], ops: dict[str, Any]) -> nn.Sequential:
    """One F or G on ``channels // 2``: conv to ``channels``, norm, nonlin, (dropout), conv back, norm.

    The layers are the plans' own classes. revunet's lean layers are not swapped in: nnU-Net
    trains under CUDA autocast, which runs a group norm in float32 (a float32 copy of its input
    saved) where the plans' instance norm runs in half precision.
    """
    half = channels // 2
    pad = [(k - 1) // 2 for k in maybe_convert_scalar_to_list(conv_op, kernel_size)]
    bias = ops["conv_bias"]

    def norm(width: int) -> list[nn.Module]:
        return [] if ops["norm_op"] is None else [ops["norm_op"](width, **(ops["norm_op_kwargs"] or {}))]

    nonlin = [] if ops["nonlin"] is None else [ops["nonlin"](**(ops["nonlin_kwargs"] or {}))]
    dropout = [] if ops["dropout_op"] is None else [ops["dropout_op"](**(ops["dropout_op_kwargs"] or {}))]
    return nn.Sequential(
        conv_op(half, channels, kernel_size, padding=pad, bias=bias),
        *norm(channels),
        *nonlin,
        *dropout,
        conv_op(channels, half, kernel_size, padding=pad, bias=bias),
        *norm(half),
    )


class ReversibleStage(nn.Module):
    """A stage: nnU-Net's shape-changing block (if the shape changes), then a reversible sequence."""

    def __init__(self, transition: nn.Module | None, couplings: ReversibleSequence | None) -> None:
        super().__init__()
        self.transition = transition
        self.couplings = couplings

    # Eager under nnU-Net's whole-model torch.compile: the reversible sequence is a custom autograd
    # function whose backward recomputes (traced, its graph would save the activations it exists
    # not to store); and the stages differ in shape, so dynamo would recompile this one frame with
    # dynamic shapes, where inductor (torch 2.13) fails to lower the backward of the transition's
    # strided convolution (``ValueRangeError: Invalid ranges``).
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transition is not None:
            x = self.transition(x)
        if self.couplings is not None:
            # the transition's output is made for the sequence alone: in inference it is overwritten
            x = self.couplings(x, overwrite_input=self.transition is not None)
        return x


class ReversibleResidualEncoder(nn.Module):
    """nnU-Net's ``ResidualEncoder`` (``BasicBlockD``, conv stem) with shape-keeping blocks as couplings.

    It exposes the attributes nnU-Net's ``UNetDecoder`` reads (``output_channels``, ``strides``,
    ``conv_op``, the norm/dropout/nonlin choices, ``conv_bias``, ``kernel_sizes``).
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Sequence[int] | int,
        conv_op: type[nn.Module],
        kernel_sizes: Any,
        strides: Any,
        n_blocks_per_stage: Sequence[int] | int,
        ops: dict[str, Any],
        stem_channels: int | None = None,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in _per_stage(features_per_stage, n_stages)]
        kernel_sizes = _per_stage(kernel_sizes, n_stages)
        strides = _per_stage(strides, n_stages)
        depths = [int(d) for d in _per_stage(n_blocks_per_stage, n_stages)]
        stem_width = stem_channels or widths[0]
        self.stem = StackedConvBlocks(1, conv_op, input_channels, stem_width, kernel_sizes[0], 1, **ops)
        stages, width_in = [], stem_width
        for width, kernel, stride, depth in zip(widths, kernel_sizes, strides, depths):
            stages.append(self._stage(conv_op, width_in, width, kernel, stride, depth, ops, memory_saving))
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.output_channels = widths
        self.strides = [maybe_convert_scalar_to_list(conv_op, s) for s in strides]
        self.return_skips = True
        self.conv_op = conv_op
        self.kernel_sizes = kernel_sizes
        for key, value in ops.items():
            setattr(self, key, value)

    @staticmethod
    def _stage(
        conv_op: type[nn.Module],
        width_in: int,
        width: int,
        kernel: Any,
        stride: Any,
        depth: int,
        ops: dict[str, Any],
        memory_saving: bool,
    ) -> ReversibleStage:
        if width % 2:
            raise ValueError(f"a coupling splits a stage's width in halves; features_per_stage holds {width}, odd")
        changes_shape = width_in != width or any(s != 1 for s in maybe_convert_scalar_to_list(conv_op, stride))
        transition = BasicBlockD(conv_op, width_in, width, kernel, stride, **ops) if changes_shape else None
        n_couplings = depth - 1 if changes_shape else depth
        couplings = [
            AdditiveCoupling(
                coupling_function(width, kernel, conv_op, ops), coupling_function(width, kernel, conv_op, ops)
            )
            for _ in range(n_couplings)
        ]
        sequence = ReversibleSequence(couplings, memory_saving=memory_saving) if couplings else None
        return ReversibleStage(transition, sequence)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """What nnU-Net's planner weighs, for the reversible encoder: stored conv outputs, in elements.

        The stem and each shape-changing block count as nnU-Net counts them; a reversible sequence
        stores one map (its output), plus, once for the whole encoder, the largest coupling's
        working set during its recomputation (F's two convolution outputs: the full width and half).
        """
        total = self.stem.compute_conv_feature_map_size(input_size)
        size = list(input_size)
        working = np.int64(0)
        for stage, stride, width in zip(self.stages, self.strides, self.output_channels):
            if stage.transition is not None:
                total += stage.transition.compute_conv_feature_map_size(size)
                size = [i // j for i, j in zip(size, stride)]
            if stage.couplings is not None:
                voxels = np.prod(size, dtype=np.int64)
                total += width * voxels
                working = max(working, (width + width // 2) * voxels)
        return np.int64(total + working)


class ReversibleResEncUNet(nn.Module):
    """``ResidualEncoderUNet``'s constructor, forward and decoder, with a reversible encoder.

    nnU-Net builds it from a plans file (``network_class_name``:
    ``revunet.integrations.nnunet.ReversibleResEncUNet``) with the arguments it gives its own
    residual-encoder U-Net. ``memory_saving=False`` builds the plain-autograd twin with the same
    parameters (the reference its gradients are tested against). ``block`` and
    ``bottleneck_channels`` must keep their defaults (``BasicBlockD``): the coupling functions
    are basic blocks' halves.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Sequence[int] | int,
        conv_op: type[nn.Module],
        kernel_sizes: Any,
        strides: Any,
        n_blocks_per_stage: Sequence[int] | int,
        num_classes: int,
        n_conv_per_stage_decoder: Sequence[int] | int,
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict[str, Any] | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict[str, Any] | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict[str, Any] | None = None,
        deep_supervision: bool = False,
        block: type[nn.Module] = BasicBlockD,
        bottleneck_channels: Any = None,
        stem_channels: int | None = None,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if block is not BasicBlockD or bottleneck_channels is not None:
            raise ValueError(
                f"{type(self).__name__} builds its couplings from basic residual blocks; got block={block!r}, "
                f"bottleneck_channels={bottleneck_channels!r} (expected BasicBlockD and None)"
            )
        ops = {
            "conv_bias": conv_bias,
            "norm_op": norm_op,
            "norm_op_kwargs": norm_op_kwargs,
            "dropout_op": dropout_op,
            "dropout_op_kwargs": dropout_op_kwargs,
            "nonlin": nonlin,
            "nonlin_kwargs": nonlin_kwargs,
        }
        self.encoder = ReversibleResidualEncoder(
            input_channels,
            n_stages,
            features_per_stage,
            conv_op,
            kernel_sizes,
            strides,
            n_blocks_per_stage,
            ops,
            stem_channels,
            memory_saving,
        )
        self.decoder = LeanUNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """nnU-Net's planner heuristic: the encoder's stored maps plus the decoder's."""
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(f"give the spatial size only (no batch or channel axis), got {tuple(input_size)}")
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size
        )

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's initialisation: He-normal convolutions, and every residual branch starting at zero.

        As nnU-Net zeroes the last norm of a basic block, the last norm of each coupling
        function is zeroed, so that each coupling starts as the identity.
        """
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
        if isinstance(module, AdditiveCoupling):
            for function in (module.f, module.g):
                for parameter in function[-1].parameters():
                    nn.init.zeros_(parameter)
