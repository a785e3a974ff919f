"""The loss presets compute the formulas their docstrings promise."""

from __future__ import annotations

import pytest
import torch

from revunet.experiments.recipe import Experiment
from revunet.training.errors import TrainError
from revunet.training.losses import LOSSES
from revunet.training.setup import make_loss


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=generator) * 3
    target = (torch.rand(2, 3, 4, 5, 6, generator=generator) > 0.7).float()
    return logits, target


def _soft_dice_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per channel, pooled over batch and voxels, smoothing 1, written out by hand."""
    p = 1 / (1 + torch.exp(-logits.double()))
    t = target.double()
    losses = []
    for channel in range(p.shape[1]):
        pc, tc = p[:, channel], t[:, channel]
        losses.append(1 - (2 * (pc * tc).sum() + 1) / (pc.sum() + tc.sum() + 1))
    return torch.stack(losses)


def test_dice_bce_is_mean_dice_loss_plus_mean_binary_cross_entropy():
    logits, target = _example()
    p = 1 / (1 + torch.exp(-logits.double()))
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    expected = _soft_dice_losses(logits, target).mean() + bce
    assert float(LOSSES["dice_bce"]()(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_bruegger2019_is_the_summed_dice_loss_over_five():
    logits, target = _example()
    expected = _soft_dice_losses(logits, target).sum() / 5
    assert float(LOSSES["bruegger2019"]()(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_dice_bce_rewards_the_right_answer_and_penalises_the_opposite():
    _, target = _example()
    confident_right = (target * 2 - 1) * 20
    loss = LOSSES["dice_bce"]()
    assert float(loss(confident_right, target)) < 1e-3
    assert float(loss(-confident_right, target)) > 10  # BCE of confident mistakes, plus a Dice loss near 1


def test_dice_bce_gives_gradient_where_dice_alone_is_flat():
    """With a near-empty prediction on background voxels, the Dice gradient almost vanishes; BCE's does not."""
    target = torch.zeros(1, 3, 4, 4, 4)
    target[:, :, :2] = 1
    logits = torch.full_like(target, -8.0, requires_grad=True)  # predicts nothing, sigmoid ~ 3e-4
    LOSSES["pendse2020"]()(logits, target).backward()
    dice_only = logits.grad.abs().sum().item()
    logits.grad = None
    LOSSES["dice_bce"]()(logits, target).backward()
    assert logits.grad.abs().sum().item() > 10 * dice_only


def test_training_accepts_dice_bce_for_brats():
    experiment = Experiment.from_dict(
        {"name": "demo", "task": "brats", "model": "partially_reversible", "loss": "dice_bce"}
    )
    loss = make_loss(experiment)
    assert loss.output == "sigmoid" and loss.dice == 1.0 and loss.cross_entropy == 1.0


def test_loss_params_override_the_preset_and_bad_ones_are_named():
    experiment = Experiment.from_dict(
        {
            "name": "e",
            "task": "brats",
            "model": "partially_reversible",
            "loss": "bruegger2019",
            "loss_params": {"smooth": 1e-5},
        }
    )
    loss = make_loss(experiment)
    assert (loss.smooth, loss.dice_scale, loss.dice_reduction) == (1e-5, 0.2, "sum")
    # an empty target channel: smoothing 1 pulls the prediction towards zero, 1e-5 leaves it almost alone
    target = torch.zeros(1, 3, 4, 4, 4)
    target[:, :2, :2] = 1
    gradients = []
    for smooth in (1.0, 1e-5):
        logits = torch.zeros_like(target, requires_grad=True)
        make_loss(experiment.replace(loss_params={"smooth": smooth}))(logits, target).backward()
        gradients.append(logits.grad[:, 2].abs().sum().item())
    assert gradients[0] > 1e3 * gradients[1]
    for params, message in (
        ({"smoth": 1.0}, r"unknown loss field\(s\) \['smoth'\]"),
        ({"smooth": 0}, "smooth must be positive"),
        ({"smooth": "1"}, "smooth must be a number"),
        ({"dice_reduction": "max"}, "dice_reduction must be 'sum' or 'mean'"),
    ):
        with pytest.raises(TrainError, match=r"experiment 'e': loss_params: .*" + message):
            make_loss(experiment.replace(loss_params=params))
