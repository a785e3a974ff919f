"""The training state and its checkpoint files: the only code that knows the checkpoint's keys.

A checkpoint is a ``torch.save``'d dictionary, written atomically, holding at least::

    format: 1
    experiment: Experiment.to_dict()      # rebuilds the model and explains the run
    model_state: state_dict of the bare model (never a DDP wrapper's "module." keys)
    epoch: number of completed epochs

``last.pt`` (written after every epoch) adds what a rerun needs to resume exactly:
``optimizer_state``, ``scheduler_state``, ``scaler_state``, ``rng_state`` (python, numpy, torch,
cuda), ``early_stopping``, ``log_rows``, ``best`` (the best weights so far and their validation
figures), ``train_seconds``, ``stopped``, ``world_size``, ``device``, ``parameters`` and
``peak_memory_source``, ``inputs`` (the fingerprint of the data it trains on, see
:mod:`revunet.training.resumption`), ``progress`` (a stopped epoch's position, see
:class:`EpochProgress`) and ``interruptions`` (one record per graceful stop). ``best.pt`` holds the keys above plus ``val_dice``, ``val_mean_dice`` and
``ema_dice``; ``best.pt``, ``log.csv`` and ``summary.json`` can always be regenerated from ``last.pt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revunet.atomic import open_atomic
from revunet.experiments.recipe import Experiment
from revunet.memory.meter import CUDA_SOURCE, TRACKER_SOURCE
from revunet.models.build import build_experiment_model
from revunet.training.early_stopping import EarlyStopping
from revunet.training.randomness import restore_rng_state, rng_state
from revunet.training.run_log import peak_memory_source, write_log, write_summary

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "experiment", "model_state", "epoch")
OUTPUT_FILES = ("best.pt", "log.csv", "summary.json")


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` atomically; it must carry :data:`REQUIRED_KEYS`."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks the keys {missing}")
    with open_atomic(path, "wb") as stream:
        torch.save(dict(payload), stream)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file is an error naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # Our checkpoints hold random-number-generator states (numpy arrays, Python tuples),
        # so they are loaded in full; only load checkpoints you wrote yourself.
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise ValueError(f"{path}: not a revunet checkpoint (expected the keys {list(REQUIRED_KEYS)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {payload['format']}, this revunet reads format {CHECKPOINT_FORMAT}"
        )
    return payload


def stored_inputs(path: Path) -> dict[str, Any] | None:
    """The inputs' fingerprint a ``last.pt`` holds; None when it is missing, unreadable or has none.

    Memory-mapped, so the weights are never read: every rank calls this before training starts.
    Whether the file is usable is decided later (rank 0, :mod:`revunet.training.resumption`).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # missing, truncated, foreign: then every file is hashed afresh
        return None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    return inputs if isinstance(inputs, dict) else None


def model_from_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Experiment, dict[str, Any]]:
    """Rebuild the trained model (in eval mode), its experiment, and the raw checkpoint."""
    payload = load_checkpoint(path, map_location)
    experiment = Experiment.from_dict(payload["experiment"], source=f"{path}: experiment")
    model = build_experiment_model(experiment)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit model {experiment.model!r}: {error}") from None
    model.to(map_location).eval()
    return model, experiment, payload


def snapshot_path(out: str | os.PathLike[str], epoch: int) -> Path:
    """Where the weights of a ``snapshot_epochs`` epoch are kept: ``<run>/epoch_NNNN.pt``."""
    return Path(out) / f"epoch_{epoch:04d}.pt"


def save_snapshot(out: Path, model: nn.Module, experiment: Experiment, epoch: int) -> Path:
    """Keep epoch ``epoch``'s weights (a checkpoint `revunet infer` reads, like ``best.pt``)."""
    payload = {"format": CHECKPOINT_FORMAT, "experiment": experiment.to_dict(), "model_state": bare_state(model)}
    return save_checkpoint(snapshot_path(out, epoch), {**payload, "epoch": epoch})


def bare_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (unaffected by further training)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


