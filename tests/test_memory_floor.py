"""The memory floor: its parts by hand on small networks, and the measured peak never below it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from revunet.memory.accounting import measure_training_step, sum_of_outputs
from revunet.memory.floor import step_floor
from revunet.models.blocks import residual_coupling_sequence

FLOAT32 = 4


def squares(output: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient is a full map (a sum's is one broadcast number)."""
    return output.square().sum()


def test_floor_parts_of_two_convolutions_by_hand():
    """conv(1->4) -> conv(4->1): the second keeps its 4-channel input; the batch and Adam's state persist."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 1), nn.Conv3d(4, 1, 1))
    voxels = 8**3
    floor = step_floor(model, (1, 1, 8, 8, 8), squares)
    params = sum(p.numel() for p in model.parameters()) * FLOAT32
    adam = 2 * params + 4 * FLOAT32  # two moments, and one float32 step per parameter tensor
    assert floor.persistent == params + adam + voxels * FLOAT32  # and the batch (gradients are freed)
    assert floor.kept == 4 * voxels * FLOAT32 + voxels * FLOAT32  # and the output, which square() saves
    measured = measure_training_step(model, (1, 1, 8, 8, 8), mode="cpu", loss_fn=squares)
    assert floor.total <= measured.peak_bytes


@pytest.mark.parametrize("depth", [1, 4])
def test_memory_saving_floor_counts_no_coupling_activation_and_the_peak_meets_it(depth):
    """Between two layers a memory-saving sequence keeps nothing of its own: the kept part is what the
    layers around it save, whatever the depth, and the measured peak is within 30 % of the floor."""
    torch.manual_seed(0)
    shape = (1, 2, 16, 16, 16)
    model = nn.Sequential(nn.Conv3d(2, 16, 1), residual_coupling_sequence(16, depth, 4), nn.Conv3d(16, 2, 1))
    floor = step_floor(model, shape, sum_of_outputs)
    assert floor.kept == 16 * 16**3 * FLOAT32  # the last convolution's input, the sequence's output
    assert "NormActConv3d" in floor.largest_op_name  # the peak is a coupling's recomputation
    measured = measure_training_step(model, shape, mode="cpu")
    assert floor.total <= measured.peak_bytes <= 1.3 * floor.total


def test_twin_floor_keeps_every_block():
    torch.manual_seed(0)
    shape = (1, 2, 16, 16, 16)
    kept = {}
    for depth in (1, 3):
        twin = nn.Sequential(
            nn.Conv3d(2, 16, 1), residual_coupling_sequence(16, depth, 4, memory_saving=False), nn.Conv3d(16, 2, 1)
        )
        kept[depth] = step_floor(twin, shape, sum_of_outputs).kept
    assert kept[3] - kept[1] >= 2 * 16 * 16**3 * FLOAT32  # each block's F and G save their maps
