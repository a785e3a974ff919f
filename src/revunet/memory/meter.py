"""What a training job measures of its own memory (``measure_memory: true``), and its AMP dtype.

Kept apart from :mod:`revunet.memory.experiment_peak`, which predicts the same peak by building
the job's loss and optimiser (:mod:`revunet.training.setup`): training imports this module, the
prediction imports training, and no import goes the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from revunet.memory.accounting import existing_tensors
from revunet.memory.tracker import LiveTensorTracker

# The ``memory_source`` a job records beside its measured peak.
TRACKER_SOURCE = "live_tensor_tracker"
CUDA_SOURCE = "cuda_max_memory_allocated"


def amp_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of an ``amp: true`` job on this device type (training uses the same)."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


class StepMemoryMeter:
    """The peak memory of training steps in a job (``measure_memory: true``), since the last :meth:`reset`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    def reset(self) -> None:
        self.peak_bytes = 0

    @contextlib.contextmanager
    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: list[torch.Tensor]) -> Iterator[None]:
        """Measure one optimiser step run inside; what exists before it (``batch`` included) counts from the start."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
            return
        tracker = LiveTensorTracker()
        for tensor in [*existing_tensors(model, optimizer), *batch]:
            tracker.add(tensor)
        with tracker:
            yield
        self.peak_bytes = max(self.peak_bytes, tracker.peak)
