"""Every table of the three papers rebuilt with the papers' numbers and ours side by side.

The papers' numbers come from ``paper_results.yaml`` (:mod:`revunet.papers`); ours
from the workflow's outputs (formats in the project's interface notes):

- ``EXP_DIR/<exp>.json``: the experiments; their ``table`` and ``row`` fields say which paper row
  each one reproduces;
- ``EVAL_DIR/<exp>/metrics.csv``: per held-out case and region Dice, HD95, Hausdorff, …;
- ``TRAIN_DIR/<exp>/log.csv`` and ``summary.json``: the training curve and its best epoch;
- ``MEMORY_DIR/<table>.csv`` (``revunet memory --table``), ``capacity.csv``, ``complexity.csv``:
  memory measured at the papers' full sizes, independent of the data and scale trained on;
- ``DATA_ROOT/<dataset>/cases.csv`` (optional): tells which dataset each experiment was scored on
  and whether it is synthetic (a ``revunet synth`` manifest beside the files) or real.

An input that is absent (an experiment not run yet) leaves its cells empty in the CSV and
"not run" in the Markdown; an input that is present but malformed, or an experiment linked to a
table row the papers do not have, is a :class:`ReportInputError` naming the file and what was
expected. Every table is written as CSV (numbers only, round-trips with pandas) and Markdown (a
title, a caption naming the data, the scale and where memory comes from, and the table).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.experiments.recipe import Experiment, read_experiment
from revunet.papers import paper_results

NOT_RUN = "not run"
METRICS_COLUMNS = ("experiment", "case_id", "region", "dice", "hd95", "hausdorff", "sensitivity", "specificity")
LOG_COLUMNS = ("epoch", "train_loss", "val_mean_dice", "ema_dice")
SUMMARY_KEYS = ("epochs_completed", "best_epoch", "best_val_mean_dice")
MEMORY_COLUMNS = ("row", "input_shape", "paper_mb", "measured_mb", "ratio")
COMPLEXITY_COLUMNS = ("depth", "method", "activations_mb", "growth_exponent", "claimed", "claimed_exponent")
CAPACITY_COLUMNS = (
    "key",
    "config",
    "dimension",
    "ratio_of",
    "reversible_value",
    "twin_value",
    "ratio",
    "budget_gib",
    "reversible_capped",
    "twin_capped",
)
# The paper tables whose rows experiments reproduce, and the task each was trained on.
TABLE_TASKS = {"bruegger2019": "brats", "invres_iseg": "iseg", "invres_brats": "brats", "pendse2020": "brats"}
LAYOUT_DATASETS = {
    "brats2018": "BraTS 2018",
    "brats2020": "BraTS 2020",
    "brats2021": "BraTS 2021",
    "brats2023": "BraTS 2023 GLI",
    "msd": "Decathlon Task01 BrainTumour",
    "iseg": "iSeg",
}
SYNTH_MANIFEST = "synth_manifest.json"
# Pendse et al. compare at epoch 50 of 500: the same fraction of a scaled-down schedule.
PENDSE_EARLY_FRACTION = 50 / 500
COMPLEXITY_METHODS = {"naive": "naive", "checkpointing": "checkpointing", "invertible": "reversible"}


class ReportInputError(ValueError):
    """An input of the report is malformed or inconsistent; the message names the file and what was expected."""


# --------------------------------------------------------------------------- reading inputs


def read_csv_checked(path: Path, required: Sequence[str], what: str) -> pd.DataFrame | None:
    """``path`` as a DataFrame, None if it does not exist; an error naming it if unreadable or lacking columns."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: not a readable CSV ({error}); expected {what}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportInputError(f"{path}: lacks column(s) {missing}; expected {what} with columns {list(required)}")
    return frame


