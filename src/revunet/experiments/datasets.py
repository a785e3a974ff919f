"""The datasets of the workflow's plan: where a dataset's cases come from, how they are prepared, its splits.

Part of :mod:`revunet.experiments.plan` (torch-free: Snakemake imports it on every parse).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from revunet.catalog import SYNTHETIC_FOLDERS, SYNTHETIC_LAYOUTS
from revunet.experiments.config_files import ConfigError, expect_choice, expect_mapping

SOURCES = ("synthetic", "local", "decathlon")


@dataclass(frozen=True)
class SplitPlan:
    """A named train / validation / test split of one dataset (see ``revunet split``)."""

    name: str
    fraction: float | None = None
    counts: tuple[int, ...] | None = None
    seed: int = 0
    validation: float | None = None  # with fraction: the share of the cases that chooses the checkpoint

    @property
    def selects(self) -> bool:
        """Whether the split has a validation part, on which a checkpoint is chosen."""
        return self.validation is not None or (self.counts is not None and len(self.counts) == 3)

    def scheme(self) -> str:
        """The scheme as :func:`revunet.data.splits.parse_scheme` reads it (e.g. ``counts:329,40``)."""
        if self.counts is not None:
            return "counts:" + ",".join(str(c) for c in self.counts)
        validation = f",validation:{self.validation:g}" if self.validation is not None else ""
        return f"fraction:{self.fraction:g}{validation}"

    def arguments(self) -> str:
        """The ``revunet split`` options that draw this split."""
        if self.counts is not None:
            scheme = "--counts " + ",".join(str(c) for c in self.counts)
        else:
            scheme = f"--fraction {self.fraction:g}"
            if self.validation is not None:
                scheme += f" --validation {self.validation:g}"
        return f"{scheme} --seed {self.seed}"


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset at the chosen preset: where its cases come from and how they are prepared."""

    name: str
    task: str
    source: str
    path: str | None = None
    layout: str = "auto"
    subjects: int | None = None
    spacing: float = 3.0
    seed: int = 0
    shape: tuple[int, int, int] | None = None
    splits: dict[str, SplitPlan] = field(default_factory=dict)
    # Cases left out of the case table, hence of preprocessing and splits (ids from the raw folder).
    exclude_cases: tuple[str, ...] = ()
    preset: str = "demo"
    # The on-disk layout synthetic data is written in (None: the task's default; the smoke run sets it).
    synthetic_layout: str | None = None
    # Only the first cases of the folder, in id order (None: all; the smoke run on real data sets it).
    max_cases: int | None = None

    @property
    def synthetic_folder(self) -> str:
        """Name of the folder `revunet synth` writes."""
        if self.synthetic_layout is None:
            return SYNTHETIC_FOLDERS[self.task]
        return SYNTHETIC_LAYOUTS[self.synthetic_layout][1]

    def synth_arguments(self) -> str:
        """The ``revunet synth`` options (apart from ``--out``)."""
        subjects = f" --subjects {self.subjects}" if self.subjects is not None else ""
        layout = f" --layout {self.synthetic_layout}" if self.synthetic_layout is not None else ""
        return f"--task {self.task}{layout}{subjects} --spacing {self.spacing:g} --seed {self.seed}"

    @property
    def exclude_key(self) -> str:
        """The config key that leaves cases out, named in messages about unknown or broken cases."""
        return f"datasets.{self.name}.{self.preset}.exclude_cases"

    def cases_arguments(self) -> str:
        """The ``revunet cases`` options that leave out ``exclude_cases`` (naming their key) and keep ``max_cases``."""
        exclude = " --exclude " + " ".join(shlex.quote(c) for c in self.exclude_cases) if self.exclude_cases else ""
        first = f" --first {self.max_cases}" if self.max_cases is not None else ""
        return f"--exclude-key {self.exclude_key}{exclude}{first}"

    def shape_argument(self) -> str:
        """``--shape`` of ``revunet preprocess``: ``X,Y,Z`` or ``none`` (bounding box only)."""
        return "none" if self.shape is None else ",".join(str(s) for s in self.shape)


def plan_dataset(name: str, entry: Mapping[str, Any], preset: str, data_root: str | None) -> DatasetPlan:
    """Dataset ``name`` at ``preset``: its source, path (against ``data_root``), preprocessing and splits."""
    where = f"datasets.{name}.{preset}"
    settings = expect_mapping(entry[preset], where)
    task = expect_choice(entry.get("task"), tuple(SYNTHETIC_FOLDERS), f"datasets.{name}.task")
    source = expect_choice(settings.get("source"), SOURCES, f"{where}.source")
    path = settings.get("path")
    if source == "local":
        if not path:
            raise ConfigError(f"config: {where}.path: a local dataset needs the path of its folder")
        path = _resolve(path, data_root, f"{where}.path")
    elif source == "decathlon":
        if path:
            raise ConfigError(
                f"config: {where}.path: a Decathlon download goes to results/data/{name}/raw; "
                "to use a copy you already have, set source: local and its path"
            )
        if task != "brats":
            raise ConfigError(f"config: {where}.source: the Decathlon download is BraTS data, but the task is {task!r}")
    splits_config = expect_mapping(settings.get("splits", {}), f"{where}.splits")
    if not splits_config:
        raise ConfigError(f"config: {where}.splits: define at least one split")
    splits = {split: _split(split, value, f"{where}.splits.{split}") for split, value in splits_config.items()}
    shape = settings.get("shape")
    return DatasetPlan(
        name=name,
        task=task,
        source=source,
        path=path,
        layout=settings.get("layout", "auto"),
        subjects=settings.get("subjects"),
        spacing=float(settings.get("spacing", 3.0)),
        seed=int(settings.get("seed", 0)),
        shape=None if shape is None else tuple(int(s) for s in shape),
        splits=splits,
        exclude_cases=exclude_cases(settings.get("exclude_cases"), f"{where}.exclude_cases"),
        preset=preset,
    )


def exclude_cases(value: Any, where: str) -> tuple[str, ...]:
    """Case ids to leave out; checked against the raw folder when the case table is built."""
    if value is not None and not (isinstance(value, list) and all(isinstance(c, str) and c.strip() for c in value)):
        raise ConfigError(f"config: {where}: expected a list of case ids like [BraTS20_Training_355], got {value!r}")
    return tuple(dict.fromkeys(value or ()))


def _split(name: str, value: Any, where: str) -> SplitPlan:
    value = expect_mapping(value, where)
    if ("fraction" in value) == ("counts" in value):
        raise ConfigError(f"config: {where}: give exactly one of 'fraction' or 'counts'")
    counts = value.get("counts")
    if counts is not None and "validation" in value:
        raise ConfigError(f"config: {where}: with counts, give the validation count as the middle of three counts")
    fraction, validation = value.get("fraction"), value.get("validation")
    if fraction is not None and validation is not None and not 0 < validation < 1 - fraction:
        raise ConfigError(
            f"config: {where}.validation: got {validation}, expected a share in (0, {1 - fraction:g}) "
            "so that a test part remains"
        )
    return SplitPlan(
        name=name,
        fraction=fraction,
        counts=None if counts is None else tuple(int(c) for c in counts),
        seed=int(value.get("seed", 0)),
        validation=validation,
    )


def _resolve(path: str, data_root: str | None, where: str) -> str:
    if os.path.isabs(os.path.expanduser(path)):
        return os.path.expanduser(path)
    if not data_root:
        raise ConfigError(
            f"config: {where}: {path!r} is relative, so data_root must say where it lies (--config data_root=...)"
        )
    return os.path.join(os.path.expanduser(data_root), path)
