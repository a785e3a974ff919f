"""`revunet train`: one experiment's training run, resumable, on CPU, one GPU or several processes.

Run folder (only rank 0 writes; every file atomically):

- ``experiment.json``: the experiment;
- ``last.pt``: after every epoch, the training checkpoint (:mod:`revunet.training.state`).
  Rerunning the same command resumes from it exactly; ``best.pt``, ``log.csv`` and
  ``summary.json`` are regenerated from it when they are missing;
- ``best.pt``: the weights of the epoch with the highest *moving average* (EMA) of the
  validation mean Dice (see :mod:`revunet.training.early_stopping`), with ``epoch``,
  ``val_dice``, ``val_mean_dice`` and ``ema_dice``; when the split has no validation part
  (nothing is selected), the last epoch's weights, rewritten after every epoch;
- ``log.csv``: one row per epoch (columns in :mod:`revunet.training.run_log`);
- ``epoch_NNNN.pt``: the weights of each of the experiment's ``snapshot_epochs`` (scored, never selected);
- ``summary.json``: written last; its existence means the run finished.

Validation runs every ``validate_every`` epochs on the split's validation part (never its test
part, which the tables report), predicted as `revunet infer` predicts (the experiment's window,
overlap and flips; :mod:`revunet.training.validation`): hard Dice per region of the label map
(BraTS WT/TC/ET, iSeg CSF/GM/WM; both masks empty counts as 1), averaged over cases;
``val_mean_dice`` is their mean over regions.
Data order and determinism: :mod:`revunet.training.randomness`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from revunet.experiments.recipe import Experiment, write_experiment
from revunet.models.compiled import compiled_blocks
from revunet.models.registry import parameter_count
from revunet.tasks import get_task
from revunet.training.distributed import Processes, process_group
from revunet.training.errors import NonFiniteLoss
from revunet.training.interruption import StopWatch, TrainingInterrupted, time_budget
from revunet.training.randomness import deterministic
from revunet.training.resumption import Fingerprint, decide, merged, own_share
from revunet.training.run_log import peak_memory_mib, step_timing
from revunet.training.setup import Run, build_run
from revunet.training.state import EpochProgress, TrainingState, save_checkpoint, save_snapshot, write_outputs
from revunet.training.validation import maybe_validate

# --------------------------------------------------------------------------- one epoch


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


@dataclass(frozen=True)
class EpochResult:
    """What one training epoch measured (means over its optimiser steps)."""

    steps: int
    loss: float
    terms: dict[str, float]  # unweighted loss terms
    grad_norm: float  # mean finite gradient norm before clipping
    step_seconds: list[float]  # wall time of each optimiser step


def _backward(run: Run, group: list[dict[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """Forward and backward over one step's micro-batches; (term names, [total, *terms] averaged)."""
    names: list[str] = []
    step_values: torch.Tensor | None = None
    for position, batch in enumerate(group):
        image = batch["image"].to(run.device, non_blocking=True)
        target = get_task(run.experiment.task).targets(batch["label"]).to(run.device, non_blocking=True)
        last = position == len(group) - 1
        # DDP all-reduces gradients on the last micro-batch of a step only
        trained = run.trained
        sync = (
            trained.no_sync() if isinstance(trained, DistributedDataParallel) and not last else contextlib.nullcontext()
        )
        with sync:
            with run.autocast():
                output = run.trained(image)
            terms = run.loss.terms(output, target, image)
            total = run.loss.total(terms, target.device)
            run.scaler.scale(total / len(group)).backward()
        names = list(terms)
        values = torch.stack([total.detach().float(), *(v.detach().float() for v in terms.values())]) / len(group)
        step_values = values if step_values is None else step_values + values
    assert step_values is not None
    return names, run.processes.mean(step_values)


def _optimizer_step(run: Run, global_step: int) -> float:
    """Clip (or only measure) the gradient norm, then step; returns the norm before clipping."""
    experiment = run.experiment
    run.scaler.unscale_(run.optimizer)
    # with max_norm inf this only measures the norm (and multiplies by 1.0, which is exact)
    clip = experiment.grad_clip_norm if experiment.grad_clip_norm is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.trained.parameters(), clip)
    with warmed_up(run.optimizer, global_step, experiment.warmup_steps):
        run.scaler.step(run.optimizer)
    run.scaler.update()
    return float(grad_norm)