def read_json_checked(path: Path, required: Sequence[str], what: str) -> dict[str, Any] | None:
    """A JSON object, None if the file does not exist; an error naming it if unreadable or lacking keys."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: not valid JSON ({error}); expected {what}") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected {what} (a JSON object), got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ReportInputError(f"{path}: lacks key(s) {missing}; expected {what} with keys {list(required)}")
    return data


def read_experiments(folder: Path | None) -> list[Experiment]:
    """Every experiment file (``*.json``, ``*.yaml``, ``*.yml``) of ``folder``, sorted by name."""
    if folder is None or not folder.is_dir():
        return []
    experiments = []
    for path in sorted(
        p for p in folder.iterdir() if p.suffix in (".json", ".yaml", ".yml") and not p.name.startswith(".")
    ):
        try:
            experiments.append(read_experiment(path))
        except (ValueError, TypeError) as error:
            raise ReportInputError(f"{path}: not an experiment file ({error})") from None
    return sorted(experiments, key=lambda e: e.name)


def paper_row_labels(table: str) -> list[str]:
    return [entry["row"] for entry in paper_results()[table]["rows"]]


def link_experiments(experiments: Iterable[Experiment]) -> dict[str, dict[str, Experiment]]:
    """``{table: {row: experiment}}`` from the experiments' ``table``/``row`` fields (unlinked ones are skipped)."""
    linked: dict[str, dict[str, Experiment]] = {table: {} for table in TABLE_TASKS}
    for experiment in experiments:
        if not experiment.table:
            continue
        if experiment.table not in TABLE_TASKS:
            raise ReportInputError(
                f"experiment {experiment.name!r}: table {experiment.table!r} is not a paper table; "
                f"expected one of {list(TABLE_TASKS)}"
            )
        labels = paper_row_labels(experiment.table)
        if experiment.row not in labels:
            raise ReportInputError(
                f"experiment {experiment.name!r}: row {experiment.row!r} is not a row of paper table "
                f"{experiment.table!r}; valid rows: {labels}"
            )
        other = linked[experiment.table].get(experiment.row)
        if other is not None:
            raise ReportInputError(
                f"experiments {other.name!r} and {experiment.name!r} both claim row {experiment.row!r} "
                f"of table {experiment.table!r}; expected one experiment per row"
            )
        linked[experiment.table][experiment.row] = experiment
    return linked


def experiment_order(experiments: Iterable[Experiment]) -> list[Experiment]:
    """Experiments in the papers' table and row order, unlinked ones last by name."""
    rank = {
        (table, row): (i, j) for i, table in enumerate(TABLE_TASKS) for j, row in enumerate(paper_row_labels(table))
    }
    return sorted(experiments, key=lambda e: (rank.get((e.table, e.row), (len(rank), 0)), e.name))


def case_metrics(evaluations: Path | None, name: str) -> pd.DataFrame | None:
    """``EVAL_DIR/<name>/metrics.csv`` (per case x region), None if that experiment was not evaluated."""
    if evaluations is None:
        return None
    return read_csv_checked(
        evaluations / name / "metrics.csv", METRICS_COLUMNS, "the per-case metrics of `revunet evaluate`"
    )


def training_log(training: Path | None, name: str) -> pd.DataFrame | None:
    """``TRAIN_DIR/<name>/log.csv`` (one row per epoch), None if that experiment was not trained."""
    if training is None:
        return None
    return read_csv_checked(training / name / "log.csv", LOG_COLUMNS, "the training log of `revunet train`")


def training_summary(training: Path | None, name: str) -> dict[str, Any] | None:
    """``TRAIN_DIR/<name>/summary.json``, None if that run has not finished."""
    if training is None:
        return None
    return read_json_checked(training / name / "summary.json", SUMMARY_KEYS, "the run summary of `revunet train`")


def region_mean(metrics: pd.DataFrame, region: str, metric: str, source: str) -> float:
    """Mean of ``metric`` over the cases of ``region`` (NaN cells skipped); an error if the region is absent."""
    values = metrics.loc[metrics["region"].astype(str) == region, metric]
    if values.empty:
        found = sorted(metrics["region"].astype(str).unique())
        raise ReportInputError(f"{source}: no rows for region {region!r}; found regions {found}")
    return float(pd.to_numeric(values, errors="coerce").mean())


def case_mean_dice(metrics: pd.DataFrame) -> float:
    """The papers' "mean Dice": per case the mean over its regions, then the mean over cases."""
    per_case = metrics.groupby(metrics["case_id"].astype(str))["dice"].mean()
    return float(per_case.mean())


