"""The report's figures: training curves, score distributions, memory against the papers, examples.

Each figure is drawn on a matplotlib ``Figure`` with the Agg canvas (no display, no pyplot
state shared between figures) and written as PNG and PDF through
:func:`revunet.atomic.write_bytes_atomic`, so a killed job never leaves half a figure. Inputs
are read with the readers of :mod:`revunet.report.tables` (same formats, same errors naming the
file at fault). A figure whose inputs do not exist yet is still written, with a panel saying
"not run", so that the set of files is the same for every run of the workflow.

Figures (``<name>.png`` and ``<name>.pdf``) and their captions (:data:`CAPTIONS`, also written
to ``index.csv`` with columns ``file, caption``):

- ``training_curves``: one panel per experiment, training loss and validation mean Dice / EMA;
- ``dice_distribution``, ``hd95_distribution``: per-case scores per region and architecture, one
  panel per paper table;
- ``memory_vs_paper``: paper vs measured peak memory of each row, one panel per paper table;
- ``memory_vs_depth``: Brügger et al.'s encoder depths 1-4 (paper, measured, non-reversible twin)
  and the activation memory of a coupling chain against its length (``revunet complexity``);
- ``example_segmentation_<dataset>``: an axial slice of each modality of the first held-out case
  with reference (solid) and predicted (dashed) contours, one figure per dataset.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from revunet.atomic import write_bytes_atomic, write_text_atomic
from revunet.catalog import TASK_REGIONS
from revunet.experiments.recipe import Experiment
from revunet.papers import paper_results
from revunet.tasks import get_task
from revunet.report.inputs import (
    COMPLEXITY_COLUMNS,
    MEMORY_COLUMNS,
    TABLE_TASKS,
    Dataset,
    ReportInputError,
    case_metrics,
    dataset_of,
    experiment_order,
    link_experiments,
    read_csv_checked,
    read_datasets,
    read_experiments,
    training_log,
)

PREDICTIONS_COLUMNS = ("case_id", "prediction")
TABLE_TITLES = {
    "bruegger2019": "Brügger et al. 2019 (BraTS)",
    "invres_iseg": "Invertible residual (iSeg)",
    "invres_brats": "Invertible residual (BraTS)",
    "pendse2020": "Pendse et al. 2020 (BraTS)",
}
REGION_COLOURS = {
    "WT": "tab:green",
    "TC": "tab:orange",
    "ET": "tab:red",
    "CSF": "tab:cyan",
    "GM": "tab:orange",
    "WM": "tab:pink",
}
CAPTIONS = {
    "training_curves": "Training curves, one panel per experiment: training loss (left axis) and validation mean "
    "Dice with its exponential moving average used for early stopping (right axis) against the epoch.",
    "dice_distribution": "Per-case Dice (%) on the held-out cases, per region and architecture (box: quartiles, "
    "points: cases), one panel per paper table.",
    "hd95_distribution": "Per-case HD95 (mm, 95th percentile of the pooled symmetric surface distances) on the "
    "held-out cases, per region and architecture, one panel per paper table.",
    "memory_vs_paper": "Peak training memory of every paper table row: the paper's figure next to ours, measured by "
    "exact tensor accounting at the paper's full size and protocol (`revunet memory --table`); hatched bars are the "
    "non-reversible twin (same parameters, plain autograd).",
    "memory_vs_depth": "Memory against depth. Left: Brügger et al.'s full-volume rows with 1-4 reversible blocks per "
    "encoder level, paper vs measured vs the non-reversible twin. Right: activation memory of a chain of L couplings "
    "stored naively, with checkpointing and reversibly (`revunet complexity`), log-log.",
    "example_segmentation": "Example segmentation ({dataset}: {data}), experiment {experiment}, held-out case {case}: "
    "axial slice {slice} of each modality with the reference (solid) and predicted (dashed) contours of {regions}.",
}


@dataclass(frozen=True)
class FigureInputs:
    """Where the figures' inputs live (any may be None: its figures then say "not run")."""

    training: Path | None = None
    evaluations: Path | None = None
    memory: Path | None = None
    complexity: Path | None = None
    predictions: Path | None = None
    data_root: Path | None = None
    experiments: Path | None = None
    examples: Mapping[str, str] = field(default_factory=dict)  # dataset -> experiment shown


