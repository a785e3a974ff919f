"""Fully-InvRes (the invertible-residual paper): invertible down- and upsampling as well.

Between levels the resolution changes by a learnable invertible squeeze (3-D pixel shuffle:
C x S³ -> 8C x (S/2)³, followed by a learnable orthogonal channel mixing). At every encoder
level the feature map is split along channels: one part is squeezed down to the next level,
the other goes to the decoder as the skip. The decoder un-squeezes (the inverse of its own
learnable squeeze) and joins the result with the skip. Every operation from input to
bottleneck and skips is invertible, so the input can be rebuilt from the encoder's outputs
(:meth:`FullyInvertibleUNet.invert_encoder`); the VAE branch regularises as in Partially-InvRes.

Choices the paper leaves open, and why:
- The input's few channels are lifted to the first width by zero channels (an injective,
  trivially invertible padding as in i-RevNet) rather than a convolution, which would
  break invertibility. The modalities are shared between the two coupling halves, so that
  the first block's F does not start from an all-zero half.
- A level of width C sends C/4 channels down and keeps 3C/4 as the skip, so the squeezed part
  has 8·C/4 = 2C channels: widths double per level as in a U-Net.
- Four levels, one coupling block per encoder and decoder level, instance normalisation.
- Widths (36, 72, 144, 288), the same as Partially-InvRes: 3.19 M parameters without the VAE
  branch, within ±10 % of the 3-D U-Net's 3.15 M (see :mod:`revunet.models.invres_partial`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from revunet.models.blocks import SegmentationHead, channel_list, check_spatial_size, coupling_blocks
from revunet.models.vae import SegmentationWithVAE, VAEBranch, attach_vae, run_vae
from revunet.reversible import Inverted, LearnableSqueeze3d, ReversibleSequence

INVRES_FULL_CHANNELS = (36, 72, 144, 288)


def _down_channels(widths: tuple[int, ...]) -> list[int]:
    """Channels each level sends down: the next width / 8 (a squeeze multiplies channels by 8)."""
    down = []
    for level, (width, below) in enumerate(zip(widths[:-1], widths[1:])):
        if below % 8 or not 0 < below // 8 < width:
            raise ValueError(
                f"channels {list(widths)}: level {level + 1}'s width ({below}) must be 8 times the part "
                f"squeezed down from level {level} (width {width}), i.e. a multiple of 8 below {8 * width}"
            )
        down.append(below // 8)
    return down


class FullyInvertibleUNet(nn.Module):
    """Fully-InvRes: an invertible encoder (channel padding, couplings, learnable squeezes) and decoder.

    Args:
        in_channels, out_channels: image modalities and output maps.
        channels: widths per level, top first; each width below the top must be a multiple of 8.
        encoder_depth, decoder_depth: coupling blocks per sequence.
        norm: ``"instance"`` (the paper) or ``"group"``.
        output: ``"sigmoid"`` or ``"softmax"``.
        memory_saving: False makes the plain-autograd twin with identical parameters.
        vae_input_size: training patch size; adds the VAE branch when given.
        squeeze_init: ``"random"`` or ``"identity"`` start for the learnable squeezes' channel mixing.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = INVRES_FULL_CHANNELS,
        encoder_depth: int = 1,
        decoder_depth: int = 1,
        norm: str = "instance",
        groups: int = 8,
        output: str = "sigmoid",
        memory_saving: bool = True,
        dropout: float = 0.0,
        vae_input_size: Sequence[int] | None = (128, 128, 128),
        latent_dim: int = 128,
        squeeze_init: str = "random",
    ) -> None:
        super().__init__()
        widths = channel_list(channels)
        if widths[0] % 2 or widths[0] // 2 < (in_channels + 1) // 2:
            raise ValueError(
                f"the first width ({widths[0]}) must be even and hold the {in_channels} input channels "
                f"split between its two coupling halves"
            )
        self.in_channels = in_channels
        self.widths = widths
        self.down_channels = _down_channels(widths)
        self.size_multiple = 2 ** (len(widths) - 1)

        def blocks(width: int, depth: int) -> list[nn.Module]:
            return list(coupling_blocks(width, depth, "residual", norm, groups, dropout=dropout))

        encoder = [blocks(widths[0], encoder_depth)]
        decoder = [blocks(widths[0], decoder_depth)]
        for width, down in zip(widths[1:], self.down_channels):
            encoder.append([LearnableSqueeze3d(down, init=squeeze_init), *blocks(width, encoder_depth)])
            decoder.append([*blocks(width, decoder_depth), Inverted(LearnableSqueeze3d(down, init=squeeze_init))])
        self.encoder = nn.ModuleList(ReversibleSequence(b, memory_saving=memory_saving) for b in encoder)
        self.decoder = nn.ModuleList(ReversibleSequence(b, memory_saving=memory_saving) for b in decoder)
        self.head = SegmentationHead(widths[0], out_channels, output)
        self.vae = (
            VAEBranch(widths, vae_input_size, in_channels, latent_dim, norm, groups, memory_saving)
            if vae_input_size
            else None
        )

    def _lift(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the modalities to the first width, half of them in each coupling half."""
        half, first = self.widths[0] // 2, (self.in_channels + 1) // 2
        pad_first = (0, 0, 0, 0, 0, 0, 0, half - first)
        pad_second = (0, 0, 0, 0, 0, 0, 0, self.widths[0] - half - (self.in_channels - first))
        return torch.cat((functional.pad(x[:, :first], pad_first), functional.pad(x[:, first:], pad_second)), dim=1)

    def _unlift(self, h: torch.Tensor) -> torch.Tensor:
        half, first = self.widths[0] // 2, (self.in_channels + 1) // 2
        return torch.cat((h[:, :first], h[:, half : half + self.in_channels - first]), dim=1)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skips (top level first) and the bottleneck: together they determine ``x`` exactly."""
        h = self._lift(x)
        skips = []
        for level, sequence in enumerate(self.encoder):
            h = sequence(h)
            if level < len(self.down_channels):
                skip, h = torch.split(h, [h.shape[1] - self.down_channels[level], self.down_channels[level]], dim=1)
                skips.append(skip)
        return skips, h

    @torch.no_grad()
    def invert_encoder(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        """Rebuild the input from :meth:`encode`'s outputs (the encoder path is invertible)."""
        h = bottleneck
        for level in range(len(self.encoder) - 1, -1, -1):
            h = self.encoder[level].inverse(h)
            if level:
                h = torch.cat((skips[level - 1], h), dim=1)
        return self._unlift(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegmentationWithVAE:
        check_spatial_size(type(self).__name__, x, self.size_multiple, self.in_channels)
        skips, bottleneck = self.encode(x)
        vae = run_vae(self.vae, x, bottleneck)  # before the decoder: see run_vae
        h = bottleneck
        for level in range(len(self.decoder) - 1, 0, -1):
            h = torch.cat((skips[level - 1], self.decoder[level](h)), dim=1)
        logits = self.head(self.decoder[0](h))
        return attach_vae(self.vae, logits, vae)
