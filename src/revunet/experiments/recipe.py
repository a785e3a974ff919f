"""One experiment's complete recipe: which model, which data, how it is trained and run.

An :class:`Experiment` is what `revunet train` reads (a YAML or JSON file) and what every
checkpoint carries, so a trained model can always be rebuilt and explained. The workflow
writes one per named entry of ``config.yaml`` after applying the scale preset; users can also
write one by hand. Unknown keys, wrong types, values out of range and names that no registry
knows (model, loss, augmentation, optimizer, task: :mod:`revunet.catalog`) are errors that
name the key, so the workflow reports them when it starts, before any job runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revunet.atomic import write_text_atomic
from revunet.catalog import AUGMENTATION_PRESETS, LOSS_NAMES, MODEL_NAMES, OPTIMIZERS, TASK_NAMES
from revunet.documents import read_document

# A command-line default meaning "take this setting from the experiment".
FROM_EXPERIMENT = "experiment"
# What each name field may say (the registries' names, kept torch-free in the catalog).
KNOWN_NAMES = {
    "task": TASK_NAMES,
    "model": MODEL_NAMES,
    "loss": LOSS_NAMES,
    "augmentation": AUGMENTATION_PRESETS,
    "optimizer": OPTIMIZERS,
}


# The integer fields with a lower bound, and that bound.
LEAST = {"samples_per_volume": 1, "batch_size": 1, "accumulation": 1, "epochs": 1, "validate_every": 1,
         "max_steps_per_epoch": 1, "warmup_steps": 0, "patience": 0, "num_workers": 0, "seed": 0}  # fmt: skip


class ExperimentError(ValueError):
    """An experiment whose values are out of range or name nothing known: every problem, in one
    line, after the experiment's ``source`` (a file, or a config key path) or its name."""

    def __init__(self, name: str, problems: list[str], source: str | None = None) -> None:
        self.name, self.problems = name, problems
        super().__init__(f"{source or f'experiment {name!r}'}: " + "; ".join(problems))