# --------------------------------------------------------------------------- describing the data


@dataclass(frozen=True)
class Dataset:
    """One dataset folder of the workflow: its name, task, case ids and a description of its origin."""

    name: str
    task: str
    case_ids: frozenset[str]
    description: str
    cases: pd.DataFrame = field(compare=False, repr=False)


def _synth_manifest(files: Iterable[str], levels: int = 4) -> Path | None:
    """The ``revunet synth`` manifest in a folder above one of ``files``, if any."""
    for cell in files:
        folder = Path(str(cell).split("#")[0]).parent
        for _ in range(levels):
            if (folder / SYNTH_MANIFEST).is_file():
                return folder / SYNTH_MANIFEST
            folder = folder.parent
        break  # one file is enough: every case of a table lives in the same tree
    return None


def read_datasets(data_root: Path | None) -> list[Dataset]:
    """Every ``DATA_ROOT/<dataset>/cases.csv``, described as synthetic or as the real dataset its layout names."""
    from revunet.data.case_table import CaseTableError, read_case_table

    if data_root is None or not data_root.is_dir():
        return []
    datasets = []
    for path in sorted(data_root.glob("*/cases.csv")):
        try:
            cases = read_case_table(path)
        except (CaseTableError, ValueError, OSError) as error:
            raise ReportInputError(f"{path}: not a case table of `revunet cases` ({error})") from None
        if cases.empty:
            continue
        task, layout = str(cases["task"].iloc[0]), str(cases["layout"].iloc[0])
        manifest = _synth_manifest(cases["label"].tolist() + cases.iloc[:, 3].tolist())
        kind = {"brats": "BraTS-like", "iseg": "iSeg-like"}.get(task, task)
        where = f"dataset '{path.parent.name}', {len(cases)} cases"
        if manifest is not None:
            description = f"synthetic {kind} data (MNI152-based, `revunet synth`), {where}"
        else:
            description = f"{LAYOUT_DATASETS.get(layout, layout)} ({layout} layout), {where}"
        datasets.append(Dataset(path.parent.name, task, frozenset(cases["case_id"].astype(str)), description, cases))
    return datasets


def dataset_of(experiment: Experiment, case_ids: Iterable[str], datasets: Sequence[Dataset]) -> Dataset | None:
    """The dataset holding every case the experiment was scored on (same task), or None."""
    ids = set(map(str, case_ids))
    for dataset in datasets:
        if dataset.task == experiment.task and ids and ids <= dataset.case_ids:
            return dataset
    return None


def parse_data_descriptions(values: Sequence[str]) -> dict[str, str]:
    """``--data-description`` values: ``TEXT`` for every table, or ``brats=TEXT`` / ``iseg=TEXT`` per task."""
    descriptions: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if sep and key.strip() in ("brats", "iseg"):
            descriptions[key.strip()] = text.strip()
        else:
            descriptions[""] = value.strip()
    return descriptions


# --------------------------------------------------------------------------- the tables