def save_figure(figure: Any, out: Path, name: str) -> list[Path]:
    """``out/name.png`` and ``out/name.pdf``, each rendered to memory first and written atomically."""
    written = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150)
        written.append(write_bytes_atomic(out / f"{name}.{fmt}", buffer.getvalue()))
    return written


def new_figure(panels: int, columns: int, panel_size: tuple[float, float] = (4.0, 3.2)) -> tuple[Any, list[Any]]:
    """A figure on the Agg canvas with ``panels`` axes in a grid of at most ``columns`` columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = max(1, panels)
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    axes = list(grid.ravel())
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _not_run(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=10, color="grey")
    axes.set_xticks([])
    axes.set_yticks([])


def _label(experiment: Experiment) -> str:
    return experiment.row or experiment.name


# --------------------------------------------------------------------------- training and scores


def training_curves(experiments: Sequence[Experiment], training: Path | None) -> Any:
    """One panel per experiment with a log: training loss, validation mean Dice and its EMA."""
    from matplotlib.ticker import MaxNLocator

    logs = [(e, training_log(training, e.name)) for e in experiments]
    logs = [(e, log) for e, log in logs if log is not None]
    figure, axes = new_figure(len(logs), 4)
    if not logs:
        _not_run(axes[0], "no training logs yet (not run)")
        return figure
    for ax, (experiment, log) in zip(axes, logs, strict=True):
        ax.plot(log["epoch"], log["train_loss"], color="black", linewidth=1, label="train loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        dice_axis = ax.twinx()
        validated = log.dropna(subset=["val_mean_dice"])
        dice_axis.plot(
            validated["epoch"], validated["val_mean_dice"], "o", color="tab:blue", markersize=3, label="val mean Dice"
        )
        dice_axis.plot(validated["epoch"], validated["ema_dice"], "--", color="tab:blue", linewidth=1, label="EMA")
        dice_axis.set_ylim(0, 1)
        dice_axis.set_ylabel("validation mean Dice", color="tab:blue")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(
            f"{experiment.name}\n{experiment.table}: {experiment.row}" if experiment.row else experiment.name,
            fontsize=8,
        )
        lines = ax.get_legend_handles_labels()[0] + dice_axis.get_legend_handles_labels()[0]
        ax.legend(lines, [line.get_label() for line in lines], fontsize=6, loc="center right")
    figure.tight_layout()
    return figure


def score_frames(experiments: Sequence[Experiment], evaluations: Path | None) -> dict[str, pd.DataFrame]:
    """Per-case metrics of every evaluated experiment, grouped by paper table (unlinked: by task)."""
    groups: dict[str, list[pd.DataFrame]] = {}
    for experiment in experiments:
        metrics = case_metrics(evaluations, experiment.name)
        if metrics is None:
            continue
        group = experiment.table if experiment.table in TABLE_TASKS else f"other {experiment.task}"
        groups.setdefault(group, []).append(metrics.assign(architecture=_label(experiment)))
    return {group: pd.concat(frames, ignore_index=True) for group, frames in groups.items()}


def score_distribution(groups: Mapping[str, pd.DataFrame], metric: str, scale: float, ylabel: str) -> Any:
    """Box and strip plots of ``metric`` per region (x) and architecture (hue), one panel per group."""
    import seaborn as sns

    figure, axes = new_figure(len(groups), 2, (5.5, 3.6))
    if not groups:
        _not_run(axes[0], "no evaluations yet (not run)")
        return figure
    for ax, (group, frame) in zip(axes, groups.items(), strict=True):
        data = frame.assign(value=pd.to_numeric(frame[metric], errors="coerce") * scale)
        order = [r for r in (*TASK_REGIONS["brats"], *TASK_REGIONS["iseg"]) if r in set(data["region"])]
        order += sorted(set(data["region"]) - set(order))
        sns.boxplot(
            data=data, x="region", y="value", hue="architecture", order=order, ax=ax, showfliers=False, linewidth=0.8
        )
        sns.stripplot(
            data=data,
            x="region",
            y="value",
            hue="architecture",
            order=order,
            ax=ax,
            dodge=True,
            size=3,
            palette="dark:black",
            alpha=0.6,
            legend=False,
        )
        ax.set_title(TABLE_TITLES.get(group, group), fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6, title=None)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- memory


def memory_tables(memory: Path | None) -> dict[str, pd.DataFrame]:
    """``MEMORY_DIR/<table>.csv`` of every paper table that has been measured."""
    found = {}
    for table in TABLE_TASKS:
        if memory is None:
            continue
        frame = read_csv_checked(memory / f"{table}.csv", MEMORY_COLUMNS, f"`revunet memory --table {table}` output")
        if frame is not None:
            found[table] = frame
    return found


def memory_vs_paper(tables: Mapping[str, pd.DataFrame]) -> Any:
    """Grouped bars per row: paper, measured and (for reversible rows) the twin, in the paper's unit."""
    figure, axes = new_figure(len(TABLE_TASKS), 2, (5.5, 3.6))
    for ax, table in zip(axes, TABLE_TASKS, strict=True):
        unit = paper_results()[table]["memory_unit"]
        divisor = 1.0 if unit == "MiB" else 1024.0
        frame = tables.get(table)
        ax.set_title(TABLE_TITLES[table], fontsize=9)
        if frame is None:
            _not_run(ax, f"{table}: not measured")
            continue
        x = np.arange(len(frame))
        twin = (
            pd.to_numeric(frame["twin_mb"], errors="coerce")
            if "twin_mb" in frame
            else pd.Series(np.nan, index=frame.index)
        )
        width = 0.27
        ax.bar(x - width, frame["paper_mb"] / divisor, width, label="paper", color="tab:grey")
        ax.bar(x, frame["measured_mb"] / divisor, width, label="measured", color="tab:blue")
        ax.bar(
            x + width, twin / divisor, width, label="twin (measured)", color="white", edgecolor="tab:blue", hatch="//"
        )
        budget = frame["budget_mb"].iloc[0] if "budget_mb" in frame else None
        if budget is not None and not pd.isna(budget):
            ax.axhline(budget / divisor, color="tab:red", linestyle="--", linewidth=1, label="paper's budget")
        ax.set_xticks(x)
        ax.set_xticklabels(
            [str(r).replace(" full", "\nfull").replace(" 128", "\n128") for r in frame["row"]], fontsize=7
        )
        ax.set_ylabel(f"peak memory ({unit})")
        ax.legend(fontsize=6)
    figure.tight_layout()
    return figure


