"""The smoke run (``smoke: true``): every selected experiment at its preset's sizes, for a few steps.

What PyTorch Lightning's ``fast_dev_run`` is for one model, for the whole pipeline: before a
lab books GPU-days for the paper preset, each experiment trains ``steps`` optimiser steps at
its real patch or volume size, model widths, VAE input, AMP and launcher, validates on one
case where its split selects, predicts and scores one test case (sliding window and flips as its recipe says),
and the tables, figures and report are written under ``results/smoke/``, marked as a smoke run.

Data: a dataset the preset reads from a local folder becomes, without ``data_root``, the
synthetic dataset at ``spacing`` mm (1 mm: the BraTS 240x240x155 and iSeg 144x192x256 grids)
written in the on-disk layout of the folder the preset names (BraTS 2018's HGG/LGG for
Brügger et al., BraTS 2020 for the others, iSeg 2019), so the real layout readers are run;
with ``data_root`` the real folder is read, its first ``subjects`` cases only. Either way each
split keeps its roles at one case each where it can: one test case, one validation case where
the split selects a checkpoint, and the rest for training.

Torch-free, like the rest of :mod:`revunet.experiments` (Snakemake imports it on every parse).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from revunet.catalog import SYNTHETIC_LAYOUTS
from revunet.experiments.config_files import ConfigError
from revunet.experiments.datasets import DatasetPlan, SplitPlan, plan_dataset
from revunet.experiments.recipe import Experiment

SMOKE_RESULTS = "results/smoke"
DEFAULT_JOB = {"threads": 2, "gpus": 1, "mem_mb": 16000, "runtime": 120}


@dataclass(frozen=True)
class SmokeSettings:
    """The ``smoke_run`` block of the config (schema-checked; defaults in the schema)."""

    steps: int = 2
    subjects: int = 3
    spacing: float = 1.0
    processes: int = 2  # processes of a multi-GPU experiment on a machine without GPUs (gloo)
    num_workers: int = 1  # data-loader workers at most
    compiled: bool = True  # also train with compile: true, for seconds per step compiled
    # `revunet capacity` arguments: one model proves the command, the full search is the real run's
    capacity: tuple[str, ...] = ("--models", "mbconv-base")
    train: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_JOB))
    infer: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_JOB))

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> SmokeSettings:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ConfigError(f"config: smoke_run: unknown key(s) {unknown}; known: {sorted(known)}")
        settings = cls(**block)
        if settings.subjects < 3:
            raise ConfigError(
                f"config: smoke_run.subjects: got {settings.subjects}, expected at least 3 "
                "(one case to train on, one to validate on, one to test on)"
            )
        return settings


def smoke_experiment(experiment: Experiment, settings: SmokeSettings, processes: int = 1) -> Experiment:
    """``experiment`` cut to one epoch of ``settings.steps`` steps, validated, with its memory measured.

    Everything that decides memory and speed (sizes, model, AMP, batch, accumulation, inference)
    stays as the preset says; only the length of training and early stopping change, and enough
    samples are drawn per volume that each of up to ``processes`` ranks gets its steps.
    """
    needed = settings.steps * experiment.batch_size * experiment.accumulation * max(processes, 1)
    samples = max(experiment.samples_per_volume, -(-needed // (settings.subjects - 2)))
    return experiment.replace(
        samples_per_volume=samples,
        epochs=1,
        max_steps_per_epoch=settings.steps,
        validate_every=1,
        patience=None,
        num_workers=min(experiment.num_workers, settings.num_workers),
        measure_memory=True,
    )


def compiled_twin(experiment: Experiment) -> Experiment:
    """The smoke experiment again with ``compile: true``: seconds per step compiled beside eager."""
    return experiment.replace(compile=True, measure_memory=False)  # the tracker would stop dynamo tracing


def _smoke_splits(splits: Mapping[str, SplitPlan], subjects: int) -> dict[str, SplitPlan]:
    """Every split cut to one test case, one validation case where it selects, the rest for
    training (its seed kept), so the smoke run exercises each role the real run will."""
    return {
        name: dataclasses.replace(
            split,
            fraction=None,
            validation=None,
            counts=(subjects - 2, 1, 1) if split.selects else (subjects - 1, 1),
        )
        for name, split in splits.items()
    }


def synthetic_layout(task: str, path: str | None) -> str:
    """The layout of the folder ``path`` the preset reads (BraTS 2018, 2020, iSeg), for synthetic data in its place."""
    folder = os.path.basename(os.path.normpath(path or ""))
    for layout, (layout_task, layout_folder) in SYNTHETIC_LAYOUTS.items():
        if layout_task == task and folder == layout_folder:
            return layout
    return next(layout for layout, (layout_task, _) in SYNTHETIC_LAYOUTS.items() if layout_task == task)


def smoke_dataset(
    name: str, entry: Mapping[str, Any], preset: str, data_root: str | None, settings: SmokeSettings
) -> DatasetPlan:
    """Dataset ``name`` for the smoke run: synthetic in place of a folder without ``data_root``, else its first cases.

    A synthetic dataset keeps its preset's spacing and shape with ``settings.subjects`` subjects.
    """
    block = entry.get(preset)
    if data_root is None and isinstance(block, Mapping) and block.get("source") != "synthetic":
        replaced = {key: value for key, value in block.items() if key not in ("path", "layout", "exclude_cases")}
        plan = plan_dataset(name, {**entry, preset: {**replaced, "source": "synthetic"}}, preset, None)
        layout = synthetic_layout(plan.task, block.get("path"))
        plan = dataclasses.replace(plan, synthetic_layout=layout, spacing=settings.spacing)
    else:
        plan = plan_dataset(name, entry, preset, data_root)
    splits = _smoke_splits(plan.splits, settings.subjects)
    if plan.source == "synthetic":
        return dataclasses.replace(plan, subjects=settings.subjects, splits=splits)
    return dataclasses.replace(plan, max_cases=settings.subjects, splits=splits)