@dataclass
class ReportTable:
    """A finished table: numbers for the CSV, formats and headers for the Markdown, and its caption."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec for the Markdown
    headers: dict[str, str] = field(default_factory=dict)  # column -> Markdown header
    missing: dict[str, str] = field(default_factory=dict)  # column -> text of an empty cell (default "not run")

    def markdown(self) -> str:
        columns = list(self.data.columns)
        header = [self.headers.get(c, c) for c in columns]
        lines = [f"**{self.title}**", "", self.caption, "", _md_row(header), _md_row(["---"] * len(columns))]
        for _, record in self.data.iterrows():
            lines.append(_md_row([self._cell(c, record[c]) for c in columns]))
        return "\n".join(lines) + "\n"

    def _cell(self, column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == "":
            return self.missing.get(column, NOT_RUN)
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        spec = self.formats.get(column)
        if spec and isinstance(value, (int, float, np.integer, np.floating)):
            text = format(float(value), spec)
            return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
        return str(value)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


@dataclass(frozen=True)
class ReportInputs:
    """Where the reproduced numbers live, and how the data and scale are to be described."""

    evaluations: Path | None = None
    memory: Path | None = None
    training: Path | None = None
    experiments: Path | None = None
    data_root: Path | None = None
    data_descriptions: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None


class _Context:
    """Inputs read once and shared by every table builder."""

    def __init__(self, inputs: ReportInputs) -> None:
        self.inputs = inputs
        self.experiments = read_experiments(inputs.experiments)
        self.linked = link_experiments(self.experiments)
        self.datasets = read_datasets(inputs.data_root)
        self._metrics: dict[str, pd.DataFrame | None] = {}

    def metrics(self, experiment: Experiment) -> pd.DataFrame | None:
        if experiment.name not in self._metrics:
            self._metrics[experiment.name] = case_metrics(self.inputs.evaluations, experiment.name)
        return self._metrics[experiment.name]

    def metrics_path(self, experiment: Experiment) -> str:
        return str((self.inputs.evaluations or Path(".")) / experiment.name / "metrics.csv")

    def data_of(self, experiment: Experiment) -> str:
        """What the experiment's reproduced numbers were computed on."""
        override = self.inputs.data_descriptions.get(experiment.task) or self.inputs.data_descriptions.get("")
        if override:
            return override
        metrics = self.metrics(experiment)
        if metrics is None:
            return ""
        dataset = dataset_of(experiment, metrics["case_id"], self.datasets)
        return dataset.description if dataset else f"{experiment.task} data (dataset not identified: no --cases-dir)"

    def memory_table(self, table: str) -> pd.DataFrame | None:
        if self.inputs.memory is None:
            return None
        return read_csv_checked(
            self.inputs.memory / f"{table}.csv", MEMORY_COLUMNS, f"`revunet memory --table {table}` output"
        )

    def caption(self, table: str, rows: Iterable[Experiment], memory_note: str, extra: str = "") -> str:
        """Data source, scale preset and where memory comes from, in one line."""
        task = TABLE_TASKS.get(table, "")
        override = self.inputs.data_descriptions.get(task) or self.inputs.data_descriptions.get("")
        descriptions = [override] if override else sorted({d for d in (self.data_of(e) for e in rows) if d})
        data = "; ".join(descriptions) if descriptions else "nothing yet (every row not run)"
        source = paper_results()[table]
        paper = (
            f"Paper: {source['dataset']}, {source['source'].split('. ')[-1].rstrip('.')}" if "dataset" in source else ""
        )
        scale = f"{self.inputs.preset} scale" if self.inputs.preset else "scale preset not stated"
        epochs = sorted({e.epochs for e in rows})
        if epochs:
            span = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else f"{epochs[0]}"
            scale += f", {span} epochs scheduled"
        parts = [f"Reproduced on: {data}. Scale: {scale}.", paper + "." if paper else "", memory_note, extra]
        return " ".join(p for p in parts if p)


MEMORY_NOTE = (
    "Measured memory: `revunet memory --table {table}`, exact tensor accounting of one training step "
    "(fake tensors) at the paper's full size and protocol, independent of the data and scale above."
)


def _metric_specs(table: str) -> list[tuple[str, str, str, float, str]]:
    """(paper key, metrics.csv column, header name, scale, format) of each reported metric of a region table."""
    dice = ("dice", "dice", "Dice", 100.0, ".2f")
    if table == "bruegger2019":
        return [dice, ("hd95", "hd95", "HD95", 1.0, ".2f")]
    return [dice, ("hausdorff", "hausdorff", "Hausdorff", 1.0, ".2f")]