def memory_vs_depth(bruegger: pd.DataFrame | None, complexity: pd.DataFrame | None) -> Any:
    """Brügger et al.'s encoder-depth rows, and the coupling chain's activation memory against its length."""
    from matplotlib.ticker import FuncFormatter

    figure, (left, right) = new_figure(2, 2, (5.0, 3.8))
    if bruegger is None:
        _not_run(left, "bruegger2019: not measured")
    else:
        rows = bruegger[bruegger["row"].astype(str).str.fullmatch(r"Reversible \d/1 full")]
        depth = rows["row"].str.extract(r"(\d)/1")[0].astype(int)
        left.plot(depth, rows["paper_mb"], "s-", color="tab:grey", label="paper")
        left.plot(depth, rows["measured_mb"], "o-", color="tab:blue", label="measured")
        if "twin_mb" in rows:
            left.plot(depth, rows["twin_mb"], "^--", color="tab:red", label="non-reversible twin")
        left.set_xticks(sorted(depth))
        left.set_xlabel("reversible blocks per encoder level")
        left.set_ylabel("peak memory (MiB)")
        left.set_title("Brügger et al.: full volume 160×192×160", fontsize=9)
        left.legend(fontsize=7)
    if complexity is None:
        _not_run(right, "complexity: not measured")
    else:
        for method, group in complexity.sort_values("depth").groupby("method", sort=False):
            slope = float(group["growth_exponent"].iloc[0])
            slope = 0.0 if round(slope, 2) == 0 else slope  # no "-0.00"
            right.plot(
                group["depth"],
                group["activations_mb"],
                "o-",
                label=f"{method} ({group['claimed'].iloc[0]}, fit {slope:.2f})",
            )
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        right.xaxis.set_major_formatter(plain)
        right.yaxis.set_major_formatter(plain)
        right.set_xlabel("depth L (coupling blocks)")
        right.set_ylabel("activation memory (MiB)")
        right.set_title("Coupling chain, one training step", fontsize=9)
        right.legend(fontsize=7)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- example segmentation


@dataclass(frozen=True)
class Example:
    """The case shown for one dataset: its images, reference and prediction in canonical labels."""

    dataset: Dataset
    experiment: str
    case_id: str
    images: dict[str, np.ndarray]
    reference: np.ndarray
    prediction: np.ndarray


