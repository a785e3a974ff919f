"""An experiment's peak training memory, predicted before its job runs and measured while it runs.

``revunet memory --experiment`` predicts (fake tensors, any size on any machine) one steady-state
training step of the experiment exactly as its job runs it: its model, batch and patch (or the
whole volume padded to the model's size multiple), its loss and targets, its optimiser's state,
AMP as the job's device uses it (bfloat16 on CPU, float16 on CUDA) and gradients freed before
the step. ``measure_memory: true`` makes the training job measure the same quantity: on CPU the
live tensor bytes of its training steps under :class:`~revunet.memory.tracker.LiveTensorTracker`
(:class:`~revunet.memory.meter.StepMemoryMeter`)
(parameters, buffers, gradients, optimiser state and the batch counted from the start); on CUDA
``torch.cuda.max_memory_allocated()`` over the steps, which also sees kernel workspaces. The
smoke run puts the two side by side (:mod:`revunet.report.tables.smoke`).

Not in either figure: the data loader's worker processes, DDP's gradient buckets (allocated
when the wrapper is built) and, on CPU, the host copies of random states the reversible core
records.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from revunet.experiments.recipe import Experiment
from revunet.memory.accounting import MemoryReport, measure_training_step
from revunet.memory.meter import amp_dtype
from revunet.models.build import build_experiment_model
from revunet.models.sizing import padded_shape, size_multiple
from revunet.tasks import get_task
from revunet.training.setup import make_loss, make_optimizer  # the job's own loss and optimiser


def training_input_size(
    experiment: Experiment, model: nn.Module, volume_shape: Sequence[int] | None
) -> tuple[int, ...]:
    """The spatial size one training sample has: the patch, or the whole volume padded as the loader pads it."""
    if experiment.patch_size is not None:
        return tuple(experiment.patch_size)
    if volume_shape is None:
        raise ValueError(
            f"experiment {experiment.name!r} trains on whole volumes (patch_size null): "
            "give the preprocessed volume shape (--volume-shape D,H,W)"
        )
    return padded_shape(volume_shape, size_multiple(model))


def predict_training_peak(
    experiment: Experiment, volume_shape: Sequence[int] | None = None, mode: str = "fake", device_type: str = "cpu"
) -> MemoryReport:
    """The predicted peak of one training step of ``experiment`` (see the module docstring)."""
    with torch.device("meta"):
        model = build_experiment_model(experiment)
    size = training_input_size(experiment, model, volume_shape)
    task = get_task(experiment.task)
    batch = experiment.batch_size
    target = task.targets(torch.zeros((batch, *size), dtype=torch.uint8, device="meta"))
    return measure_training_step(
        model,
        (batch, task.in_channels, *size),
        mode=mode,
        optimizer=lambda params: make_optimizer(experiment, params),
        loss_fn=make_loss(experiment),
        target_shape=target.shape,
        target_dtype=target.dtype,
        autocast_dtype=amp_dtype(device_type) if experiment.amp else None,
        gradients_persist=False,
        loss_needs_input=True,
    )