def region_table(context: _Context, table: str) -> ReportTable:
    """Brügger et al.'s Table 1 or an invertible-residual table: memory, Dice and distances, paper vs reproduced."""
    paper = paper_results()[table]
    unit = paper["memory_unit"]
    divisor, memory_format = (1.0, ".0f") if unit == "MiB" else (1024.0, ".2f")
    regions = list(paper["regions"])
    memory = context.memory_table(table)
    specs = _metric_specs(table)
    records, formats, headers = [], {}, {}
    linked = context.linked[table]
    for entry in paper["rows"]:
        label = entry["row"]
        experiment = linked.get(label)
        record: dict[str, Any] = {"row": label, "experiment": experiment.name if experiment else ""}
        measured = _memory_row(memory, label)
        record[f"paper_memory_{unit.lower()}"] = float(entry["memory"])
        record[f"measured_memory_{unit.lower()}"] = measured["measured_mb"] / divisor if measured is not None else None
        record["memory_ratio"] = measured["ratio"] if measured is not None else None
        record[f"twin_memory_{unit.lower()}"] = _optional(measured, "twin_mb", divisor)
        if table == "bruegger2019":
            record["legacy_group_norm_memory_mib"] = _optional(measured, "legacy_group_norm_mb", divisor)
        metrics = context.metrics(experiment) if experiment else None
        for key, column, name, scale, spec in specs:
            for region in regions:
                record[f"paper_{column}_{region}"] = float(entry[key][region])
                value = None
                if metrics is not None:
                    value = round(region_mean(metrics, region, column, context.metrics_path(experiment)) * scale, 2)
                record[f"reproduced_{column}_{region}"] = value
                formats[f"paper_{column}_{region}"] = formats[f"reproduced_{column}_{region}"] = spec
                headers[f"paper_{column}_{region}"] = f"{name} {region} paper"
                headers[f"reproduced_{column}_{region}"] = f"{name} {region} ours"
        record["n_cases"] = int(metrics["case_id"].nunique()) if metrics is not None else None
        record["data"] = context.data_of(experiment) if experiment else ""
        records.append(record)
    frame = _ordered(pd.DataFrame(records), regions, specs)
    frame["n_cases"] = frame["n_cases"].astype("Int64")
    formats.update(
        {
            f"paper_memory_{unit.lower()}": memory_format,
            f"measured_memory_{unit.lower()}": memory_format,
            "memory_ratio": ".2f",
            f"twin_memory_{unit.lower()}": memory_format,
            "legacy_group_norm_memory_mib": memory_format,
            "n_cases": ".0f",
        }
    )
    headers.update(
        {
            "row": "Configuration",
            "experiment": "Experiment",
            f"paper_memory_{unit.lower()}": f"Memory {unit} paper",
            f"measured_memory_{unit.lower()}": f"Memory {unit} measured",
            "memory_ratio": "measured/paper",
            f"twin_memory_{unit.lower()}": f"non-reversible twin {unit}",
            "legacy_group_norm_memory_mib": "measured with PyTorch 1.1 GroupNorm MiB",
            "n_cases": "held-out cases",
            "data": "Data",
        }
    )
    title = {
        "bruegger2019": "Brügger et al. 2019, Table 1: memory, Dice (%) and HD95 (mm)",
        "invres_iseg": "Invertible-residual U-Nets, Table 2 (iSeg): memory, Dice (%) and Hausdorff (mm)",
        "invres_brats": "Invertible-residual U-Nets, Table 3 (BraTS): memory, Dice (%) and Hausdorff (mm)",
    }[table] + ", paper vs reproduced"
    distance = (
        "HD95 is the 95th percentile of the pooled symmetric surface distances (medpy)"
        if table == "bruegger2019"
        else "Hausdorff is the maximum symmetric surface distance (the paper's Eq. 8)"
    )
    units = "paper MB are MiB (the authors' code divides by 1024 twice)" if unit == "MiB" else "paper GB read as GiB"
    extra = (
        f"Reproduced Dice and distances are means over the held-out cases; {distance}; {units}. The twin has the "
        "same parameters stored by plain autograd (no memory saving)."
    )
    caption = context.caption(table, linked.values(), MEMORY_NOTE.format(table=table), extra)
    missing = {"experiment": "–", "data": "–", f"twin_memory_{unit.lower()}": "–"}
    return ReportTable(table, title, caption, frame, formats, headers, missing)


def _optional(measured: pd.Series | None, column: str, divisor: float) -> float | None:
    """An optional column of a memory-table row (absent, or empty for rows it does not apply to), in the unit."""
    if measured is None or column not in measured or pd.isna(measured[column]):
        return None
    return float(measured[column]) / divisor