def read_predictions(predictions: Path | None, name: str) -> pd.DataFrame | None:
    """``PRED_ROOT/<name>/predictions.csv``, None if that experiment has no predictions yet."""
    if predictions is None:
        return None
    return read_csv_checked(
        predictions / name / "predictions.csv", PREDICTIONS_COLUMNS, "the predictions list of `revunet infer`"
    )


def choose_example(
    dataset: Dataset,
    experiments: Sequence[Experiment],
    predictions: Path | None,
    chosen: str | None = None,
    evaluations: Path | None = None,
) -> tuple[Experiment, str, Path] | None:
    """(experiment, case id, prediction file) shown for ``dataset``.

    The chosen experiment, else the one with the best held-out mean Dice (a short demo run can
    collapse to an empty prediction, which would make a useless example), else the first in
    paper order with predictions.
    """
    candidates = [e for e in experiments if e.name == chosen] if chosen else list(experiments)
    if not chosen and evaluations is not None:

        def mean_dice(experiment: Experiment) -> float:
            metrics = case_metrics(evaluations, experiment.name)
            return float(metrics["dice"].mean()) if metrics is not None and len(metrics) else -1.0

        candidates.sort(key=mean_dice, reverse=True)  # stable: ties keep paper order
    if chosen and not candidates:
        raise ReportInputError(
            f"--example {dataset.name}={chosen}: no experiment {chosen!r}; known: {[e.name for e in experiments]}"
        )
    for experiment in candidates:
        listed = read_predictions(predictions, experiment.name)
        if listed is None or listed.empty or dataset_of(experiment, listed["case_id"], [dataset]) is None:
            continue
        first = listed.iloc[0]
        path = Path(str(first["prediction"]))
        if not path.is_absolute():
            path = predictions / experiment.name / path
        return experiment, str(first["case_id"]), path
    return None


def load_example(dataset: Dataset, experiment: Experiment, case_id: str, prediction: Path) -> Example:
    """The case's images and reference (canonical) and the prediction mapped from the layout's disk values."""
    import nibabel as nib

    from revunet.data.io import CaseError, load_case
    from revunet.data.labels import disk_to_canonical

    row = dataset.cases[dataset.cases["case_id"].astype(str) == case_id].iloc[0]
    try:
        case = load_case(row)
    except CaseError as error:
        raise ReportInputError(f"dataset {dataset.name!r}: {error}") from None
    if case.label is None:
        raise ReportInputError(
            f"dataset {dataset.name!r}: case {case_id} has no reference label; expected a labelled case"
        )
    try:
        raw = np.asarray(nib.load(prediction).dataobj)
    except (OSError, ValueError) as error:
        raise ReportInputError(f"{prediction}: not a readable NIfTI prediction ({error})") from None
    raw = raw.reshape(raw.shape[:3]) if raw.ndim == 4 and raw.shape[3] == 1 else raw
    if raw.shape != case.label.shape:
        raise ReportInputError(f"{prediction}: shape {raw.shape}, expected the case's grid {case.label.shape}")
    try:
        prediction_label = disk_to_canonical(raw, str(row["layout"]))
    except ValueError as error:
        raise ReportInputError(f"{prediction}: {error}") from None
    return Example(dataset, experiment.name, case_id, case.images, case.label, prediction_label)


