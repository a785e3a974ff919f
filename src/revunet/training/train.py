"""`revunet train`: one experiment's training run, resumable, on CPU, one GPU or several processes.

The recipe comes from the :class:`~revunet.experiments.recipe.Experiment`: registry model, loss preset,
optimiser (``adam``, ``adamw``, or ``sgd`` with momentum 0.9), learning rate multiplied by
``gamma`` after each epoch listed in ``milestones`` (``MultiStepLR``: with milestone 250 the
251st epoch runs at the reduced rate), patches or whole volumes, batch size, gradient
accumulation, augmentation preset and early stopping.

Run folder (only rank 0 writes; every file atomically):

- ``experiment.json``: the experiment;
- ``last.pt``: after every epoch, the training checkpoint (:mod:`revunet.training.checkpoint` format
  plus ``optimizer_state``, ``scheduler_state``, ``scaler_state``, ``rng_state`` (python,
  numpy, torch, cuda), ``early_stopping``, ``log_rows``, ``best`` (the best weights so far
  and their validation figures), ``train_seconds``, ``stopped``, ``world_size``, ``device``,
  ``parameters``). Rerunning the same command resumes from it exactly; ``best.pt``,
  ``log.csv`` and ``summary.json`` are regenerated from it when they are missing;
- ``best.pt``: the weights of the epoch with the highest *moving average* (EMA) of the
  validation mean Dice (see :mod:`revunet.training.early_stopping`), with ``epoch``,
  ``val_dice``, ``val_mean_dice`` and ``ema_dice``; if no epoch was validated, the final weights;
- ``log.csv``: one row per epoch (columns in :mod:`revunet.training.run_log`);
- ``summary.json``: written last; its existence means the run finished.

Validation runs every ``validate_every`` epochs on the split's held-out cases, whole volumes
zero-padded to a multiple of the model's ``size_multiple`` (output cropped back): hard Dice
per region (sigmoid > 0.5 for BraTS WT/TC/ET, argmax for iSeg CSF/GM/WM; both masks empty
counts as 1), averaged over cases; ``val_mean_dice`` is their mean over regions.

Data order: each epoch a permutation of the training samples seeded by ``(seed, epoch)``,
dealt to the processes like cards (rank r takes positions r, r+W, ...). So W processes with
batch b equal one process with batch b and accumulation W (same samples per step, gradients
averaged), up to float rounding. Batch b on one process is NOT the same as b x accumulation
when the loss pools over the batch (the Dice losses do: one Dice over all voxels of the batch).

Determinism: python, numpy and torch are seeded from ``experiment.seed``; on CPU
``torch.use_deterministic_algorithms(True)`` is on during training, so a run killed and resumed
gives bit-identical weights to an uninterrupted one with the same thread count.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from revunet.catalog import TASK_OUTPUTS as TASK_OUTPUT
from revunet.catalog import TASK_REGIONS
from revunet.training.checkpoint import CHECKPOINT_FORMAT, build_experiment_model, load_checkpoint, save_checkpoint
from revunet.data.augment import Augmentation, AugmentationConfig
from revunet.data.dataset import PatchDataset
from revunet.data.splits import read_split
from revunet.experiments.recipe import Experiment, read_experiment, write_experiment
from revunet.evaluation.predict import predict_volume
from revunet.training.losses import LOSSES, SegmentationLoss, configured_loss
from revunet.models.registry import parameter_count
from revunet.devices import DeviceError, resolve_device
from revunet.tasks import get_task
from revunet.training.early_stopping import EarlyStopping
from revunet.training.run_log import peak_memory_mib, peak_memory_source, write_log, write_summary

OUTPUT_FILES = ("best.pt", "log.csv", "summary.json")


class TrainError(RuntimeError):
    """A problem with the inputs or the run folder; the message names the file or key at fault."""


class NonFiniteLoss(TrainError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


# --------------------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, or several under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (so all ranks take the same decision)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over ranks."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world_size
        return values


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[tuple[Processes, torch.device]]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = resolve_device(device_name, local_rank)
    except DeviceError as error:
        raise TrainError(str(error)) from None
    if world_size <= 1:
        yield Processes(), device
        return
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), local_rank), device
    finally:
        if created:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- data


class ShardedOrder(Sampler[int]):
    """Per-epoch seeded permutation of ``size`` samples, dealt to ``world_size`` ranks.

    Rank r gets positions r, r + W, r + 2W, ... of the permutation; the last ``size mod W``
    positions are dropped so every rank runs the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < world_size:
            raise TrainError(f"{size} training sample(s) cannot feed {world_size} processes")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        usable = len(self) * self.world_size
        return permutation[self.rank : usable : self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.size // self.world_size


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    return tuple(int(math.ceil(s / multiple) * multiple) for s in shape)


def pad_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad the last three axes at their end up to ``shape``."""
    extra = [target - size for size, target in zip(tensor.shape[-3:], shape)]
    if not any(extra):
        return tensor
    return functional.pad(tensor, (0, extra[2], 0, extra[1], 0, extra[0]))


def collate(items: list[dict[str, Any]], multiple: int) -> dict[str, torch.Tensor]:
    """Stack samples, zero-padding (image 0, label background) to a common multiple of ``multiple``."""
    shape = padded_shape(np.max([item["image"].shape[1:] for item in items], axis=0), multiple)
    return {
        "image": torch.stack([pad_to(item["image"], shape) for item in items]),
        "label": torch.stack([pad_to(item["label"], shape) for item in items]),
    }


# --------------------------------------------------------------------------- loss and validation


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


def weighted_total(loss: SegmentationLoss, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss value from its terms (each term name is also the name of its weight)."""
    return sum(getattr(loss, name) * value for name, value in terms.items())


def hard_dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of two boolean masks; both empty counts as 1 (BraTS convention)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


@torch.no_grad()
def validate(model: nn.Module, dataset: PatchDataset, task: str, device: torch.device) -> dict[str, float]:
    """Mean hard Dice per region over the held-out volumes (keys ``TASK_REGIONS[task]``).

    Whole volumes are predicted as `revunet infer` predicts them (padded to the model's size
    multiple and cropped back, float32), so validation scores what inference will produce.
    """
    spec = get_task(task)
    scores: dict[str, list[float]] = {region: [] for region in spec.regions}
    for index in range(len(dataset)):
        item = dataset[index]
        probabilities = predict_volume(model, item["image"], spec.output, device=device)
        predicted, truth = spec.predicted_regions(probabilities), spec.region_stack(item["label"])
        for region, p, t in zip(scores, predicted, truth):
            scores[region].append(hard_dice(p, t))
    return {region: float(np.mean(values)) for region, values in scores.items()}


# --------------------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms while training (restored afterwards: it is a process-wide switch)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# --------------------------------------------------------------------------- run folder


def _summary(payload: dict[str, Any]) -> dict[str, Any]:
    best = payload["best"] or {}
    rows = payload["log_rows"]
    return {
        "experiment": payload["experiment"]["name"],
        "epochs_completed": payload["epoch"],
        "best_epoch": best.get("epoch", payload["epoch"]),
        "best_val_mean_dice": best.get("val_mean_dice"),
        "best_ema_dice": best.get("ema_dice"),
        "stopped": payload["stopped"],
        "train_seconds": payload["train_seconds"],
        "peak_memory_mib": max((row["peak_memory_mib"] for row in rows), default=None),
        "peak_memory_source": payload["peak_memory_source"],
        "parameters": payload["parameters"],
        "device": payload["device"],
        "world_size": payload["world_size"],
    }


def _best_payload(payload: dict[str, Any]) -> dict[str, Any]:
    best = payload["best"]
    if best is None:  # no validation epoch yet: the current weights stand in
        return {"format": CHECKPOINT_FORMAT, "experiment": payload["experiment"], "model_state": payload["model_state"],
                "epoch": payload["epoch"], "val_dice": None, "val_mean_dice": None, "ema_dice": None}
    return {"format": CHECKPOINT_FORMAT, "experiment": payload["experiment"], **best}


def write_outputs(
    out: Path, payload: dict[str, Any], regions: Sequence[str], only_missing: bool = False, best_changed: bool = True
) -> None:
    """``best.pt``, ``log.csv`` and (for a finished run, last) ``summary.json`` from a training checkpoint.

    ``only_missing`` leaves existing files alone; ``best_changed`` False skips an existing ``best.pt``.
    """
    def wanted(name: str) -> bool:
        return not (only_missing and (out / name).exists())

    if wanted("best.pt") and (best_changed or payload["best"] is None or not (out / "best.pt").exists()):
        save_checkpoint(out / "best.pt", _best_payload(payload))
    if wanted("log.csv"):
        write_log(out / "log.csv", payload["log_rows"], regions)
    if payload["stopped"] is not None and wanted("summary.json"):
        write_summary(out / "summary.json", _summary(payload))


def _differences(old: Experiment, new: Experiment) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    return sorted(key for key in a if a[key] != b.get(key))


def previous_run(out: Path, experiment: Experiment, restart: bool, is_main: bool) -> dict[str, Any] | None:
    """The training checkpoint to resume from, or None to start afresh.

    A run folder holding another experiment is an error unless ``restart`` (which discards
    this folder's training outputs and starts over).
    """
    last = out / "last.pt"
    payload = None
    previous = None
    if last.is_file():
        try:
            payload = load_checkpoint(last)
            previous = Experiment.from_dict(payload["experiment"], source=f"{last}: experiment")
        except (ValueError, FileNotFoundError) as error:
            if not restart:
                raise TrainError(f"{error}; delete it or pass --restart") from None
    elif (out / "experiment.json").is_file():
        previous = read_experiment(out / "experiment.json")
    if restart:
        if is_main:
            for name in ("last.pt", *OUTPUT_FILES):
                (out / name).unlink(missing_ok=True)
        return None
    if previous is not None and previous != experiment:
        raise TrainError(
            f"{out} holds a run of a different experiment (keys that differ: "
            f"{', '.join(_differences(previous, experiment))}); delete the folder or pass --restart to start over"
        )
    if payload is None and (out / "summary.json").is_file():
        raise TrainError(
            f"{out}: summary.json says the run finished but last.pt is missing; pass --restart to train again"
        )
    return payload


# --------------------------------------------------------------------------- training


@dataclass
class Run:
    """Everything one epoch needs, assembled once."""

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
    device: torch.device
    processes: Processes
    multiple: int
    autocast: Callable[[], contextlib.AbstractContextManager]

    def steps_per_epoch(self) -> int:
        steps = math.ceil(len(self.loader) / self.experiment.accumulation)
        cap = self.experiment.max_steps_per_epoch
        return steps if cap is None else min(steps, cap)


def make_optimizer(experiment: Experiment, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, decay = model.parameters(), experiment.lr, experiment.weight_decay
    if experiment.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if experiment.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)


@contextlib.contextmanager
def warmed_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> Iterator[None]:
    """Scale the scheduled learning rate by step/warmup_steps for the optimiser step ``step`` (1-based).

    The schedule's own rate is put back afterwards, so the scheduler and checkpoints never see
    the warm-up and a resumed run warms up exactly as an uninterrupted one.
    """
    if step >= warmup_steps:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr * step / warmup_steps
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr


def train_epoch(run: Run, epoch: int, progress: bool) -> tuple[int, float, dict[str, float], float]:
    """One epoch (``epoch`` is 1-based).

    Returns (optimiser steps, mean loss, mean unweighted terms, mean finite gradient norm before clipping).
    """
    experiment = run.experiment
    run.sampler.set_epoch(epoch - 1)
    run.train_set.set_epoch(epoch - 1)
    run.trained.train()
    steps = run.steps_per_epoch()
    batches = iter(run.loader)
    remaining = len(run.loader)
    totals: torch.Tensor | None = None
    names: list[str] = []
    grad_norms: list[float] = []
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for step in range(1, steps + 1):
        group = [next(batches) for _ in range(min(experiment.accumulation, remaining))]
        remaining -= len(group)
        run.optimizer.zero_grad(set_to_none=True)
        step_values: torch.Tensor | None = None
        for position, batch in enumerate(group):
            image = batch["image"].to(run.device, non_blocking=True)
            target = get_task(experiment.task).targets(batch["label"]).to(run.device, non_blocking=True)
            last = position == len(group) - 1
            # DDP all-reduces gradients on the last micro-batch of a step only
            sync = contextlib.nullcontext() if last or not run.processes.distributed else run.trained.no_sync()
            with sync:
                with run.autocast():
                    output = run.trained(image)
                terms = run.loss.terms(output, target, image)
                total = weighted_total(run.loss, terms)
                run.scaler.scale(total / len(group)).backward()
            names = list(terms)
            values = torch.stack([total.detach().float(), *(v.detach().float() for v in terms.values())]) / len(group)
            step_values = values if step_values is None else step_values + values
        assert step_values is not None
        step_values = run.processes.mean(step_values)
        if not torch.isfinite(step_values[0]):
            raise NonFiniteLoss(
                f"non-finite loss ({step_values[0].item()}) at epoch {epoch} step {step}; "
                f"the last good checkpoint is kept (epoch {epoch - 1})"
            )
        run.scaler.unscale_(run.optimizer)
        # with max_norm inf this only measures the norm (and multiplies by 1.0, which is exact)
        clip = experiment.grad_clip_norm if experiment.grad_clip_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(run.trained.parameters(), clip)
        with warmed_up(run.optimizer, (epoch - 1) * steps + step, experiment.warmup_steps):
            run.scaler.step(run.optimizer)
        run.scaler.update()
        grad_norms.append(float(grad_norm))
        totals = step_values if totals is None else totals + step_values
        bar.update()
        bar.set_postfix(loss=f"{step_values[0].item():.4f}")
    bar.close()
    assert totals is not None
    means = (totals / steps).tolist()
    # steps the gradient scaler skipped (inf/NaN gradients in float16) have no norm to average
    finite = [norm for norm in grad_norms if math.isfinite(norm)]
    mean_norm = sum(finite) / len(finite) if finite else math.nan
    return steps, means[0], dict(zip(names, means[1:])), mean_norm


def _bare_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def train(
    experiment: Experiment,
    preprocessed: str | os.PathLike[str],
    split: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str = "auto",
    progress: bool | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Train (or resume, or confirm a finished) run of ``experiment``; returns the summary."""
    out = Path(out)
    with process_group(device) as (processes, torch_device):
        with deterministic(torch_device.type == "cpu"):
            return _train(experiment, Path(preprocessed), Path(split), out, torch_device, processes, progress, restart)


def _say(processes: Processes, message: str, progress: bool) -> None:
    if processes.is_main:
        (tqdm.write if progress else print)(message)
        sys.stdout.flush()


def _train(
    experiment: Experiment,
    preprocessed: Path,
    split_path: Path,
    out: Path,
    device: torch.device,
    processes: Processes,
    progress: bool | None,
    restart: bool,
) -> dict[str, Any]:
    regions = TASK_REGIONS[experiment.task]
    progress = (sys.stderr.isatty() if progress is None else progress) and processes.is_main
    loss = make_loss(experiment)
    if loss.output != TASK_OUTPUT[experiment.task]:
        raise TrainError(
            f"experiment {experiment.name!r}: task {experiment.task} needs {TASK_OUTPUT[experiment.task]} outputs, "
            f"but loss {experiment.loss!r} is built for {loss.output} (set model_params.output)"
        )

    payload = previous_run(out, experiment, restart, processes.is_main)
    if payload is not None and payload["stopped"] is not None:
        if processes.is_main:
            write_outputs(out, payload, regions, only_missing=True)
        _say(processes, f"{out}: finished after {payload['epoch']} epochs ({payload['stopped']}); nothing to do", False)
        return _summary(payload)

    # Inputs
    try:
        parts = read_split(split_path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainError(str(error)) from None
    if not parts.train:
        raise TrainError(f"{split_path}: the split has no training cases")
    if not preprocessed.is_dir():
        raise TrainError(f"no preprocessed folder at {preprocessed}")
    augmentation = experiment.augmentation
    augment = None if augmentation == "none" else Augmentation(AugmentationConfig.preset(augmentation))
    try:
        train_set = PatchDataset(
            preprocessed, parts.train, experiment.patch_size, augment, experiment.samples_per_volume, experiment.seed
        )
        held_out = None
        if parts.held_out:
            held_out = PatchDataset(preprocessed, parts.held_out, None, None, 1, experiment.seed)
    except (FileNotFoundError, ValueError) as error:
        raise TrainError(f"{preprocessed}: {error}") from None
    tasks = {train_set.task} | ({held_out.task} if held_out else set())
    if tasks != {experiment.task}:
        raise TrainError(
            f"experiment {experiment.name!r} is for task {experiment.task!r} but the preprocessed cases in "
            f"{preprocessed} are {sorted(tasks)}"
        )

    # Model, optimiser, schedule
    seed_everything(experiment.seed)
    try:
        model = build_experiment_model(experiment).to(device)
    except (KeyError, TypeError, ValueError) as error:
        raise TrainError(f"experiment {experiment.name!r}: {error}") from None
    model_channels = getattr(model, "in_channels", train_set.channels)
    if model_channels != train_set.channels:
        raise TrainError(
            f"model {experiment.model!r} takes {model_channels} input channels but the {experiment.task} cases "
            f"in {preprocessed} have {train_set.channels}"
        )
    head_output = getattr(getattr(model, "head", None), "output", loss.output)
    if head_output != loss.output:
        raise TrainError(
            f"experiment {experiment.name!r}: the model ends in {head_output} but the loss expects {loss.output}"
        )
    optimizer = make_optimizer(experiment, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(experiment.milestones), gamma=experiment.gamma)
    use_scaler = experiment.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=use_scaler)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype, enabled=experiment.amp)
    multiple = int(getattr(model, "size_multiple", 1))

    stopper = EarlyStopping(experiment.ema_alpha, experiment.patience)
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, train_seconds = 0, 0.0
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        scheduler.load_state_dict(payload["scheduler_state"])
        scaler.load_state_dict(payload["scaler_state"])
        restore_rng_state(payload["rng_state"])
        stopper = EarlyStopping.from_state(payload["early_stopping"])
        rows, best = list(payload["log_rows"]), payload["best"]
        start_epoch, train_seconds = int(payload["epoch"]), float(payload["train_seconds"])
        if payload["world_size"] != processes.world_size:
            _say(processes, f"note: resuming with {processes.world_size} process(es); the run began with "
                 f"{payload['world_size']}, so the data order differs from an uninterrupted run", False)
        if processes.is_main:
            write_outputs(out, payload, regions)  # best.pt/log.csv as of last.pt, whatever a kill left
        _say(processes, f"{out}: resuming after epoch {start_epoch}", False)
    if processes.is_main:
        write_experiment(out / "experiment.json", experiment)

    trained: nn.Module = model
    if processes.distributed:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = ShardedOrder(len(train_set), experiment.seed, processes.rank, processes.world_size)
    loader = DataLoader(
        train_set,
        batch_size=experiment.batch_size,
        sampler=sampler,
        num_workers=experiment.num_workers,
        collate_fn=partial(collate, multiple=multiple),
        pin_memory=device.type == "cuda",
    )
    run = Run(experiment, model, trained, loss, optimizer, scheduler, scaler, loader, sampler, train_set,
              device, processes, multiple, autocast)
    parameters = parameter_count(model)
    if start_epoch == 0:
        _say(processes, f"{experiment.name}: {experiment.model}, {parameters:,} parameters, {len(train_set)} training "
             f"samples, {len(held_out) if held_out else 0} held-out volumes, {run.steps_per_epoch()} steps per epoch, "
             f"device {device}, {processes.world_size} process(es)", False)

    epochs = tqdm(range(start_epoch + 1, experiment.epochs + 1), initial=start_epoch, total=experiment.epochs,
                  desc=experiment.name, disable=not progress, dynamic_ncols=True)
    for epoch in epochs:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        steps, train_loss, term_means, grad_norm = train_epoch(run, epoch, progress)
        scores = None
        if processes.is_main and held_out is not None and epoch % experiment.validate_every == 0:
            scores = validate(model, held_out, experiment.task, device)
        scores = processes.share(scores)
        mean_dice = None if scores is None else float(np.mean(list(scores.values())))
        improved = False
        if scores is not None:
            improved = stopper.update(epoch, mean_dice)
            if improved and processes.is_main:
                best = {"model_state": _bare_state(model), "epoch": epoch, "val_dice": scores,
                        "val_mean_dice": mean_dice, "ema_dice": stopper.ema}
        scheduler.step()
        stop = processes.share(stopper.should_stop(epoch))
        seconds = time.perf_counter() - started
        train_seconds += seconds
        row = {"epoch": epoch, "steps": steps, "train_loss": train_loss,
               **{f"loss_{name}": value for name, value in term_means.items()}, "grad_norm": grad_norm,
               **{f"val_dice_{region}": (scores or {}).get(region) for region in regions},
               "val_mean_dice": mean_dice, "ema_dice": None if scores is None else stopper.ema,
               "lr": lr, "epoch_seconds": seconds, "peak_memory_mib": peak_memory_mib(device),
               "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        rows.append(row)
        stopped = "early_stopping" if stop else ("max_epochs" if epoch == experiment.epochs else None)
        if processes.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT, "experiment": experiment.to_dict(), "model_state": model.state_dict(),
                "epoch": epoch, "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                "scaler_state": scaler.state_dict(), "rng_state": rng_state(), "early_stopping": stopper.state_dict(),
                "log_rows": rows, "best": best, "train_seconds": train_seconds, "stopped": stopped,
                "world_size": processes.world_size, "device": str(device), "parameters": parameters,
                "peak_memory_source": peak_memory_source(device),
            }
            save_checkpoint(out / "last.pt", payload)
            write_outputs(out, payload, regions, best_changed=improved)
        dice_text = f", val mean Dice {row['val_mean_dice']:.4f} (EMA {row['ema_dice']:.4f})" if scores else ""
        _say(processes, f"epoch {epoch}/{experiment.epochs}: loss {train_loss:.4f}{dice_text}, lr {lr:.3g}, "
             f"{seconds:.1f} s", progress)
        if stop:
            _say(processes, f"early stopping after epoch {epoch}: best EMA at epoch {stopper.best_epoch}, "
                 f"patience {experiment.patience}", progress)
            break
    epochs.close()
    return processes.share(_summary(payload) if processes.is_main else None)