def _ordered(
    frame: pd.DataFrame, regions: Sequence[str], specs: Sequence[tuple[str, str, str, float, str]]
) -> pd.DataFrame:
    """Paper and reproduced columns of each metric and region side by side."""
    front = [c for c in frame.columns if "memory" in c or c in ("row", "experiment")]
    metric_columns = [
        f"{side}_{column}_{region}" for _, column, *_ in specs for region in regions for side in ("paper", "reproduced")
    ]
    return frame[front + metric_columns + ["n_cases", "data"]]


def _memory_row(memory: pd.DataFrame | None, label: str) -> pd.Series | None:
    if memory is None:
        return None
    match = memory[memory["row"].astype(str) == label]
    return None if match.empty else match.iloc[0]


def pendse_memory_table(context: _Context) -> ReportTable:
    """Pendse et al.'s Table 1: every configuration at a constant 14 GB; do ours fit 14 GiB?"""
    paper = paper_results()["pendse2020"]
    memory = context.memory_table("pendse2020")
    records = []
    for entry in paper["rows"]:
        measured = _memory_row(memory, entry["row"])
        budget = float(entry["memory"])
        record: dict[str, Any] = {
            "row": entry["row"],
            "input_shape": measured["input_shape"] if measured is not None else "",
            "paper_memory_gib": budget,
            "measured_memory_gib": measured["measured_mb"] / 1024 if measured is not None else None,
            "memory_ratio": measured["ratio"] if measured is not None else None,
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
        "fits_paper_memory": "fits 14 GiB",
        "twin_memory_gib": "non-reversible twin GiB",
        "twin_fits_paper_memory": "twin fits 14 GiB",
    }
    formats = {"paper_memory_gib": ".0f", "measured_memory_gib": ".2f", "memory_ratio": ".2f", "twin_memory_gib": ".2f"}
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


def pendse_dice_table(context: _Context) -> ReportTable:
    """Pendse et al.'s Table 2: mean Dice early in training and after convergence, paper vs reproduced."""
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
            "early_epoch": None,
            "reproduced_val_dice_early": None,
            "best_epoch": None,
            "reproduced_val_dice_best": None,
            "reproduced_held_out_dice": None,
            "final_epoch": None,
            "reproduced_val_dice_final": None,
            "data": "",
        }
        if experiment is not None:
            record.update(_pendse_reproduced(context, experiment))
        records.append(record)
    frame = pd.DataFrame(records)
    for column in ("early_epoch", "best_epoch", "final_epoch"):
        frame[column] = frame[column].astype("Int64")
    dice = ".4f"
    formats = {c: dice for c in frame.columns if "dice" in c}
    formats.update({c: ".0f" for c in ("early_epoch", "best_epoch", "final_epoch")})
    headers = {
        "row": "Configuration",
        "experiment": "Experiment",
        "paper_dice_50_epochs": "paper, 50 epochs",
        "paper_dice_converged": "paper, converged",
        "early_epoch": "our epoch ≙ 50/500",
        "reproduced_val_dice_early": "ours (validation) at that epoch",
        "best_epoch": "our best epoch",
        "reproduced_val_dice_best": "ours (validation) at best epoch",
        "reproduced_held_out_dice": "ours (held-out, best checkpoint)",
        "final_epoch": "our last epoch",
        "reproduced_val_dice_final": "ours (validation) at last epoch",
        "data": "Data",
    }
    extra = (
        "Mean Dice = per case the mean over WT, TC and ET, then the mean over cases (as fractions, like the paper). "
        "The early column compares at the same fraction of the schedule as the paper's epoch 50 of 500; "
        "validation values come from the training log, the held-out value from `revunet evaluate` of the best "
        "checkpoint."
    )
    caption = context.caption("pendse2020", linked.values(), "", extra)
    return ReportTable(
        "pendse2020_dice",
        "Pendse et al. 2020, Table 2: mean Dice, paper vs reproduced",
        caption,
        frame,
        formats,
        headers,
        {"experiment": "–", "data": "–"},
    )


