"""The smoke run's own table, and the mark every table and figure of a smoke run carries.

A smoke run (config ``smoke: true``, :mod:`revunet.experiments.smoke`) trains each experiment
for a few steps at its full size: its Dice means nothing, but it shows that every paper
experiment runs end to end, how long one step takes (eager and compiled) and how much memory
it really allocated beside what ``revunet memory`` predicts for the same configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from revunet.catalog import SMOKE_TABLE
from revunet.experiments.recipe import Experiment
from revunet.report.inputs import (
    ReportContext,
    case_mean_dice,
    experiment_order,
    read_json_checked,
    training_log,
    training_summary,
)
from revunet.report.markdown import ReportTable, TableView

SMOKE_TITLE = "SMOKE RUN"
SMOKE_NOTE = (
    "SMOKE RUN, NOT RESULTS: every experiment trained a few steps at its full size to prove the pipeline; "
    "its Dice and HD95 mean nothing."
)
# What the training summary (revunet train) and the prediction (revunet memory --experiment) call the peaks.
MEASURED_KEY = "tensor_peak_mib"
MEASURED_SOURCE_KEY = "tensor_peak_source"
PREDICTED_KEY = "peak_mib"
SMOKE_COLUMNS = (
    "experiment", "table", "row", "input", "processes", "device", "train_s", "validation_s", "first_step_s", "step_s",
    "compiled_first_step_s",
    "compiled_step_s", "compiled_speedup", "measured_peak_mib", "measured_by", "predicted_peak_mib",
    "measured_over_predicted", "test_mean_dice",
)  # fmt: skip
# The smoke table's views, each beside the experiment: what ran where, how fast, how much memory.
SMOKE_VIEWS = (
    TableView(
        "run",
        "What ran where: the paper row, the input, the processes and device, the wall times and the (meaningless) "
        "test Dice.",
        ("experiment", "table", "row", "input", "processes", "device", "train_s", "validation_s", "test_mean_dice"),
    ),
    TableView(
        "speed",
        "Seconds per training step, eager and compiled, and the speed-up compiling gives.",
        ("experiment", "first_step_s", "step_s", "compiled_first_step_s", "compiled_step_s", "compiled_speedup"),
    ),
    TableView(
        "memory",
        "The peak of live tensor bytes the training steps allocated next to `revunet memory`'s prediction.",
        ("experiment", "measured_peak_mib", "measured_by", "predicted_peak_mib", "measured_over_predicted"),
    ),
)


def mark_smoke(table: ReportTable) -> ReportTable:
    """``table`` with the smoke run's mark on its title and at the head of its caption."""
    return dataclasses.replace(table, title=f"{SMOKE_TITLE}: {table.title}", caption=f"{SMOKE_NOTE} {table.caption}")


def _input_size(experiment: Experiment) -> str:
    if experiment.patch_size is None:
        return "whole volume"
    return "x".join(str(s) for s in experiment.patch_size)


def _step_times(log: pd.DataFrame | None) -> tuple[float | None, float | None]:
    """(first step, typical step) in seconds from the first epoch of ``log.csv``, None when absent."""
    if log is None or log.empty or "step_seconds" not in log.columns:
        return None, None
    row = log.iloc[0]
    return _number(row.get("first_step_seconds")), _number(row.get("step_seconds"))


def _validation_seconds(log: pd.DataFrame | None) -> float | None:
    """The validations' wall time (part of ``train_s``), None where the split selects nothing."""
    if log is None or "validation_seconds" not in log.columns or log["validation_seconds"].isna().all():
        return None
    return float(log["validation_seconds"].sum())


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) or value == "" else float(value)


def _predicted(folder: Path | None, name: str) -> float | None:
    if folder is None:
        return None
    prediction = read_json_checked(folder / f"{name}.json", [PREDICTED_KEY], "`revunet memory --experiment` output")
    return None if prediction is None else _number(prediction[PREDICTED_KEY])


def _row(context: ReportContext, experiment: Experiment) -> dict[str, Any]:
    inputs = context.inputs
    summary = training_summary(inputs.training, experiment.name) or {}
    log = training_log(inputs.training, experiment.name)
    first, step = _step_times(log)
    compiled_first, compiled_step = _step_times(training_log(inputs.compiled_training, experiment.name))
    measured, predicted = _number(summary.get(MEASURED_KEY)), _predicted(inputs.predicted_memory, experiment.name)
    metrics = context.metrics(experiment)
    return {
        "experiment": experiment.name,
        "table": experiment.table,
        "row": experiment.row,
        "input": _input_size(experiment),
        "processes": summary.get("world_size"),
        "device": summary.get("device"),
        "train_s": _number(summary.get("train_seconds")),
        "validation_s": _validation_seconds(log),
        "first_step_s": first,
        "step_s": step,
        "compiled_first_step_s": compiled_first,
        "compiled_step_s": compiled_step,
        "compiled_speedup": step / compiled_step if step and compiled_step else None,
        "measured_peak_mib": measured,
        "measured_by": summary.get(MEASURED_SOURCE_KEY),
        "predicted_peak_mib": predicted,
        "measured_over_predicted": measured / predicted if measured and predicted else None,
        "test_mean_dice": None if metrics is None else case_mean_dice(metrics),
    }


def smoke_table(context: ReportContext) -> ReportTable:
    """One row per experiment: input size, seconds per step eager and compiled, measured vs predicted peak."""
    rows = [_row(context, experiment) for experiment in experiment_order(context.experiments)]
    data = pd.DataFrame(rows, columns=list(SMOKE_COLUMNS))
    caption = (
        f"{SMOKE_NOTE} train_s: the training job's wall time (steps, validation, checkpoints), validation_s its "
        "validation's share (empty where the split selects nothing). Seconds per step: the median of the epoch's steps after its first, which pays for "
        "warm-up (and, compiled, for compilation). Measured peak: the live tensor bytes the training steps "
        "really allocated (CPU: the tracking of `revunet memory --mode cpu`; CUDA: `max_memory_allocated`); "
        "predicted: `revunet memory --experiment` for the same configuration (fake tensors)."
    )
    formats = {column: ".1f" for column in data.columns if column.endswith(("_s", "_mib"))}
    formats.update({"compiled_speedup": ".2f", "measured_over_predicted": ".3f", "test_mean_dice": ".3f"})
    return ReportTable(
        name=SMOKE_TABLE,
        title=f"{SMOKE_TITLE}: every experiment at its full size",
        caption=caption,
        data=data,
        formats=formats,
        views=list(SMOKE_VIEWS),
    )
