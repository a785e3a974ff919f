"""Partially-InvRes (the invertible-residual paper): a 3-D U-Net whose levels are invertible.

The paper puts additive-coupling invertible residual blocks inside every encoder and decoder
level, keeps max-pooling and interpolation between levels (not invertible) and adds the VAE
regularisation branch. It gives no widths or depths. Our choices, and why:

- the skeleton of :class:`~revunet.models.partially_reversible.PartiallyReversibleUNet` with
  instance normalisation and LeakyReLU (the paper's 3-D U-Net uses both);
- skips concatenated and fused by a 1x1x1 convolution, as in the 3-D U-Net it extends
  (computed without materialising the concatenation, see
  ``PartiallyReversibleUNet._upsampled_part``);
- the VAE branch checkpointed in the memory-saving model (see :class:`~revunet.models.vae.VAEBranch`);
- four levels like Çiçek's U-Net and one coupling block per encoder and decoder level;
- widths (36, 72, 144, 288): the segmentation network then has 3.14 M parameters, within
  ±10 % of :mod:`revunet.models.unet3d` (3.15 M) and :mod:`revunet.models.invres_full` (3.19 M).
  A coupling block at width C holds half the weights of two plain convolutions at C, so equal
  widths would make the reversible networks half the size and flatter their memory figures.
  The VAE branch is not counted in this comparison: the baseline has none and inference drops
  it; its size (its dense layers grow with the patch) is listed by ``revunet models``.
"""

from __future__ import annotations

from collections.abc import Sequence

from revunet.models.partially_reversible import PartiallyReversibleUNet

INVRES_PARTIAL_CHANNELS = (36, 72, 144, 288)


def invres_partial(
    in_channels: int = 4,
    out_channels: int = 3,
    channels: Sequence[int] = INVRES_PARTIAL_CHANNELS,
    encoder_depth: int = 1,
    decoder_depth: int = 1,
    output: str = "sigmoid",
    memory_saving: bool = True,
    vae_input_size: Sequence[int] | None = (128, 128, 128),
    latent_dim: int = 128,
    dropout: float = 0.0,
) -> PartiallyReversibleUNet:
    """Partially-InvRes; ``vae_input_size=None`` drops the VAE branch."""
    return PartiallyReversibleUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        encoder_depth=encoder_depth,
        decoder_depth=decoder_depth,
        norm="instance",
        skip="concat",
        output=output,
        memory_saving=memory_saving,
        dropout=dropout,
        vae_input_size=vae_input_size,
        latent_dim=latent_dim,
    )
