"""Assembling a training run from an experiment and its inputs: datasets, model, loss, optimiser, loader.

The recipe comes from the :class:`~revunet.experiments.recipe.Experiment`: registry model, loss preset,
optimiser (``adam``, ``adamw``, or ``sgd`` with momentum 0.9), learning rate multiplied by
``gamma`` after each epoch listed in ``milestones`` (``MultiStepLR``: with milestone 250 the
251st epoch runs at the reduced rate), patches or whole volumes, batch size, gradient
accumulation, augmentation preset and early stopping.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from revunet.data.augment import Augmentation, AugmentationConfig
from revunet.data.dataset import PatchDataset
from revunet.data.splits import read_split
from revunet.experiments.recipe import Experiment
from revunet.memory.meter import StepMemoryMeter, amp_dtype
from revunet.models.build import build_experiment_model
from revunet.models.compiled import compile_blocks
from revunet.models.sizing import head_outputs, pad_to, padded_shape, size_multiple
from revunet.tasks import get_task
from revunet.training.distributed import Processes
from revunet.training.errors import TrainError
from revunet.training.interruption import ignore_stop_signals
from revunet.training.losses import LOSSES, SegmentationLoss, configured_loss
from revunet.training.randomness import ShardedOrder, seed_everything
from revunet.training.state import TrainingState


@dataclass
class Run:
    """Everything the epochs need, assembled once."""

    experiment: Experiment
    model: nn.Module  # the bare model
    trained: nn.Module  # the model or its DDP wrapper
    loss: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    loader: DataLoader
    sampler: ShardedOrder
    train_set: PatchDataset
    validation: PatchDataset | None  # the split's validation part (None: nothing is selected)
    device: torch.device
    processes: Processes
    autocast: Callable[[], contextlib.AbstractContextManager]
    out: Path
    progress: bool
    memory: StepMemoryMeter | None = None  # measure_memory: true (revunet.memory.meter)
    validation_seconds: float | None = None  # the last validation's wall time (log.csv)

    def steps_per_epoch(self) -> int:
        batches = math.ceil(self.sampler.per_rank / self.experiment.batch_size)
        steps = math.ceil(batches / self.experiment.accumulation)
        cap = self.experiment.max_steps_per_epoch
        return steps if cap is None else min(steps, cap)


def make_loss(experiment: Experiment) -> SegmentationLoss:
    """The experiment's loss preset with its ``loss_params``; the invertible-residual one follows the model's output."""
    if experiment.loss not in LOSSES:
        raise TrainError(
            f"experiment {experiment.name!r}: unknown loss {experiment.loss!r}; choose one of {sorted(LOSSES)}"
        )
    if experiment.loss == "invres2020":
        preset = LOSSES["invres2020"](output=experiment.model_params.get("output", "sigmoid"))
    else:
        preset = LOSSES[experiment.loss]()
    try:
        return configured_loss(preset, experiment.loss_params, f"experiment {experiment.name!r}: loss_params")
    except ValueError as error:
        raise TrainError(str(error)) from None


def check_compatible(
    experiment: Experiment, loss: SegmentationLoss, model: nn.Module, datasets: list[PatchDataset], preprocessed: Path
) -> None:
    """The task, the loss, the model and the preprocessed cases must agree (outputs, channels, task)."""
    needed = get_task(experiment.task).output
    if loss.output != needed:
        raise TrainError(
            f"experiment {experiment.name!r}: task {experiment.task} needs {needed} outputs, "
            f"but loss {experiment.loss!r} is built for {loss.output} (set model_params.output)"
        )
    tasks = {dataset.task for dataset in datasets}
    if tasks != {experiment.task}:
        raise TrainError(
            f"experiment {experiment.name!r} is for task {experiment.task!r} but the preprocessed cases in "
            f"{preprocessed} are {sorted(tasks)}"
        )
    channels = datasets[0].channels
    model_channels = getattr(model, "in_channels", channels)
    if model_channels != channels:
        raise TrainError(
            f"model {experiment.model!r} takes {model_channels} input channels but the {experiment.task} cases "
            f"in {preprocessed} have {channels}"
        )
    outputs = head_outputs(model)
    if outputs and outputs != {loss.output}:
        raise TrainError(
            f"experiment {experiment.name!r}: the model ends in {', '.join(sorted(outputs))} "
            f"but the loss expects {loss.output}"
        )


# Bytes of decoded volumes each data-loader process may keep: a patch-trained experiment that
# draws several patches per volume (iSeg: 1024 per subject per epoch, in a shuffled order) must
# not decode a ~60 MB volume for each of them.
VOLUME_CACHE_BYTES = 2 * 2**30


def volume_cache_size(dataset: PatchDataset) -> int:
    """How many decoded volumes ``dataset`` keeps per process: all of them when several samples are
    drawn from each and they fit in :data:`VOLUME_CACHE_BYTES` (else as many as fit), none otherwise."""
    if dataset.samples_per_volume <= 1:
        return 0
    largest = max(math.prod(meta.shape) for meta in dataset.metas.values())
    volume_bytes = largest * (4 * dataset.channels + 1)  # float32 image, uint8-sized label at least
    return min(len(dataset.case_ids), VOLUME_CACHE_BYTES // volume_bytes)


def read_datasets(
    experiment: Experiment, preprocessed: Path, split_path: Path
) -> tuple[PatchDataset, PatchDataset | None]:
    """The training patches and the validation part's whole volumes (None when the split selects
    nothing). The split's test part is never read here: it is for inference and the tables."""
    try:
        parts = read_split(split_path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainError(str(error)) from None
    if not parts.train:
        raise TrainError(f"{split_path}: the split has no training cases")
    if experiment.patience is not None and not parts.validation:
        raise TrainError(
            f"{split_path}: experiment {experiment.name!r} stops early (patience {experiment.patience}) "
            "but the split has no validation part to stop on"
        )
    if not preprocessed.is_dir():
        raise TrainError(f"no preprocessed folder at {preprocessed}")
    augmentation = experiment.augmentation
    augment = None if augmentation == "none" else Augmentation(AugmentationConfig.preset(augmentation))
    try:
        train_set = PatchDataset(
            preprocessed, parts.train, experiment.patch_size, augment, experiment.samples_per_volume, experiment.seed
        )
        train_set.cache_size = volume_cache_size(train_set)
        validation = None
        if parts.validation:
            validation = PatchDataset(preprocessed, parts.validation, None, None, 1, experiment.seed)
    except (FileNotFoundError, ValueError) as error:
        raise TrainError(f"{preprocessed}: {error}") from None
    return train_set, validation


def make_optimizer(experiment: Experiment, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The experiment's optimiser over ``params`` (a model's; `revunet memory --experiment` builds it too)."""
    lr, decay = experiment.lr, experiment.weight_decay
    if experiment.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if experiment.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)


def collate(items: list[dict[str, Any]], multiple: int) -> dict[str, torch.Tensor]:
    """Stack samples, zero-padding (image 0, label background) to a common multiple of ``multiple``."""
    shape = padded_shape(np.max([item["image"].shape[1:] for item in items], axis=0), multiple)
    return {
        "image": torch.stack([pad_to(item["image"], shape) for item in items]),
        "label": torch.stack([pad_to(item["label"], shape) for item in items]),
    }


def make_loader(
    experiment: Experiment, train_set: PatchDataset, multiple: int, device: torch.device, processes: Processes
) -> DataLoader:
    """This process's batches of training samples, in the seeded per-epoch order (:class:`ShardedOrder`).

    The loader draws its workers' base seed from its own generator, not torch's global one, so
    starting an epoch's iterator (again, after an interruption) leaves dropout's random stream alone;
    the samples themselves are seeded by (seed, epoch, index) (:mod:`revunet.data.dataset`).
    """
    sampler = ShardedOrder(len(train_set), experiment.seed, processes.rank, processes.world_size)
    return DataLoader(
        train_set,
        batch_size=experiment.batch_size,
        sampler=sampler,
        num_workers=experiment.num_workers,
        collate_fn=partial(collate, multiple=multiple),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(experiment.seed),
        worker_init_fn=ignore_stop_signals,
    )


def _seeded_model(experiment: Experiment, device: torch.device) -> nn.Module:
    """The experiment's untrained model on ``device``; its blocks compiled when the experiment says so
    (on the device, before DDP wraps it: :mod:`revunet.models.compiled`)."""
    seed_everything(experiment.seed)
    try:
        model = build_experiment_model(experiment).to(device)
    except (KeyError, TypeError, ValueError) as error:
        raise TrainError(f"experiment {experiment.name!r}: {error}") from None
    if experiment.compile:
        compile_blocks(model)
    return model


def build_run(
    experiment: Experiment,
    preprocessed: Path,
    split_path: Path,
    out: Path,
    device: torch.device,
    processes: Processes,
    progress: bool,
    resume: TrainingState | None,
) -> Run:
    """Check the inputs and assemble the run; a ``resume`` state is put back into it before DDP wraps the model."""
    loss = make_loss(experiment)
    train_set, validation = read_datasets(experiment, preprocessed, split_path)
    model = _seeded_model(experiment, device)
    check_compatible(experiment, loss, model, [train_set, *([validation] if validation else [])], preprocessed)
    optimizer = make_optimizer(experiment, model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(experiment.milestones), gamma=experiment.gamma)
    use_scaler = experiment.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=use_scaler)
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype(device.type), enabled=experiment.amp)
    if resume is not None:
        resume.restore(model, optimizer, scheduler, scaler)
    trained: nn.Module = model
    if processes.distributed:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(experiment, train_set, size_multiple(model), device, processes)
    return Run(
        experiment=experiment,
        model=model,
        trained=trained,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loader=loader,
        sampler=cast(ShardedOrder, loader.sampler),
        train_set=train_set,
        validation=validation,
        device=device,
        processes=processes,
        autocast=autocast,
        out=out,
        progress=progress,
        memory=StepMemoryMeter(device) if experiment.measure_memory else None,
    )
