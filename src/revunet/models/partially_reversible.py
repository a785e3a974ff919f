"""Brügger et al.'s partially reversible U-Net, and the family built on its skeleton.

Each level's work is done by a reversible sequence of additive couplings, so inside a
level only the sequence's output is stored; the level transitions (max-pooling and a
1x1x1 convolution down, a 1x1x1 convolution and trilinear upsampling up) are ordinary
layers. With the defaults (channels 60..480, GroupNorm with 30 groups, one block per
sequence, additive skips) it has exactly the authors' 12,365,283 parameters
(18,248,403 with ``encoder_depth=2``).

The same class builds Pendse et al.'s reversible MBConv U-Net (``block="mbconv"``: MBConv
F/G in the encoder, residual F/G in the decoder) and, with instance normalisation,
concatenated skips and the VAE branch, the invertible-residual paper's Partially-InvRes
(see :mod:`revunet.models.invres_partial`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from revunet.models.blocks import NORMS, SegmentationHead, channel_list, check_spatial_size, coupling_blocks, make_norm
from revunet.models.lean_layers import add_into, max_pool3d_lean
from revunet.models.vae import SegmentationWithVAE, VAEBranch, attach_vae, run_vae
from revunet.reversible import ReversibleSequence

SKIPS = ("add", "concat")


class PartiallyReversibleUNet(nn.Module):
    """A U-Net whose levels are reversible sequences.

    Args:
        in_channels, out_channels: image modalities and output maps.
        channels: width per level, top first (Brügger: 60, 120, 240, 360, 480).
        encoder_depth, decoder_depth: coupling blocks per encoder / decoder sequence.
        groups: GroupNorm groups (30 in the paper; ``gcd(groups, width)`` is used).
        block: ``"residual"`` (Norm-LeakyReLU-Conv F/G) or ``"mbconv"`` (encoder only).
        expand_ratio: MBConv expansion.
        norm: ``"group"`` or ``"instance"``.
        skip: ``"add"`` (Brügger) or ``"concat"`` (3-D U-Net style, fused by a 1x1x1 conv).
        output: ``"sigmoid"`` (BraTS regions) or ``"softmax"`` (iSeg classes).
        memory_saving: False makes the plain-autograd twin with identical parameters.
        dropout: channel dropout inside F and G (replayed exactly in the recomputation).
        vae_input_size: training patch size; adds the VAE branch when given.
        latent_dim: VAE latent size.
        head_norm: normalise and activate (``norm``, LeakyReLU) before the 1x1x1 head. Not in
            the paper: its head reads the additive residual stream directly, whose scale grows
            in training; at the CPU demo's high learning rate that drives a region's logits to
            saturation (the channel "dies": every voxel on or off, no gradient back).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (60, 120, 240, 360, 480),
        encoder_depth: int = 1,
        decoder_depth: int = 1,
        groups: int = 30,
        block: str = "residual",
        expand_ratio: int = 2,
        norm: str = "group",
        skip: str = "add",
        output: str = "sigmoid",
        memory_saving: bool = True,
        dropout: float = 0.0,
        vae_input_size: Sequence[int] | None = None,
        latent_dim: int = 128,
        head_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = channel_list(channels)
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.in_channels = in_channels
        self.size_multiple = 2 ** (len(widths) - 1)
        self.skip = skip

        def sequence(width: int, depth: int, kind: str) -> ReversibleSequence:
            blocks = coupling_blocks(width, depth, kind, norm, groups, expand_ratio, dropout)
            return ReversibleSequence(blocks, memory_saving=memory_saving)

        self.stem = nn.Conv3d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.down = nn.ModuleList(nn.Conv3d(a, b, kernel_size=1) for a, b in zip(widths[:-1], widths[1:]))
        self.encoder = nn.ModuleList(sequence(w, encoder_depth, block) for w in widths)
        self.decoder = nn.ModuleList(sequence(w, decoder_depth, "residual") for w in widths)
        self.up = nn.ModuleList(nn.Conv3d(b, a, kernel_size=1) for a, b in zip(widths[:-1], widths[1:]))
        self.fuse = nn.ModuleList(nn.Conv3d(2 * a, a, kernel_size=1) for a in widths[:-1]) if skip == "concat" else None
        head_norm_layer = make_norm(norm, widths[0], groups) if head_norm else None
        self.head = SegmentationHead(widths[0], out_channels, output, head_norm_layer)
        self.vae = (
            VAEBranch(widths, vae_input_size, in_channels, latent_dim, norm, groups, memory_saving)
            if vae_input_size is not None
            else None
        )

    def _upsampled_part(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """With ``concat``, the fusion's upsampled part, applied before the interpolation.

        ``fuse(cat(upsample(up(h)), skip))`` is computed without the concatenation: the fusion's
        weight is split into its upsampled and skip parts, and the upsampled part is applied
        at the coarser resolution (a 1x1x1 convolution and a trilinear interpolation commute:
        one mixes channels per voxel, the other voxels per channel, and the interpolation keeps
        constants). The same function of the same parameters, but nothing at the finer
        resolution is stored for backward except the skip, which the encoder holds anyway
        (the concatenation and the interpolated map were three of the level's widths).
        """
        if self.fuse is None:
            return h
        return functional.conv3d(h, self.fuse[level].weight[:, : h.shape[1]])

    def _join(self, level: int, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The upsampled map plus the skip (``add``) or the skip's part of the fusion (``concat``).

        The sum is written into ``h``, the interpolation's output (:func:`add_into`).
        """
        if self.fuse is not None:
            skip = functional.conv3d(skip, self.fuse[level].weight[:, h.shape[1] :], self.fuse[level].bias)
        return add_into(h, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegmentationWithVAE:
        check_spatial_size(type(self).__name__, x, self.size_multiple, self.in_channels)
        image = x
        skips = []
        # Every sequence's input is a map made for it alone (in inference it is overwritten),
        # except the bottleneck's output, which the VAE reads first.
        h = self.encoder[0](self.stem(x), overwrite_input=True)
        for down, sequence in zip(self.down, self.encoder[1:]):
            skips.append(h)
            h = sequence(down(max_pool3d_lean(h)), overwrite_input=True)
        vae = run_vae(self.vae, image, h)  # before the decoder: see run_vae
        for level in range(len(self.decoder) - 1, 0, -1):
            h = self._upsampled_part(level - 1, self.up[level - 1](self.decoder[level](h, overwrite_input=True)))
            h = functional.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            # the skip is popped into the call: in inference nothing else holds it afterwards
            h = self._join(level - 1, h, skips.pop())
        logits = self.head(self.decoder[0](h, overwrite_input=True))
        return attach_vae(self.vae, logits, vae)
