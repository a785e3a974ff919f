"""Segmentation losses of the three papers, as configuration of one combination.

- Brügger et al.: sum over WT, TC, ET of (1 − soft Dice) with smoothing 1, divided by 5
  as the authors' code scales it (sigmoid outputs).
- Invertible-residual paper: cross-entropy + Dice + 0.1·L2(reconstruction) + 0.1·KL.
- Pendse et al.: Dice.
- ``dice_bce`` (not from a paper): mean soft Dice + binary cross-entropy, for the CPU demo,
  whose few optimiser steps the Dice-only loss is too slow to use.

Models return logits; the losses apply the sigmoid or softmax, which is the same function as
a network ending in it, with the numerically stable logit forms for the cross-entropies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch.nn import functional

from revunet.models.vae import SegmentationWithVAE, kl_divergence, reconstruction_l2


def soft_dice_per_channel(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per channel, (2·Σpt + s)/(Σp + Σt + s), summed over the batch and all voxels.

    ``probabilities`` and ``target`` are (N, C, ...); returns a (C,) tensor.
    """
    if probabilities.shape != target.shape:
        raise ValueError(f"probabilities {tuple(probabilities.shape)} and target {tuple(target.shape)} differ in shape")
    dims = [0, *range(2, probabilities.dim())]
    target = target.to(probabilities.dtype)
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (2 * intersection + smooth) / (total + smooth)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, ...) integer classes → (N, classes, ...) float one-hot."""
    return functional.one_hot(labels.long(), classes).movedim(-1, 1).float()


@dataclass(frozen=True)
class SegmentationLoss:
    """Weighted sum of Dice, (binary) cross-entropy and the VAE terms.

    Args:
        output: ``"sigmoid"`` (targets are (N, R, ...) region masks) or ``"softmax"``
            (targets are (N, ...) class indices).
        dice, cross_entropy, reconstruction, kl: weights of the terms.
        dice_scale: factor on the summed per-channel Dice losses (Brügger: 1/5).
        smooth: Dice smoothing.
        dice_reduction: ``"sum"`` over channels (Brügger) or ``"mean"``.
    """

    output: str = "sigmoid"
    dice: float = 1.0
    cross_entropy: float = 0.0
    reconstruction: float = 0.0
    kl: float = 0.0
    dice_scale: float = 1.0
    smooth: float = 1.0
    dice_reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.output not in ("sigmoid", "softmax"):
            raise ValueError(f"loss output must be 'sigmoid' or 'softmax', got {self.output!r}")
        if self.dice_reduction not in ("sum", "mean"):
            raise ValueError(f"loss dice_reduction must be 'sum' or 'mean', got {self.dice_reduction!r}")
        # smooth 0 would make an empty target with an empty prediction 0/0
        if not self.smooth > 0:
            raise ValueError(f"loss smooth must be positive, got {self.smooth}")
        for name in ("dice", "cross_entropy", "reconstruction", "kl", "dice_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")

    def terms(
        self, output: torch.Tensor | SegmentationWithVAE, target: torch.Tensor, image: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each weighted term's unweighted value (only the terms with a non-zero weight)."""
        logits = output.logits if isinstance(output, SegmentationWithVAE) else output
        terms: dict[str, torch.Tensor] = {}
        if self.output == "sigmoid":
            probabilities = torch.sigmoid(logits)
            dense_target = target
        elif self.output == "softmax":
            probabilities = torch.softmax(logits, dim=1)
            dense_target = one_hot(target, logits.shape[1])
        else:
            raise ValueError(f"output must be 'sigmoid' or 'softmax', got {self.output!r}")
        if self.dice:
            per_channel = 1 - soft_dice_per_channel(probabilities.float(), dense_target, self.smooth)
            reduced = per_channel.sum() if self.dice_reduction == "sum" else per_channel.mean()
            terms["dice"] = self.dice_scale * reduced
        if self.cross_entropy:
            if self.output == "sigmoid":
                terms["cross_entropy"] = functional.binary_cross_entropy_with_logits(logits.float(), target.float())
            else:
                terms["cross_entropy"] = functional.cross_entropy(logits.float(), target.long())
        if (self.reconstruction or self.kl) and isinstance(output, SegmentationWithVAE):
            # A model without the branch (the invertible-residual paper's 3-D U-Net baseline)
            # returns bare logits and simply has no VAE terms.
            if output.reconstruction is None or output.mu is None or output.logvar is None:
                raise ValueError(
                    "the VAE terms need the VAE branch's outputs; it did not run (eval mode on another patch size)"
                )
            if self.reconstruction:
                if image is None:
                    raise ValueError("the reconstruction term needs the input image")
                terms["reconstruction"] = reconstruction_l2(output.reconstruction, image)
            if self.kl:
                terms["kl"] = kl_divergence(output.mu, output.logvar)
        return terms

    def __call__(
        self, output: torch.Tensor | SegmentationWithVAE, target: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.total(self.terms(output, target, image), target.device)

    def total(self, terms: Mapping[str, torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
        """The loss value from :meth:`terms`: each term times its weight (the field of the same name)."""
        return sum((getattr(self, name) * value for name, value in terms.items()), torch.zeros((), device=device))


def bruegger2019() -> SegmentationLoss:
    """Sum over WT, TC, ET of (1 − soft Dice), smoothing 1, divided by 5."""
    return SegmentationLoss("sigmoid", dice=1.0, dice_scale=0.2, dice_reduction="sum")


def invres2020(output: str = "softmax") -> SegmentationLoss:
    """Cross-entropy + Dice + 0.1·L2 + 0.1·KL."""
    return SegmentationLoss(output, dice=1.0, cross_entropy=1.0, reconstruction=0.1, kl=0.1)


def pendse2020() -> SegmentationLoss:
    """Soft Dice averaged over WT, TC, ET."""
    return SegmentationLoss("sigmoid", dice=1.0)


def dice_bce() -> SegmentationLoss:
    """Soft Dice averaged over WT, TC, ET plus their mean binary cross-entropy.

    Not a paper's loss: the cross-entropy gives every voxel a gradient from the first step,
    where the Dice of a near-empty prediction barely moves, so a short budget learns faster.
    """
    return SegmentationLoss("sigmoid", dice=1.0, cross_entropy=1.0)


def configured_loss(
    preset: SegmentationLoss, params: Mapping[str, Any], source: str = "loss_params"
) -> SegmentationLoss:
    """``preset`` with some of its fields replaced, e.g. ``{"smooth": 1e-5}``; unknown fields are named."""
    known = {f.name: f for f in fields(SegmentationLoss)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown loss field(s) {unknown}; known: {sorted(known)}")
    for name, value in params.items():
        expected = str if known[name].type == "str" else (int, float)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"{source}: {name} must be a {'string' if expected is str else 'number'}, got {value!r}")
    try:
        return replace(preset, **params)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


LOSSES: dict[str, Callable[..., SegmentationLoss]] = {
    "bruegger2019": bruegger2019,
    "invres2020": invres2020,
    "pendse2020": pendse2020,
    "dice_bce": dice_bce,
}