@dataclass(frozen=True)
class Experiment:
    """A training + inference recipe.

    Model: ``model`` is a registry name, ``model_params`` its keyword arguments (including
    ``memory_saving`` for reversible models). Data: ``task``; ``patch_size`` None trains on
    the whole preprocessed volume; ``samples_per_volume`` patches per case per epoch.
    Optimisation: Adam-family ``optimizer`` with ``lr``/``weight_decay``; the learning rate
    is multiplied by ``gamma`` at each epoch in ``milestones``; ``accumulation`` micro-batches
    per optimiser step; ``max_steps_per_epoch`` caps an epoch (None: one pass over the data);
    ``grad_clip_norm`` rescales each step's gradient to at most that global L2 norm (None: off);
    ``warmup_steps`` ramps the learning rate linearly over the first optimiser steps (k/N of it at step k).
    Early stopping: validation (full volumes) every ``validate_every`` epochs; an exponential
    moving average (``ema_alpha``) of the validation mean Dice; stop when the epoch exceeds the
    EMA's best epoch + ``patience``. ``loss`` and ``augmentation`` name presets of
    :data:`revunet.training.losses.LOSSES` and :class:`revunet.data.augment.AugmentationConfig`;
    ``loss_params`` overrides fields of the loss preset (e.g. ``{smooth: 1.0e-5}``).
    Inference: ``sliding_window`` None predicts the full volume, else the window size;
    ``window_overlap`` in voxels; ``test_time_flips`` averages over axis flips.
    Provenance: ``paper``/``table``/``row`` link the experiment to the paper's table row.
    Speed: ``compile`` runs the model's blocks through ``torch.compile`` in training and inference,
    the reversible core staying eager (:mod:`revunet.models.compiled`); checkpoints are the same.
    Memory: ``measure_memory`` records the training steps' peak memory in log.csv and summary.json
    (:mod:`revunet.memory.experiment_peak`; the smoke run sets it).
    Reporting: ``snapshot_epochs`` keeps the weights of those epochs as ``epoch_NNNN.pt``, predicted and
    scored on the test part like ``best.pt`` (Pendse et al.'s Dice "after 50 epochs"): reported, never selected.
    """

    name: str
    task: str
    model: str
    model_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "bruegger2019"
    loss_params: dict[str, Any] = field(default_factory=dict)
    augmentation: str = "none"
    patch_size: tuple[int, int, int] | None = None
    samples_per_volume: int = 1
    batch_size: int = 1
    accumulation: int = 1
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    snapshot_epochs: tuple[int, ...] = ()
    gamma: float = 0.2
    epochs: int = 1
    max_steps_per_epoch: int | None = None
    validate_every: int = 1
    ema_alpha: float = 0.95
    patience: int | None = None
    amp: bool = False
    compile: bool = False
    measure_memory: bool = False
    num_workers: int = 0
    seed: int = 0
    sliding_window: tuple[int, int, int] | None = None
    window_overlap: int = 0
    test_time_flips: bool = False
    paper: str = ""
    table: str = ""
    row: str = ""

    def __post_init__(self) -> None:
        problems = _name_problems(self) + _range_problems(self)
        if problems:
            raise ExperimentError(self.name, problems)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "experiment") -> Experiment:
        """Build from plain values; unknown keys or wrong types name the key and ``source``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: an experiment must be a mapping of keys, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown experiment key(s) {unknown}; known keys: {sorted(fields)}")
        missing = sorted(name for name in ("name", "task", "model") if name not in data)
        if missing:
            raise ValueError(f"{source}: experiment lacks the required key(s) {missing}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _coerce(key, value, fields[key].type, source)
        try:
            return cls(**values)
        except ExperimentError as error:
            raise ExperimentError(error.name, error.problems, source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> Experiment:
        """A copy with ``changes`` applied (validated like :meth:`from_dict`)."""
        return Experiment.from_dict({**self.to_dict(), **changes}, source=f"experiment {self.name!r}")


def _name_problems(e: Experiment) -> list[str]:
    problems = [] if e.name else ["name must not be empty"]
    for key, known in KNOWN_NAMES.items():
        if getattr(e, key) not in known:
            problems.append(f"{key} must be one of {list(known)}, got {getattr(e, key)!r}")
    return problems


def _range_problems(e: Experiment) -> list[str]:
    """Each field outside its range, as ``<key> must be <expected>, got <value>``."""
    problems = []
    for key, least in LEAST.items():
        value = getattr(e, key)
        if value is not None and value < least:
            problems.append(f"{key} must be an integer >= {least}{_OR_NULL.get(key, '')}, got {value}")
    if not 0 <= e.ema_alpha < 1:
        problems.append(f"ema_alpha must lie in [0, 1), got {e.ema_alpha}")
    for key in ("lr", "gamma", "grad_clip_norm"):
        value = getattr(e, key)
        if value is not None and not value > 0:
            problems.append(f"{key} must be positive{_OR_NULL.get(key, '')}, got {value}")
    if not e.weight_decay >= 0:
        problems.append(f"weight_decay must be a number >= 0, got {e.weight_decay}")
    for key in ("milestones", "snapshot_epochs"):
        epochs = list(getattr(e, key))
        if any(m < 1 for m in epochs) or epochs != sorted(set(epochs)):
            problems.append(f"{key} must be increasing epochs >= 1, got {epochs}")
    for key in ("patch_size", "sliding_window"):
        value = getattr(e, key)
        if value is not None and (len(value) != 3 or any(v < 1 for v in value)):
            problems.append(f"{key} must be three positive integers or null, got {list(value)}")
    if e.window_overlap < 0 or e.window_overlap % 2:
        problems.append(f"window_overlap must be an even number of voxels >= 0, got {e.window_overlap}")
    elif e.sliding_window is not None and e.window_overlap >= min(e.sliding_window):
        problems.append(
            f"window_overlap must be smaller than sliding_window {list(e.sliding_window)}, got {e.window_overlap}"
        )
    return problems


# " or null" after what a field that may be null must be.
_OR_NULL = {f.name: " or null" for f in dataclasses.fields(Experiment) if "None" in str(f.type)}


def _coerce(key: str, value: Any, annotation: str, source: str) -> Any:
    """Check ``value`` against the field's annotation (a string, as annotations are postponed)."""
    where = f"{source}: key {key!r}"
    nullable = "None" in annotation
    if value is None:
        if not nullable:
            raise ValueError(f"{where} must not be null")
        return None
    base = annotation.replace(" | None", "")
    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if base.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{where} must be a list of integers, got {value!r}")
        return tuple(int(v) for v in value)
    if base.startswith("dict"):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"{where}: unsupported annotation {annotation}")  # pragma: no cover - programming error


def read_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Read an experiment from a YAML or JSON file (JSON is YAML)."""
    path = Path(path)
    try:
        data = read_document(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no experiment file at {path}") from None
    return Experiment.from_dict(data, source=str(path))


def write_experiment(path: str | os.PathLike[str], experiment: Experiment) -> Path:
    """Write ``experiment`` atomically as JSON (readable by :func:`read_experiment`)."""
    return write_text_atomic(path, json.dumps(experiment.to_dict(), indent=2, sort_keys=True) + "\n")
