"""CUDA's autocast dtypes on a CPU measurement: the operations whose lists differ, and the bytes they save."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn import functional

from revunet.memory.accounting import measure_training_step
from revunet.memory.autocast_policy import CudaAutocastPolicy


def test_operations_take_cudas_dtypes_and_the_rest_cpus() -> None:
    with FakeTensorMode():
        x = torch.randn(1, 4, 8, 8, 8, dtype=torch.float16)
        weight = torch.ones(4)
        with torch.autocast("cpu", dtype=torch.float16):
            cpu = [functional.avg_pool3d(x, 2).dtype, functional.group_norm(x, 2, weight, weight).dtype]
            with CudaAutocastPolicy():
                pooled = nn.AvgPool3d(2)(x)
                grouped = functional.group_norm(x, 2, weight, weight)
                summed = torch.softmax(x, 1).sum()
                convolved = functional.conv3d(x.float(), torch.ones(4, 4, 3, 3, 3))
                instance = functional.instance_norm(x, weight=weight, bias=weight)
        outside = functional.group_norm(x, 2, weight, weight)  # no autocast: the mode changes nothing
    assert cpu == [torch.float32, torch.float16]  # what CPU autocast does: the lists differ here
    assert pooled.dtype == torch.float16  # CUDA pools in the input's dtype
    assert grouped.dtype == summed.dtype == torch.float32  # CUDA normalises and sums in float32
    assert convolved.dtype == instance.dtype == torch.float16  # both lists agree
    assert outside.dtype == torch.float16


def test_the_cuda_policy_saves_pooling_inputs_in_half_precision() -> None:
    """CPU autocast saves a float32 copy of a half-precision pooling input; CUDA's keeps the input itself."""
    net = nn.Sequential(nn.Conv3d(4, 16, 3, padding=1), nn.AvgPool3d(2), nn.Conv3d(16, 4, 1))
    shape = (2, 4, 64, 64, 64)
    peaks = {
        policy: measure_training_step(net, shape, autocast_dtype=torch.float16, autocast_policy=policy).peak_bytes
        for policy in ("cpu", "cuda")
    }
    pooled_input_float32 = 2 * 16 * 64**3 * 4
    assert peaks["cpu"] - peaks["cuda"] >= pooled_input_float32 // 2
    with pytest.raises(ValueError, match="autocast_policy must be one of"):
        measure_training_step(net, shape, autocast_policy="tpu")