def _pendse_reproduced(context: _Context, experiment: Experiment) -> dict[str, Any]:
    values: dict[str, Any] = {}
    log = training_log(context.inputs.training, experiment.name)
    if log is not None:
        validated = log.dropna(subset=["val_mean_dice"])
        if not validated.empty:
            early = max(1, round(experiment.epochs * PENDSE_EARLY_FRACTION))
            before = validated[validated["epoch"] <= early]
            if not before.empty:
                values["early_epoch"] = int(before["epoch"].iloc[-1])
                values["reproduced_val_dice_early"] = round(float(before["val_mean_dice"].iloc[-1]), 4)
            values["final_epoch"] = int(validated["epoch"].iloc[-1])
            values["reproduced_val_dice_final"] = round(float(validated["val_mean_dice"].iloc[-1]), 4)
    summary = training_summary(context.inputs.training, experiment.name)
    if summary is not None and summary.get("best_val_mean_dice") is not None:
        values["best_epoch"] = int(summary["best_epoch"])
        values["reproduced_val_dice_best"] = round(float(summary["best_val_mean_dice"]), 4)
    metrics = context.metrics(experiment)
    if metrics is not None:
        values["reproduced_held_out_dice"] = round(case_mean_dice(metrics), 4)
    values["data"] = context.data_of(experiment)
    return values


def complexity_report_table(context: _Context) -> ReportTable:
    """The invertible-residual paper's Table 1 (asserted orders) against the measured growth exponents."""
    claimed_exponents = {"O(L)": 1.0, "O(sqrt L)": 0.5, "O(1)": 0.0}
    path = context.inputs.memory / "complexity.csv" if context.inputs.memory else None
    measured = read_csv_checked(path, COMPLEXITY_COLUMNS, "`revunet complexity` output") if path else None
    records = []
    for entry in paper_results()["complexity"]["rows"]:
        method = COMPLEXITY_METHODS.get(entry["row"])
        record: dict[str, Any] = {
            "method": entry["row"],
            "paper_activations": entry["activations"],
            "paper_compute": entry["compute"],
            "claimed_exponent": claimed_exponents.get(entry["activations"]),
            "measured_exponent": None,
            "depths": "",
            "activations_mib_shallowest": None,
            "activations_mib_deepest": None,
        }
        rows = measured[measured["method"] == method].sort_values("depth") if measured is not None and method else None
        if rows is not None and not rows.empty:
            record["measured_exponent"] = float(rows["growth_exponent"].iloc[0])
            record["depths"] = f"{int(rows['depth'].iloc[0])}-{int(rows['depth'].iloc[-1])}"
            record["activations_mib_shallowest"] = float(rows["activations_mb"].iloc[0])
            record["activations_mib_deepest"] = float(rows["activations_mb"].iloc[-1])
        records.append(record)
    frame = pd.DataFrame(records)
    formats = {
        "claimed_exponent": ".2f",
        "measured_exponent": ".2f",
        "activations_mib_shallowest": ".1f",
        "activations_mib_deepest": ".1f",
    }
    headers = {
        "method": "Method",
        "paper_activations": "activations (paper)",
        "paper_compute": "compute (paper)",
        "claimed_exponent": "claimed exponent",
        "measured_exponent": "measured exponent",
        "depths": "depths L",
        "activations_mib_shallowest": "activations MiB, shallowest",
        "activations_mib_deepest": "activations MiB, deepest",
    }
    missing = {c: "not measured" for c in frame.columns}
    missing["claimed_exponent"] = "–"
    caption = (
        "Activation memory of one training step of a chain of L additive couplings, stored naively, with "
        "checkpoint_sequential over round(√L) segments and reversibly (`revunet complexity`, fake tensors); the "
        "exponent is the log-log slope over L ≥ 4. The recursive scheme is not implemented. No training data is "
        "involved."
    )
    return ReportTable(
        "complexity",
        "Invertible-residual U-Nets, Table 1: asserted orders vs measured growth",
        caption,
        frame,
        formats,
        headers,
        missing,
    )