def _train_step(run: Run, batches: Iterator[dict[str, torch.Tensor]], remaining: int, progress: EpochProgress) -> int:
    """One optimiser step on the next micro-batches; adds it to ``progress``; returns the batches used."""
    group = [next(batches) for _ in range(min(run.experiment.accumulation, remaining))]
    batch = [tensor for item in group for tensor in item.values()]
    step = progress.steps_done + 1
    with run.memory.step(run.model, run.optimizer, batch) if run.memory else contextlib.nullcontext():
        run.optimizer.zero_grad(set_to_none=True)
        names, step_values = _backward(run, group)
        if not torch.isfinite(step_values[0]):
            raise NonFiniteLoss(
                f"non-finite loss ({step_values[0].item()}) at epoch {progress.epoch} step {step}; "
                f"the last good checkpoint is kept (epoch {progress.epoch - 1})"
            )
        grad_norm = _optimizer_step(run, (progress.epoch - 1) * run.steps_per_epoch() + step)
    progress.grad_norms.append(grad_norm)
    progress.totals = step_values if progress.totals is None else progress.totals + step_values
    progress.names = names
    progress.steps_done = step
    return len(group)


def train_epoch(run: Run, progress: EpochProgress, watch: StopWatch) -> EpochResult | None:
    """The rest of epoch ``progress.epoch`` (1-based) from step ``progress.steps_done``; None when a
    stop request ended it early (``progress`` then holds the steps done)."""
    epoch, steps = progress.epoch, run.steps_per_epoch()
    # the epoch's order without the samples of the steps already done (full batches)
    run.sampler.set_epoch(
        epoch - 1, start=progress.steps_done * run.experiment.accumulation * run.experiment.batch_size
    )
    run.train_set.set_epoch(epoch - 1)
    run.trained.train()
    if run.memory is not None:
        run.memory.reset()  # log.csv's tensor_peak_mib is the epoch's
    bar = tqdm(total=steps, initial=progress.steps_done, desc=f"epoch {epoch}", leave=False, disable=not run.progress)
    if progress.steps_done < steps:
        batches, remaining = iter(run.loader), len(run.loader)
        while progress.steps_done < steps:
            if watch.reason("step") is not None:
                bar.close()
                return None
            started = time.perf_counter()
            remaining -= _train_step(run, batches, remaining, progress)
            seconds = time.perf_counter() - started
            progress.seconds += seconds
            progress.step_seconds.append(seconds)
            watch.measured("step", seconds)
            bar.update()
    bar.close()
    assert progress.totals is not None
    means = (progress.totals / steps).tolist()
    # steps the gradient scaler skipped (inf/NaN gradients in float16) have no norm to average
    finite = [norm for norm in progress.grad_norms if math.isfinite(norm)]
    grad_norm = sum(finite) / len(finite) if finite else math.nan
    return EpochResult(steps, means[0], dict(zip(progress.names, means[1:])), grad_norm, list(progress.step_seconds))


# --------------------------------------------------------------------------- the epochs


def _say(processes: Processes, message: str, progress: bool) -> None:
    if processes.is_main:
        (tqdm.write if progress else print)(message)
        sys.stdout.flush()


def log_row(
    run: Run,
    state: TrainingState,
    epoch: int,
    result: EpochResult,
    scores: dict[str, float] | None,
    mean_dice: float | None,
    lr: float,
    seconds: float,
) -> dict[str, Any]:
    """The epoch's row of ``log.csv``."""
    regions = get_task(run.experiment.task).regions
    return {
        "epoch": epoch,
        "steps": result.steps,
        "train_loss": result.loss,
        **{f"loss_{name}": value for name, value in result.terms.items()},
        "grad_norm": result.grad_norm,
        **{f"val_dice_{region}": (scores or {}).get(region) for region in regions},
        "val_mean_dice": mean_dice,
        "ema_dice": None if scores is None else state.stopper.ema,
        "lr": lr,
        "epoch_seconds": seconds,
        "validation_seconds": run.validation_seconds,
        **step_timing(result.step_seconds),
        "peak_memory_mib": peak_memory_mib(run.device),
        "tensor_peak_mib": None if run.memory is None else run.memory.peak_bytes / 2**20,
        "time": _now(),
    }


