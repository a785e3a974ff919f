"""Fully-InvRes (the invertible-residual paper): invertible down- and upsampling as well.

Between levels the resolution changes by a learnable invertible squeeze (3-D pixel shuffle:
C x S³ -> 8C x (S/2)³, followed by a learnable orthogonal channel mixing). At every encoder
level the feature map is split along channels: one part is squeezed down to the next level,
the other goes to the decoder as the skip. The decoder un-squeezes (the inverse of its own
learnable squeeze) and joins the result with the skip. Every operation from the lifted input
to the head's input is invertible (:meth:`FullyInvertibleUNet.invert`; the encoder alone:
:meth:`~FullyInvertibleUNet.invert_encoder`), so the whole U-Net runs as one memory-saving
node (:func:`revunet.reversible.unet.invertible_unet`, as iUNets do): the forward keeps its
output only, the backward rebuilds every level, skips included, by inverting. The
non-invertible parts read the node's outputs: the head its output, the VAE branch (which
regularises as in Partially-InvRes, checkpointed) its bottleneck.

Choices the paper leaves open, and why:
- The input's few channels are lifted to the first width by repeating them (injective, and
  inverted by keeping the first copies) rather than a convolution, which would break
  invertibility. The modalities are shared between the two coupling halves, so that the
  first block's F does not start from a constant half. Not zero channels (i-RevNet's padding):
  instance normalisation maps a zero channel to its bias exactly, and at a zero bias the
  following LeakyReLU's kink makes the gradient depend on the rounding of the channel's
  reconstruction in backward.
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

from revunet.models.blocks import SegmentationHead, channel_list, check_spatial_size, coupling_blocks
from revunet.models.vae import SegmentationWithVAE, VAEBranch, attach_vae, run_vae
from revunet.reversible import Inverted, LearnableSqueeze3d, ReversibleSequence
from revunet.reversible.unet import UNetPath, invertible_unet

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


def _tiled(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x``'s channels repeated cyclically to ``channels`` (its first channels come first)."""
    repeats = -(-channels // x.shape[1])
    return x.repeat(1, repeats, *[1] * (x.dim() - 2))[:, :channels]


class FullyInvertibleUNet(nn.Module):
    """Fully-InvRes: an invertible encoder (channel padding, couplings, learnable squeezes) and decoder.

    Args:
        in_channels, out_channels: image modalities and output maps.
        channels: widths per level, top first; each width below the top must be a multiple of 8.
        encoder_depth, decoder_depth: coupling blocks per sequence.
        norm: ``"instance"`` (the paper) or ``"group"``.
        output: ``"sigmoid"`` or ``"softmax"``.
        memory_saving: False makes the plain-autograd twin with identical parameters (the level
            sequences are containers either way: the U-Net is one node or plain autograd).
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
        # The levels are containers: the U-Net runs them as one memory-saving node (see forward).
        self.encoder = nn.ModuleList(ReversibleSequence(b, memory_saving=False) for b in encoder)
        self.decoder = nn.ModuleList(ReversibleSequence(b, memory_saving=False) for b in decoder)
        self.memory_saving = memory_saving
        self.head = SegmentationHead(widths[0], out_channels, output)
        self.vae = (
            VAEBranch(widths, vae_input_size, in_channels, latent_dim, norm, groups, memory_saving)
            if vae_input_size
            else None
        )

    def _lift(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat the modalities up to the first width, half of them in each coupling half."""
        half, first = self.widths[0] // 2, (self.in_channels + 1) // 2
        halves = (x[:, :first], x[:, first:] if self.in_channels > first else x)
        sizes = (half, self.widths[0] - half)
        return torch.cat([_tiled(part, size) for part, size in zip(halves, sizes)], dim=1)

    def _unlift(self, h: torch.Tensor) -> torch.Tensor:
        half, first = self.widths[0] // 2, (self.in_channels + 1) // 2
        return torch.cat((h[:, :first], h[:, half : half + self.in_channels - first]), dim=1)

    @property
    def path(self) -> UNetPath:
        return UNetPath(list(self.encoder), list(self.decoder), self.down_channels)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skips (top level first) and the bottleneck: together they determine ``x`` exactly."""
        return self.path.encode(self._lift(x))

    @torch.no_grad()
    def invert_encoder(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        """Rebuild the input from :meth:`encode`'s outputs (the encoder path is invertible)."""
        return self._unlift(self.path.invert_encoder(skips, bottleneck))

    @torch.no_grad()
    def invert(self, features: torch.Tensor) -> torch.Tensor:
        """Rebuild the input from the invertible part's output (the head's input): the whole U-Net inverted."""
        return self._unlift(self.path.invert_encoder(*self.path.invert_decoder(features)))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The invertible part's output (the head's input) and its bottleneck."""
        check_spatial_size(type(self).__name__, x, self.size_multiple, self.in_channels)
        return invertible_unet(self.path, self._lift(x), self.memory_saving)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegmentationWithVAE:
        features, bottleneck = self.features(x)
        logits = self.head(features)
        # After the head: autograd runs the branch's backward first (later nodes first), its
        # checkpointed stages recomputed before the head's gradient reaches the U-Net.
        return attach_vae(self.vae, logits, run_vae(self.vae, x, bottleneck))