def capacity_report_table(context: _Context) -> ReportTable:
    """Pendse et al.'s claim (3x volume, 1.25x depth, 2x channels at a fixed budget) against measured ratios."""
    from revunet.memory.capacity import CLAIM_KEYS

    claims = paper_results()["pendse2020"]["claims"]
    path = context.inputs.memory / "capacity.csv" if context.inputs.memory else None
    measured = read_csv_checked(path, CAPACITY_COLUMNS, "`revunet capacity` output") if path else None
    records = []
    if measured is not None:
        for _, row in measured.iterrows():
            dimension = str(row["dimension"])
            if dimension not in CLAIM_KEYS:
                raise ReportInputError(f"{path}: unknown dimension {dimension!r}; expected one of {list(CLAIM_KEYS)}")
            claim = float(claims[CLAIM_KEYS[dimension]])
            capped = bool(row["reversible_capped"]) or bool(row["twin_capped"])
            records.append(
                {
                    "model": row["key"],
                    "config": row["config"],
                    "dimension": dimension,
                    "ratio_of": row["ratio_of"],
                    "reversible_value": row["reversible_value"],
                    "twin_value": row["twin_value"],
                    "claimed_ratio": claim,
                    "measured_ratio": float(row["ratio"]),
                    "meets_claim": bool(float(row["ratio"]) >= claim),
                    "search_capped": capped,
                    "budget_gib": float(row["budget_gib"]),
                }
            )
    else:
        for dimension, key in (("volume", "larger_volume"), ("depth", "more_depth"), ("width", "more_channels")):
            records.append(
                {
                    "model": "",
                    "config": "",
                    "dimension": dimension,
                    "ratio_of": "",
                    "reversible_value": None,
                    "twin_value": None,
                    "claimed_ratio": float(claims[key]),
                    "measured_ratio": None,
                    "meets_claim": None,
                    "search_capped": None,
                    "budget_gib": None,
                }
            )
    frame = pd.DataFrame(records)
    formats = {
        "reversible_value": "g",
        "twin_value": "g",
        "claimed_ratio": "g",
        "measured_ratio": ".2f",
        "budget_gib": "g",
    }
    headers = {
        "model": "Model",
        "config": "Configuration",
        "dimension": "Dimension",
        "ratio_of": "ratio of",
        "reversible_value": "reversible fits",
        "twin_value": "twin fits",
        "claimed_ratio": "claimed ratio",
        "measured_ratio": "measured ratio",
        "meets_claim": "meets claim",
        "search_capped": "search capped",
        "budget_gib": "budget GiB",
    }
    missing = {c: "not measured" for c in frame.columns}
    missing.update({"model": "–", "config": "–", "ratio_of": "–"})
    caption = (
        "Largest cubic input (ratio of voxels), encoder depth and channel multiplier whose training step fits the "
        "budget, reversible model vs its non-reversible twin (`revunet capacity`, fake tensors, batch 1, Adam); "
        "claimed ratios from Pendse et al.'s abstract. A capped search means the true ratio may be larger. "
        "No training data is involved."
    )
    return ReportTable(
        "capacity", "Pendse et al.'s capacity claim vs measured ratios", caption, frame, formats, headers, missing
    )


TABLE_BUILDERS: dict[str, Callable[[_Context], ReportTable]] = {
    "bruegger2019": lambda c: region_table(c, "bruegger2019"),
    "invres_iseg": lambda c: region_table(c, "invres_iseg"),
    "invres_brats": lambda c: region_table(c, "invres_brats"),
    "pendse2020_memory": pendse_memory_table,
    "pendse2020_dice": pendse_dice_table,
    "complexity": complexity_report_table,
    "capacity": capacity_report_table,
}


def build_tables(inputs: ReportInputs) -> list[ReportTable]:
    """Every report table from ``inputs`` (read once)."""
    context = _Context(inputs)
    return [build(context) for build in TABLE_BUILDERS.values()]


def write_tables(tables: Sequence[ReportTable], out: str | os.PathLike[str]) -> list[Path]:
    """``<name>.csv`` and ``<name>.md`` per table, then ``index.csv`` (file, title, caption), each atomically."""
    out = Path(out)
    written = []
    for table in tables:
        written.append(write_text_atomic(out / f"{table.name}.csv", table.data.to_csv(index=False)))
        written.append(write_text_atomic(out / f"{table.name}.md", table.markdown()))
    index = pd.DataFrame(
        [{"file": f"{t.name}.md", "csv": f"{t.name}.csv", "title": t.title, "caption": t.caption} for t in tables]
    )
    written.append(write_text_atomic(out / "index.csv", index.to_csv(index=False)))
    return written
