"""The variational auto-encoder regularisation branch (Myronenko 2018), reusable by any U-Net.

From the bottleneck features it predicts the mean μ and log-variance log σ² of a global latent
vector, samples z = μ + σ·ε while training (z = μ in eval mode) and decodes z back to the
input's size and channels. The invertible-residual paper adds it to both of its networks and
trains with 0.1·L2(reconstruction, input) + 0.1·KL.

The latent is a dense vector, so the branch is built for one patch size: with another size
in eval mode (full-volume inference) it is skipped and the model returns the segmentation only;
in training mode another size is an error naming the size the branch was built for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

from revunet.models.blocks import make_norm
from revunet.models.lean_layers import LeanLeakyReLU, add_into

REDUCED_CHANNELS = 16  # Myronenko's "VD" block reduces the bottleneck to 16 channels


@dataclass
class SegmentationWithVAE:
    """What a model with a VAE branch returns.

    ``logits``: segmentation logits (N, classes, ...). The other fields are ``None`` when the
    branch did not run (eval mode on an input of another size than the branch was built for).
    """

    logits: torch.Tensor
    reconstruction: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The paper's KL term, mean(μ² + σ² − log σ² − 1), towards the standard normal prior."""
    return torch.mean(mu.float() ** 2 + logvar.float().exp() - logvar.float() - 1)


def reconstruction_l2(reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the VAE's reconstruction and the input image."""
    return functional.mse_loss(reconstruction.float(), image.float())


class _UpStage(nn.Sequential):
    """1x1x1 convolution to the next width, trilinear x2, then one residual pre-activation convolution."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, groups: int) -> None:
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, out_channels, kernel_size=1)
        self.refine = nn.Sequential(
            make_norm(norm, out_channels, groups, lean=True),
            LeanLeakyReLU(0.01),  # in place: the norm's backward needs its input, not its output
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.interpolate(self.reduce(x), scale_factor=2, mode="trilinear", align_corners=False)
        return add_into(self.refine(x), x)


class VAEBranch(nn.Module):
    """Bottleneck features -> (μ, log σ²) -> z -> reconstruction of the input.

    Args:
        channels: the U-Net's per-level widths, top level first; the branch reads the last
            (bottleneck) width and decodes back up through the others.
        input_size: spatial size of the training patches (e.g. (128, 128, 128)).
        image_channels: channels of the input image (the reconstruction's channels).
        latent_dim: size of z (Myronenko: 128).
        memory_saving: checkpoint each up stage (and the final 1x1x1 convolution with the last):
            only the stages' inputs are stored and one stage at a time is recomputed in backward.
            Its full-resolution maps dominate a reversible U-Net's peak otherwise (``revunet
            memory --table invres_brats``'s attribution); the gradients are the same.
    """

    def __init__(
        self,
        channels: Sequence[int],
        input_size: Sequence[int],
        image_channels: int,
        latent_dim: int = 128,
        norm: str = "group",
        groups: int = 8,
        memory_saving: bool = False,
    ) -> None:
        super().__init__()
        self.memory_saving = memory_saving
        self.input_size = tuple(int(s) for s in input_size)
        levels = len(channels)
        multiple = 2**levels  # the U-Net halves levels-1 times, the branch once more
        if len(self.input_size) != 3 or any(s % multiple for s in self.input_size):
            raise ValueError(
                f"the VAE branch needs a 3-D patch size divisible by {multiple} "
                f"({levels - 1} U-Net halvings and one of its own), got {input_size}"
            )
        self.latent_dim = latent_dim
        self.grid = tuple(s // multiple for s in self.input_size)
        flat = REDUCED_CHANNELS * math.prod(self.grid)
        bottom = channels[-1]
        self.reduce = nn.Sequential(
            make_norm(norm, bottom, groups),
            nn.LeakyReLU(0.01),
            nn.Conv3d(bottom, REDUCED_CHANNELS, kernel_size=3, stride=2, padding=1),
        )
        self.to_latent = nn.Linear(flat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        self.expand = _UpStage(REDUCED_CHANNELS, bottom, norm, groups)
        self.up = nn.ModuleList(
            _UpStage(wide, narrow, norm, groups) for wide, narrow in zip(channels[:0:-1], channels[-2::-1])
        )
        self.to_image = nn.Conv3d(channels[0], image_channels, kernel_size=1)

    def matches(self, image: torch.Tensor) -> bool:
        """Whether the branch can run on this input (it was built for one patch size)."""
        return tuple(image.shape[2:]) == self.input_size

    def forward(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (reconstruction, μ, log σ²)."""
        statistics = self.to_latent(self.reduce(bottleneck).flatten(1))
        mu, logvar = statistics.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        x = functional.leaky_relu(self.from_latent(z), 0.01).view(-1, REDUCED_CHANNELS, *self.grid)
        stages: list[nn.Module] = [self.expand, *self.up]
        for stage in stages[:-1]:
            x = self._run(stage, x)
        return self._run(nn.Sequential(stages[-1], self.to_image), x), mu, logvar

    def _run(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.memory_saving and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)


VAEOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


def run_vae(vae: VAEBranch | None, image: torch.Tensor, bottleneck: torch.Tensor) -> VAEOutputs:
    """The branch's (reconstruction, μ, log σ²), or None without a branch or on another size in eval mode.

    Models call it right after their encoder, before the decoder: autograd then runs the
    decoder's backward first (later nodes first), so the branch's checkpointed stages are
    recomputed after the decoder's stored activations are freed.
    """
    if vae is None:
        return None
    if not vae.matches(image):
        if vae.training:
            raise ValueError(
                f"the VAE branch was built for patches of size {vae.input_size}; got an input of size "
                f"{tuple(image.shape[2:])} in training mode (set vae_input_size to the training patch size)"
            )
        return None
    return vae(bottleneck)


def attach_vae(vae: VAEBranch | None, logits: torch.Tensor, outputs: VAEOutputs) -> torch.Tensor | SegmentationWithVAE:
    """The model's return value: bare logits without a branch, else logits with the branch's outputs."""
    if vae is None:
        return logits
    if outputs is None:
        return SegmentationWithVAE(logits)
    return SegmentationWithVAE(logits, *outputs)