def checkpoint(run: Run, state: TrainingState, best_changed: bool, watch: StopWatch) -> None:
    """Rank 0 writes ``last.pt``, then the outputs derived from it (timed: the budget keeps room for it)."""
    if not run.processes.is_main:
        return
    started = time.perf_counter()
    state.capture(run.model, run.optimizer, run.scheduler, run.scaler, run.device, run.processes.world_size)
    save_checkpoint(run.out / "last.pt", state.to_payload())
    write_outputs(run.out, state, get_task(run.experiment.task).regions, best_changed=best_changed)
    watch.measured("checkpoint", time.perf_counter() - started)


def interrupt(run: Run, state: TrainingState, watch: StopWatch, reason: str) -> NoReturn:
    """Checkpoint the current step (every rank waits for it) and raise :class:`TrainingInterrupted`."""
    progress = state.progress
    assert progress is not None
    steps = run.steps_per_epoch()
    where = (
        f"before the validation of epoch {progress.epoch}"
        if progress.steps_done == steps
        else f"at epoch {progress.epoch}, step {progress.steps_done} of {steps} done"
    )
    state.interruptions.append(
        {"reason": reason, "epoch": progress.epoch, "steps_done": progress.steps_done, "time": _now()}
    )
    checkpoint(run, state, best_changed=False, watch=watch)
    run.processes.barrier()
    raise TrainingInterrupted(reason, where)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _report(run: Run, row: dict[str, Any], stop: bool, state: TrainingState) -> None:
    experiment, epoch = run.experiment, row["epoch"]
    dice = (
        f", val mean Dice {row['val_mean_dice']:.4f} (EMA {row['ema_dice']:.4f})"
        if row["val_mean_dice"] is not None
        else ""
    )
    _say(
        run.processes,
        f"epoch {epoch}/{experiment.epochs}: loss {row['train_loss']:.4f}{dice}, lr {row['lr']:.3g}, "
        f"{row['epoch_seconds']:.1f} s",
        run.progress,
    )
    if stop:
        _say(
            run.processes,
            f"early stopping after epoch {epoch}: best EMA at epoch {state.stopper.best_epoch}, "
            f"patience {experiment.patience}",
            run.progress,
        )


def _epoch_progress(state: TrainingState, epoch: int) -> EpochProgress:
    """Where ``epoch`` starts: where an interrupted run stopped in it, else at its first step."""
    if state.progress is None or state.progress.epoch != epoch:
        state.progress = EpochProgress(epoch)
    return state.progress


def fit(run: Run, state: TrainingState, watch: StopWatch) -> None:
    """Train the remaining epochs: each trains, maybe validates, updates the state, checkpoints and logs.

    A stop request (``watch``) checkpoints the current step and raises :class:`TrainingInterrupted`.
    """
    experiment = run.experiment
    epochs = tqdm(
        range(state.epoch + 1, experiment.epochs + 1),
        initial=state.epoch,
        total=experiment.epochs,
        desc=experiment.name,
        disable=not run.progress,
        dynamic_ncols=True,
    )
    for epoch in epochs:
        started, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
        progress = _epoch_progress(state, epoch)
        trained_before = progress.seconds
        result = train_epoch(run, progress, watch)
        scores = maybe_validate(run, epoch, watch) if result is not None else watch.last_reason
        if result is None or isinstance(scores, str):
            epochs.close()
            interrupt(run, state, watch, str(scores))
        mean_dice: float | None = None
        improved = False
        if scores is not None:
            mean_dice = float(np.mean(list(scores.values())))
            improved = state.stopper.update(epoch, mean_dice)
            if improved and run.processes.is_main:
                state.record_best(run.model, epoch, scores, mean_dice)
        run.scheduler.step()
        stop = run.processes.share(state.stopper.should_stop(epoch))
        seconds = trained_before + time.perf_counter() - started
        row = log_row(run, state, epoch, result, scores, mean_dice, lr, seconds)
        state.end_epoch(
            row, seconds, "early_stopping" if stop else ("max_epochs" if epoch == experiment.epochs else None)
        )
        if epoch in experiment.snapshot_epochs and run.processes.is_main:  # before last.pt: redone if cut
            save_snapshot(run.out, run.model, experiment, epoch)
        # without a validation part best.pt is the last epoch's weights: rewritten every epoch
        checkpoint(run, state, best_changed=improved or run.validation is None, watch=watch)
        _report(run, row, stop, state)
        if stop:
            break
    epochs.close()


# --------------------------------------------------------------------------- the command