def region_masks(label: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """The contoured regions of a canonical label map: BraTS WT/TC/ET, iSeg CSF/GM/WM."""
    return get_task(task).region_masks(label)


def centre_slice(reference: np.ndarray, image: np.ndarray) -> int:
    """Axial index through the centre of the labelled structure (tumour or brain), else of the head."""
    mask = reference != 0 if reference.any() else image != 0
    if not mask.any():
        return reference.shape[2] // 2
    weights = mask.sum(axis=(0, 1))
    return int(round(float(np.average(np.arange(mask.shape[2]), weights=weights))))


def example_segmentation(example: Example) -> tuple[Any, int]:
    """One panel per modality at the centre slice, reference contours solid, predicted dashed."""
    from matplotlib.lines import Line2D

    images = example.images
    z = centre_slice(example.reference, next(iter(images.values())))
    reference = region_masks(example.reference, example.dataset.task)
    predicted = region_masks(example.prediction, example.dataset.task)
    figure, axes = new_figure(len(images), len(images), (3.2, 3.4))
    for ax, (modality, image) in zip(axes, images.items(), strict=True):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", interpolation="nearest")
        for region, mask in reference.items():
            colour = REGION_COLOURS.get(region, "yellow")
            for masks, style in ((mask, "solid"), (predicted[region], "dashed")):
                plane = masks[:, :, z].T.astype(float)
                if plane.any() and not plane.all():
                    ax.contour(plane, levels=[0.5], colors=[colour], linestyles=style, linewidths=0.9)
        ax.set_title(modality, fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=REGION_COLOURS.get(r, "yellow"), label=r) for r in reference]
    handles += [
        Line2D([], [], color="black", linestyle="solid", label="reference"),
        Line2D([], [], color="black", linestyle="dashed", label="prediction"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    figure.suptitle(f"{example.experiment}: {example.case_id}, axial slice {z}", fontsize=9)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure, z


# --------------------------------------------------------------------------- all figures


def parse_examples(values: Sequence[str]) -> dict[str, str]:
    """``--example DATASET=EXPERIMENT`` values as a mapping; an error names a malformed one."""
    examples = {}
    for value in values:
        dataset, sep, experiment = value.partition("=")
        if not sep or not dataset.strip() or not experiment.strip():
            raise ReportInputError(f"--example must read DATASET=EXPERIMENT, got {value!r}")
        examples[dataset.strip()] = experiment.strip()
    return examples


def write_figures(inputs: FigureInputs, out: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Draw and write every figure into ``out``, then ``index.csv``; returns (file, caption) per figure."""
    out = Path(out)
    experiments = experiment_order(read_experiments(inputs.experiments))
    link_experiments(experiments)  # a row label the papers do not have is an error here too
    datasets = read_datasets(inputs.data_root)
    unknown = sorted(set(inputs.examples) - {d.name for d in datasets})
    if unknown:
        raise ReportInputError(
            f"--example names dataset(s) {unknown} without DATA_ROOT/<dataset>/cases.csv; "
            f"found {[d.name for d in datasets]}"
        )
    index: list[tuple[str, str]] = []

    def emit(figure: Any, name: str, caption: str) -> None:
        save_figure(figure, out, name)
        index.append((f"{name}.png", caption))

    emit(training_curves(experiments, inputs.training), "training_curves", CAPTIONS["training_curves"])
    groups = score_frames(experiments, inputs.evaluations)
    emit(score_distribution(groups, "dice", 100.0, "Dice (%)"), "dice_distribution", CAPTIONS["dice_distribution"])
    emit(score_distribution(groups, "hd95", 1.0, "HD95 (mm)"), "hd95_distribution", CAPTIONS["hd95_distribution"])
    tables = memory_tables(inputs.memory)
    emit(memory_vs_paper(tables), "memory_vs_paper", CAPTIONS["memory_vs_paper"])
    complexity_path = inputs.complexity or (inputs.memory / "complexity.csv" if inputs.memory else None)
    complexity = (
        read_csv_checked(complexity_path, COMPLEXITY_COLUMNS, "`revunet complexity` output")
        if complexity_path
        else None
    )
    emit(memory_vs_depth(tables.get("bruegger2019"), complexity), "memory_vs_depth", CAPTIONS["memory_vs_depth"])
    for dataset in datasets:
        name = f"example_segmentation_{dataset.name}"
        chosen = choose_example(
            dataset, experiments, inputs.predictions, inputs.examples.get(dataset.name), inputs.evaluations
        )
        if chosen is None:
            figure, axes = new_figure(1, 1)
            _not_run(axes[0], f"{dataset.name}: no predictions yet (not run)")
            emit(figure, name, f"Example segmentation ({dataset.name}): not run.")
            continue
        experiment, case_id, prediction = chosen
        figure, z = example_segmentation(load_example(dataset, experiment, case_id, prediction))
        caption = CAPTIONS["example_segmentation"].format(
            dataset=dataset.name,
            data=dataset.description,
            experiment=experiment.name,
            case=case_id,
            slice=z,
            regions=", ".join(TASK_REGIONS[dataset.task]),
        )
        emit(figure, name, caption)
    write_text_atomic(out / "index.csv", pd.DataFrame(index, columns=["file", "caption"]).to_csv(index=False))
    return index
