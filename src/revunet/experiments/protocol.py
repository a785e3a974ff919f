"""The paper protocol the plan enforces: which cases choose a checkpoint, on which canvas an
experiment trains, and that two canvases of one folder are tested on the same cases.

A replication's tables are honest only if the cases that choose a checkpoint are not the cases
reported (:mod:`revunet.data.splits`), and if an experiment predicts on the canvas it trained on
(docs/protocol.md). Part of :mod:`revunet.experiments.plan`; torch-free like it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from revunet.experiments.config_files import ConfigError
from revunet.experiments.datasets import DatasetPlan, SplitPlan
from revunet.experiments.recipe import Experiment


def check_selection(name: str, experiment: Experiment, split: SplitPlan, dataset: DatasetPlan, preset: str) -> None:
    """Early stopping needs cases to stop on: a split without a validation part selects nothing."""
    if experiment.patience is not None and not split.selects:
        raise ConfigError(
            f"config: experiments.{name}.patience: early stopping needs a validation part, but split "
            f"{split.name!r} of dataset {dataset.name!r} at preset {preset} has none (give it a 'validation' "
            "share or three counts), or set patience: null to train every epoch"
        )


def check_canvas(name: str, experiment: Experiment, dataset: DatasetPlan, preset: str) -> None:
    """One canvas from training to inference: a training patch lies inside the preprocessed volume,
    so no experiment trains on padding it never predicts with (a whole-volume input is the canvas)."""
    patch, shape = experiment.patch_size, dataset.shape
    if patch is None or shape is None:
        return
    if any(p > s for p, s in zip(patch, shape)):
        raise ConfigError(
            f"config: experiments.{name}.patch_size: {list(patch)} is larger than the volumes of dataset "
            f"{dataset.name!r} at preset {preset} ({list(shape)}, datasets.{dataset.name}.{preset}.shape): "
            "training would see padding that validation and inference never do; preprocess to that canvas "
            "(a dataset whose shape is the patch) or use a smaller patch"
        )


def check_shared_folders(datasets: Mapping[str, DatasetPlan], preset: str) -> None:
    """Datasets reading one folder on two canvases (Pendse et al.'s brats and brats_whole) must draw
    the same splits from the same cases, or the rows of one table would be tested on different cases."""
    by_folder: dict[tuple[Any, ...], DatasetPlan] = {}
    for dataset in datasets.values():
        if dataset.source == "synthetic":
            continue
        first = by_folder.setdefault((dataset.source, dataset.path, dataset.task), dataset)
        shared = sorted(set(first.splits) & set(dataset.splits))
        differing = [name for name in shared if first.splits[name] != dataset.splits[name]]
        if first.exclude_cases != dataset.exclude_cases:
            differing.append("exclude_cases")
        if differing:
            raise ConfigError(
                f"config: datasets {first.name!r} and {dataset.name!r} read the same folder at preset {preset} "
                f"but differ in {differing}: set them alike (datasets.{first.name}.{preset} and "
                f"datasets.{dataset.name}.{preset}), so their experiments are tested on the same cases"
            )


def _size(shape: tuple[int, ...] | None, none: str) -> str:
    return none if shape is None else "x".join(map(str, shape))


def protocol_row(name: str, experiment: Experiment, dataset: DatasetPlan, split: str, gpus: int) -> dict[str, str]:
    """How an experiment uses its data, in words (`revunet experiment --list`): the canvas it is
    preprocessed to beside its training input, its split, which part chooses its checkpoint, how it predicts."""
    scheme = dataset.splits[split]
    inference = _size(experiment.sliding_window, "whole volume")
    if experiment.sliding_window is not None:
        inference += f" windows, overlap {experiment.window_overlap}"
    return {
        "experiment": name,
        "dataset": f"{dataset.name}/{split}",
        "canvas": _size(dataset.shape, "bounding box"),
        "training_input": _size(experiment.patch_size, "whole volume"),
        "split": scheme.scheme().replace(":", " ").replace(",validation", " validation"),
        "selection": "best validation EMA" if scheme.selects else "none (last epoch)",
        "reported": "test part",
        "inference": inference + (", flips" if experiment.test_time_flips else ""),
        "gpus": str(gpus),
    }