def train(
    experiment: Experiment,
    preprocessed: str | os.PathLike[str],
    split: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str = "auto",
    progress: bool | None = None,
    restart: bool = False,
    time_limit: str | float | None = None,
) -> dict[str, Any]:
    """Train, resume, or confirm a finished run of ``experiment``; returns the summary.

    ``time_limit``: minutes, ``auto`` (the SLURM job's time left) or None/``none``; a stop
    (budget, SIGTERM, SIGUSR1) raises :class:`TrainingInterrupted` after checkpointing.
    """
    out, pre, split_path = Path(out), Path(preprocessed), Path(split)
    share = own_share(out, pre, split_path, restart, Processes.launched())  # before the group forms: see there
    with process_group(device) as (processes, torch_device), deterministic(torch_device.type == "cpu"):
        watch = StopWatch(time_budget(time_limit), processes)
        with watch.installed():
            return _train(experiment, pre, split_path, out, torch_device, processes, progress, restart, watch, share)


def _starting_state(
    experiment: Experiment, share: Fingerprint, out: Path, processes: Processes, restart: bool
) -> TrainingState:
    """Rank 0 decides (:func:`revunet.training.resumption.decide`) and says why; every rank gets the state."""
    message, state = "", None
    inputs = merged(processes.gather(share))  # every rank hashed its share of the cases already
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        decision = decide(out, experiment, inputs, restart)
        message, state = decision.message, decision.state
    message, resume = processes.share((message, state is not None))
    if message:
        _say(processes, message, False)
    if resume and not processes.is_main:  # the other ranks read the checkpoint rank 0 chose
        state = TrainingState.load(out / "last.pt")
    if state is None:
        state = TrainingState.fresh(experiment)
    state.inputs = inputs  # rank 0 stores the inputs' current fingerprint with every checkpoint
    return state


def _resumed(run: Run, state: TrainingState) -> None:
    processes = run.processes
    if state.world_size != processes.world_size:
        _say(
            processes,
            f"note: resuming with {processes.world_size} process(es); the run began with "
            f"{state.world_size}, so the data order differs from an uninterrupted run",
            False,
        )
    if processes.is_main:
        write_outputs(run.out, state, get_task(run.experiment.task).regions)  # best.pt/log.csv as of last.pt
    where = f"after epoch {state.epoch}"
    if state.progress is not None:
        where = f"at epoch {state.progress.epoch} after step {state.progress.steps_done}"
    stops = f" (stopped {len(state.interruptions)} time(s) so far)" if state.interruptions else ""
    _say(processes, f"{run.out}: resuming {where}{stops}", False)


def _compiled_note(model: nn.Module) -> str:
    """``", N compiled blocks"`` for a model compiled by ``compile: true`` (:mod:`revunet.models.compiled`)."""
    blocks = compiled_blocks(model)
    return f", {len(blocks)} compiled block(s)" if blocks else ""


def _train(
    experiment: Experiment,
    preprocessed: Path,
    split_path: Path,
    out: Path,
    device: torch.device,
    processes: Processes,
    progress: bool | None,
    restart: bool,
    watch: StopWatch,
    share: Fingerprint,
) -> dict[str, Any]:
    progress = (sys.stderr.isatty() if progress is None else progress) and processes.is_main
    state = _starting_state(experiment, share, out, processes, restart)
    if state.stopped is not None:
        if processes.is_main:
            write_outputs(out, state, get_task(experiment.task).regions, only_missing=True)
        _say(processes, f"{out}: finished after {state.epoch} epochs ({state.stopped}); nothing to do", False)
        return state.summary()
    resuming = state.epoch > 0 or state.progress is not None
    run = build_run(experiment, preprocessed, split_path, out, device, processes, progress, state if resuming else None)
    if resuming:
        _resumed(run, state)
    if processes.is_main:
        write_experiment(out / "experiment.json", experiment)
    state.parameters = parameter_count(run.model)
    state.validation_cases = [] if run.validation is None else list(run.validation.case_ids)
    if not resuming:
        selection = (
            f"{len(state.validation_cases)} validation volumes choose best.pt"
            if state.validation_cases
            else "no validation part (best.pt is the last epoch)"
        )
        _say(
            processes,
            f"{experiment.name}: {experiment.model}, {state.parameters:,} parameters, {len(run.train_set)} "
            f"training samples, {selection}, {run.steps_per_epoch()} steps per epoch, "
            f"device {device}, {processes.world_size} process(es){_compiled_note(run.model)}",
            False,
        )
    fit(run, state, watch)
    return processes.share(state.summary() if processes.is_main else None)
