"""Pendse et al. 2020's Tables 1 (memory at a constant 14 GB) and 2 (mean Dice early and converged)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from revunet.experiments.recipe import Experiment
from revunet.papers import paper_results
from revunet.report.inputs import ReportContext, case_mean_dice, case_metrics, snapshot_folder, training_summary
from revunet.report.markdown import ReportTable, TableView
from revunet.report.tables.common import MEMORY_NOTE, memory_row, optional_memory, table_caption

DICE_HEADERS = {
    "row": "Configuration",
    "experiment": "Experiment",
    "paper_dice_50_epochs": "paper, 50 epochs",
    "paper_dice_converged": "paper, converged",
    "early_epoch": "our early epoch",
    "reproduced_test_dice_early": "ours (test part) at that epoch",
    "best_epoch": "our best.pt epoch",
    "reproduced_test_dice": "ours (test part, best.pt)",
    "data": "Data",
}
# The paper's mean Dice next to ours at the comparable epoch: early in training, then converged.
DICE_VIEWS = (
    TableView(
        "early",
        "Early in training: the paper's mean Dice after 50 of 500 epochs next to ours at our snapshot epoch.",
        ("row", "experiment", "paper_dice_50_epochs", "early_epoch", "reproduced_test_dice_early"),
    ),
    TableView(
        "converged",
        "After convergence: the paper's mean Dice next to ours with best.pt, and the data ours come from.",
        ("row", "experiment", "paper_dice_converged", "best_epoch", "reproduced_test_dice", "data"),
    ),
)


def pendse_memory_table(context: ReportContext) -> ReportTable:
    """Pendse et al.'s Table 1: every configuration at a constant 14 GB; do ours fit 14 GiB?"""
    paper = paper_results()["pendse2020"]
    memory = context.memory_table("pendse2020")
    records = []
    for entry in paper["rows"]:
        measured = memory_row(memory, entry["row"])
        budget = float(entry["memory"])
        record: dict[str, Any] = {
            "row": entry["row"],
            "input_shape": measured["input_shape"] if measured is not None else "",
            "paper_memory_gib": budget,
            "measured_memory_gib": measured["measured_mb"] / 1024 if measured is not None else None,
            "memory_ratio": measured["ratio"] if measured is not None else None,
            "floor_memory_gib": optional_memory(measured, "floor_mb", 1024.0),
            "memory_vs_floor": optional_memory(measured, "measured_vs_floor", 1.0),
            "fits_paper_memory": bool(measured["measured_mb"] <= budget * 1024) if measured is not None else None,
        }
        twin = measured.get("twin_mb") if measured is not None else None
        record["twin_memory_gib"] = float(twin) / 1024 if twin is not None and not pd.isna(twin) else None
        record["twin_fits_paper_memory"] = (
            bool(float(twin) <= budget * 1024) if record["twin_memory_gib"] is not None else None
        )
        records.append(record)
    frame = pd.DataFrame(records)
    headers = {
        "row": "Configuration",
        "input_shape": "Input",
        "paper_memory_gib": "Memory GiB paper",
        "measured_memory_gib": "Memory GiB measured",
        "memory_ratio": "measured/paper",
        "floor_memory_gib": "floor GiB",
        "memory_vs_floor": "measured/floor",
        "fits_paper_memory": "fits 14 GiB",
        "twin_memory_gib": "non-reversible twin GiB",
        "twin_fits_paper_memory": "twin fits 14 GiB",
    }
    formats = {
        "paper_memory_gib": ".0f",
        "measured_memory_gib": ".2f",
        "memory_ratio": ".2f",
        "floor_memory_gib": ".2f",
        "memory_vs_floor": ".2f",
        "twin_memory_gib": ".2f",
    }
    caption = (
        "Pendse et al. sized all four configurations to a constant 14 GB per GPU (read as GiB). "
        + MEMORY_NOTE.format(table="pendse2020").replace(", independent of the data and scale above", "")
        + " Mixed precision (float16 autocast), batch 1 per GPU. No training data is involved in this table."
    )
    missing = {c: "not measured" for c in frame.columns}
    return ReportTable(
        "pendse2020_memory",
        "Pendse et al. 2020, Table 1: memory of each configuration, paper vs measured",
        caption,
        frame,
        formats,
        headers,
        missing,
    )


def pendse_dice_table(context: ReportContext) -> ReportTable:
    """Pendse et al.'s Table 2: mean Dice early in training and after convergence, paper vs reproduced,
    both on the test part (the early value from the weights of the experiment's first ``snapshot_epochs``)."""
    paper = paper_results()["pendse2020"]
    linked = context.linked["pendse2020"]
    records = []
    for entry in paper["rows"]:
        experiment = linked.get(entry["row"])
        record: dict[str, Any] = {
            "row": entry["row"],
            "experiment": experiment.name if experiment else "",
            "paper_dice_50_epochs": float(entry["dice_50_epochs"]),
            "paper_dice_converged": float(entry["dice_converged"]),
            **{key: None for key in ("early_epoch", "reproduced_test_dice_early", "best_epoch")},
            "reproduced_test_dice": None,
            "data": "",
        }
        if experiment is not None:
            record.update(_pendse_reproduced(context, experiment))
        records.append(record)
    frame = pd.DataFrame(records)
    for column in ("early_epoch", "best_epoch"):
        frame[column] = frame[column].astype("Int64")
    formats = {c: ".4f" for c in frame.columns if "dice" in c}
    formats.update({c: ".0f" for c in ("early_epoch", "best_epoch")})
    extra = (
        "Mean Dice = per case the mean over WT, TC and ET, then the mean over cases (as fractions, like the paper). "
        "Both of ours are `revunet evaluate` on the split's test part (the paper's 40-case hold-out): early, the "
        "weights kept at the experiment's snapshot epoch (the paper's epoch 50 of 500: `snapshot_epochs`); then "
        "best.pt, the last epoch where the split selects nothing, as in the paper."
    )
    caption = table_caption(context, "pendse2020", linked.values(), "", extra)
    return ReportTable(
        "pendse2020_dice",
        "Pendse et al. 2020, Table 2: mean Dice, paper vs reproduced",
        caption,
        frame,
        formats,
        dict(DICE_HEADERS),
        {"experiment": "–", "data": "–"},
        list(DICE_VIEWS),
    )


def _pendse_reproduced(context: ReportContext, experiment: Experiment) -> dict[str, Any]:
    values: dict[str, Any] = {}
    early = [epoch for epoch in experiment.snapshot_epochs if epoch <= experiment.epochs]
    if early:
        metrics = case_metrics(context.inputs.evaluations, snapshot_folder(experiment.name, early[0]))
        if metrics is not None:
            values["early_epoch"] = early[0]
            values["reproduced_test_dice_early"] = round(case_mean_dice(metrics), 4)
    summary = training_summary(context.inputs.training, experiment.name)
    if summary is not None:
        values["best_epoch"] = int(summary["best_epoch"])
    metrics = context.metrics(experiment)
    if metrics is not None:
        values["reproduced_test_dice"] = round(case_mean_dice(metrics), 4)
    values["data"] = context.data_of(experiment)
    return values