@dataclass
class EpochProgress:
    """How far an interrupted epoch got: its optimiser steps done and their running sums.

    ``steps_done`` equal to the epoch's steps means training is done and validation is pending.
    ``totals`` (float32 sums of ``[total, *terms]``) and ``grad_norms`` are kept as they were, so
    the resumed epoch's means are bit-identical to an uninterrupted one's.
    """

    epoch: int
    steps_done: int = 0
    totals: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # each step's wall time (log.csv's timing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "steps_done": self.steps_done,
            "totals": self.totals,
            "names": list(self.names),
            "grad_norms": list(self.grad_norms),
            "seconds": self.seconds,
            "step_seconds": list(self.step_seconds),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> EpochProgress | None:
        return None if values is None else cls(**values)


@dataclass
class TrainingState:
    """Where a run stands after its last completed epoch: everything ``last.pt`` holds.

    The ``*_state`` fields are snapshots taken by :meth:`capture` and put back by :meth:`restore`.
    """

    experiment: Experiment
    stopper: EarlyStopping
    epoch: int = 0
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    train_seconds: float = 0.0
    stopped: str | None = None
    world_size: int = 1
    device: str = "cpu"
    parameters: int = 0
    peak_memory_source: str | None = None
    model_state: dict[str, Any] | None = None
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    progress: EpochProgress | None = None
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    # The split's validation part, which chose best.pt (empty: nothing was selected).
    validation_cases: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, experiment: Experiment) -> TrainingState:
        """The state before the first epoch."""
        return cls(experiment, EarlyStopping(experiment.ema_alpha, experiment.patience))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], source: str) -> TrainingState:
        """The state a ``last.pt`` holds (``source`` names it in errors)."""
        return cls(
            experiment=Experiment.from_dict(payload["experiment"], source=f"{source}: experiment"),
            stopper=EarlyStopping.from_state(payload["early_stopping"]),
            epoch=int(payload["epoch"]),
            log_rows=list(payload["log_rows"]),
            best=payload["best"],
            train_seconds=float(payload["train_seconds"]),
            stopped=payload["stopped"],
            world_size=payload["world_size"],
            device=payload["device"],
            parameters=payload["parameters"],
            peak_memory_source=payload["peak_memory_source"],
            model_state=payload["model_state"],
            optimizer_state=payload["optimizer_state"],
            scheduler_state=payload["scheduler_state"],
            scaler_state=payload["scaler_state"],
            rng_state=payload["rng_state"],
            # absent from checkpoints written before graceful stops existed
            inputs=payload.get("inputs"),
            progress=EpochProgress.from_dict(payload.get("progress")),
            interruptions=list(payload.get("interruptions", [])),
            validation_cases=list(payload.get("validation_cases", [])),
        )

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        """Read ``last.pt``; errors name ``path``."""
        payload = load_checkpoint(path)
        try:
            return cls.from_payload(payload, str(path))
        except KeyError as error:
            raise ValueError(f"{path}: not a training checkpoint (no key {error})") from None

    def to_payload(self) -> dict[str, Any]:
        """The ``last.pt`` dictionary."""
        return {
            "format": CHECKPOINT_FORMAT,
            "experiment": self.experiment.to_dict(),
            "model_state": self.model_state,
            "epoch": self.epoch,
            "optimizer_state": self.optimizer_state,
            "scheduler_state": self.scheduler_state,
            "scaler_state": self.scaler_state,
            "rng_state": self.rng_state,
            "early_stopping": self.stopper.state_dict(),
            "log_rows": self.log_rows,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "stopped": self.stopped,
            "world_size": self.world_size,
            "device": self.device,
            "parameters": self.parameters,
            "peak_memory_source": self.peak_memory_source,
            "inputs": self.inputs,
            "progress": None if self.progress is None else self.progress.to_dict(),
            "interruptions": self.interruptions,
            "validation_cases": self.validation_cases,
        }

    def best_payload(self) -> dict[str, Any]:
        """The ``best.pt`` dictionary; before any validation epoch the current weights stand in."""
        head = {"format": CHECKPOINT_FORMAT, "experiment": self.experiment.to_dict()}
        if self.best is None:
            return {
                **head,
                "model_state": self.model_state,
                "epoch": self.epoch,
                "val_dice": None,
                "val_mean_dice": None,
                "ema_dice": None,
            }
        return {**head, **self.best}

    def record_best(self, model: nn.Module, epoch: int, scores: dict[str, float], mean_dice: float) -> None:
        """Keep a copy of ``model``'s weights as the best so far, with their validation figures."""
        self.best = {
            "model_state": bare_state(model),
            "epoch": epoch,
            "val_dice": scores,
            "val_mean_dice": mean_dice,
            "ema_dice": self.stopper.ema,
        }

    def end_epoch(self, row: dict[str, Any], seconds: float, stopped: str | None) -> None:
        """Count the epoch whose ``log.csv`` row is ``row``; ``stopped`` says why the run ends there (else None)."""
        self.epoch = row["epoch"]
        self.train_seconds += seconds
        self.log_rows.append(row)
        self.stopped = stopped
        self.progress = None

    def capture(
        self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, device: torch.device, world_size: int
    ) -> None:
        """Snapshot the live training objects and the random generators (just before saving)."""
        self.model_state = model.state_dict()
        self.optimizer_state = optimizer.state_dict()
        self.scheduler_state = scheduler.state_dict()
        self.scaler_state = scaler.state_dict()
        self.rng_state = rng_state()
        self.device = str(device)
        self.world_size = world_size
        self.peak_memory_source = peak_memory_source(device)

    def restore(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> None:
        """Put the snapshots back into freshly built training objects and the random generators."""
        if self.model_state is None or self.rng_state is None:
            raise ValueError("no snapshot to restore: the state was never captured or loaded")
        model.load_state_dict(self.model_state)
        optimizer.load_state_dict(self.optimizer_state)
        scheduler.load_state_dict(self.scheduler_state)
        scaler.load_state_dict(self.scaler_state)
        restore_rng_state(self.rng_state)

    def _tensor_peak(self) -> dict[str, Any]:
        """The training steps' measured peak (``measure_memory: true``), and how it was measured."""
        peaks = [row["tensor_peak_mib"] for row in self.log_rows if row.get("tensor_peak_mib") is not None]
        if not peaks:
            return {"tensor_peak_mib": None, "tensor_peak_source": None}
        source = CUDA_SOURCE if self.device.startswith("cuda") else TRACKER_SOURCE
        return {"tensor_peak_mib": max(peaks), "tensor_peak_source": source}

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` says about the run."""
        best = self.best or {}
        return {
            "experiment": self.experiment.name,
            "epochs_completed": self.epoch,
            "best_epoch": best.get("epoch", self.epoch),
            "best_val_mean_dice": best.get("val_mean_dice"),
            "best_ema_dice": best.get("ema_dice"),
            "stopped": self.stopped,
            "train_seconds": self.train_seconds,
            "peak_memory_mib": max((row["peak_memory_mib"] for row in self.log_rows), default=None),
            "peak_memory_source": self.peak_memory_source,
            **self._tensor_peak(),
            "parameters": self.parameters,
            "device": self.device,
            "world_size": self.world_size,
            "interruptions": len(self.interruptions),
            # which cases chose best.pt: never the reported ones (revunet.data.splits)
            "selection": "best validation EMA" if self.validation_cases else "last epoch",
            "validation_cases": list(self.validation_cases),
        }


def write_outputs(
    out: Path, state: TrainingState, regions: Sequence[str], only_missing: bool = False, best_changed: bool = True
) -> None:
    """``best.pt``, ``log.csv`` and (for a finished run, last) ``summary.json`` from the training state.

    ``only_missing`` leaves existing files alone; ``best_changed`` False skips an existing ``best.pt``.
    """

    def wanted(name: str) -> bool:
        return not (only_missing and (out / name).exists())

    if wanted("best.pt") and (best_changed or state.best is None or not (out / "best.pt").exists()):
        save_checkpoint(out / "best.pt", state.best_payload())
    if wanted("log.csv"):
        write_log(out / "log.csv", state.log_rows, regions)
    if state.stopped is not None and wanted("summary.json"):
        write_summary(out / "summary.json", state.summary())
