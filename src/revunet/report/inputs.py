"""The report's inputs: a reader for every upstream result, and the context the tables and figures share.

The formats are those of the project's interface notes:

- ``EXP_DIR/<exp>.json``: the experiments; their ``table`` and ``row`` fields say which paper row
  each one reproduces;
- ``EVAL_DIR/<exp>/metrics.csv``: per test case and region Dice, HD95, Hausdorff, …;
- ``TRAIN_DIR/<exp>/log.csv`` and ``summary.json``: the training curve and its best epoch;
- ``MEMORY_DIR/<table>.csv`` (``revunet memory --table``), ``capacity.csv``, ``complexity.csv``:
  memory measured at the papers' full sizes, independent of the data and scale trained on;
- ``DATA_ROOT/<dataset>/cases.csv`` (optional): tells which dataset each experiment was scored on
  and whether it is synthetic (a ``revunet synth`` manifest beside the files) or real;
- ``PRED_ROOT/<exp>/predictions.csv``: the predictions of ``revunet infer``.

An input that is absent (an experiment not run yet) reads as None; one that is present but
malformed, or an experiment linked to a table row the papers do not have, is a
:class:`ReportInputError` naming the file and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from revunet.catalog import MEMORY_TABLES
from revunet.experiments.recipe import Experiment, read_experiment
from revunet.papers import paper_row_labels

# The columns each reader needs (a subset of what the writers write).
LOG_COLUMNS = ("epoch", "train_loss", "val_mean_dice", "ema_dice")
SUMMARY_KEYS = ("epochs_completed", "best_epoch", "best_val_mean_dice")
MEMORY_COLUMNS = ("row", "input_shape", "paper_mb", "measured_mb", "ratio")
MODULE_COLUMNS = ("row", "module", "phase", "mib")
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
PREDICTIONS_COLUMNS = ("case_id", "prediction")
# The task each paper memory table's rows were trained on.
TABLE_TASKS = dict(zip(MEMORY_TABLES, ("brats", "iseg", "brats", "brats"), strict=True))
LAYOUT_DATASETS = {
    "brats2018": "BraTS 2018",
    "brats2020": "BraTS 2020",
    "brats2021": "BraTS 2021",
    "brats2023": "BraTS 2023 GLI",
    "msd": "Decathlon Task01 BrainTumour",
    "iseg": "iSeg",
}
SYNTH_MANIFEST = "synth_manifest.json"


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
    from revunet.evaluation.score import WHOLE_VOLUME_COLUMNS  # lazy: the scorer imports torch and medpy

    return read_csv_checked(
        evaluations / name / "metrics.csv", WHOLE_VOLUME_COLUMNS, "the per-case metrics of `revunet evaluate`"
    )


def snapshot_folder(name: str, epoch: int) -> str:
    """The folder under EVAL_DIR (and PRED_DIR) of experiment ``name``'s snapshot at ``epoch``."""
    return f"{name}/epoch_{epoch:04d}"


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


def memory_table(memory: Path | None, table: str) -> pd.DataFrame | None:
    """``MEMORY_DIR/<table>.csv`` of ``revunet memory --table``, None if that table was not measured."""
    if memory is None:
        return None
    return read_csv_checked(memory / f"{table}.csv", MEMORY_COLUMNS, f"`revunet memory --table {table}` output")


def memory_modules(memory: Path | None, table: str) -> pd.DataFrame | None:
    """``MEMORY_DIR/<table>_modules.csv``: the live bytes at each phase's peak by owning module."""
    if memory is None:
        return None
    what = f"the attribution `revunet memory --table {table}` writes"
    return read_csv_checked(memory / f"{table}_modules.csv", MODULE_COLUMNS, what)


def complexity_table(path: Path | None) -> pd.DataFrame | None:
    """``complexity.csv`` of ``revunet complexity``, None if not measured."""
    return read_csv_checked(path, COMPLEXITY_COLUMNS, "`revunet complexity` output") if path else None


def capacity_table(path: Path | None) -> pd.DataFrame | None:
    """``capacity.csv`` of ``revunet capacity``, None if not measured."""
    return read_csv_checked(path, CAPACITY_COLUMNS, "`revunet capacity` output") if path else None


def read_predictions(predictions: Path | None, name: str) -> pd.DataFrame | None:
    """``PRED_ROOT/<name>/predictions.csv``, None if that experiment has no predictions yet."""
    if predictions is None:
        return None
    return read_csv_checked(
        predictions / name / "predictions.csv", PREDICTIONS_COLUMNS, "the predictions list of `revunet infer`"
    )


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
    # A smoke run (revunet.report.tables.smoke): its tables are marked, and it has a table of its own
    # from the compiled twins' training folder and the predicted peaks.
    smoke: bool = False
    compiled_training: Path | None = None
    predicted_memory: Path | None = None


class ReportContext:
    """The inputs read once (experiments, their paper rows, datasets, cached metrics) for tables and figures."""

    def __init__(self, inputs: ReportInputs) -> None:
        self.inputs = inputs
        self.experiments = read_experiments(inputs.experiments)
        self.linked = link_experiments(self.experiments)
        self.datasets = read_datasets(inputs.data_root)
        self._metrics: dict[str, pd.DataFrame | None] = {}

    def metrics(self, experiment: Experiment) -> pd.DataFrame | None:
        """The experiment's per-case metrics (read once), None if it was not evaluated."""
        if experiment.name not in self._metrics:
            self._metrics[experiment.name] = case_metrics(self.inputs.evaluations, experiment.name)
        return self._metrics[experiment.name]

    def metrics_path(self, experiment: Experiment) -> str:
        """Where the experiment's metrics are read from, for error messages."""
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
        """The measured memory table ``table``, None if not measured."""
        return memory_table(self.inputs.memory, table)

    def measurement_path(self, name: str) -> Path | None:
        """``MEMORY_DIR/<name>`` (``complexity.csv``, ``capacity.csv``), None without a memory folder."""
        return self.inputs.memory / name if self.inputs.memory else None
