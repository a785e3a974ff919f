"""The figures drawn from tables of numbers: training curves, score distributions, memory against the papers.

Each is drawn on a matplotlib ``Figure`` with the Agg canvas (no display, no pyplot state shared
between figures); a figure whose inputs do not exist yet gets a panel saying "not run".
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from revunet.atomic import write_bytes_atomic
from revunet.catalog import MEMORY_TABLES, TASK_REGIONS
from revunet.experiments.recipe import Experiment
from revunet.papers import paper_results
from revunet.report.inputs import ReportContext, memory_table, training_log

# Panel titles of the paper tables.
TABLE_TITLES = {
    "bruegger2019": "Brügger et al. 2019 (BraTS)",
    "invres_iseg": "Invertible residual (iSeg)",
    "invres_brats": "Invertible residual (BraTS)",
    "pendse2020": "Pendse et al. 2020 (BraTS)",
}


def save_figure(figure: Any, out: Path, name: str, banner: str | None = None) -> list[Path]:
    """``out/name.png`` and ``out/name.pdf``, each rendered to memory first and written atomically.

    ``banner`` (a smoke run's mark) is written in red across the top of the figure."""
    if banner:
        figure.text(0.5, 0.998, banner, ha="center", va="top", color="red", fontsize=8, wrap=True)
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


def not_run(axes: Any, text: str) -> None:
    """Mark a panel whose inputs do not exist yet."""
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=10, color="grey")
    axes.set_xticks([])
    axes.set_yticks([])


def experiment_label(experiment: Experiment) -> str:
    """An experiment as a figure names it: its paper row, else its name."""
    return experiment.row or experiment.name


# --------------------------------------------------------------------------- training and scores


def training_curves(experiments: Sequence[Experiment], training: Path | None) -> Any:
    """One panel per experiment with a log: training loss, validation mean Dice and its EMA."""
    from matplotlib.ticker import MaxNLocator

    logs = [(e, training_log(training, e.name)) for e in experiments]
    logs = [(e, log) for e, log in logs if log is not None]
    figure, axes = new_figure(len(logs), 4)
    if not logs:
        not_run(axes[0], "no training logs yet (not run)")
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


def score_frames(experiments: Sequence[Experiment], context: ReportContext) -> dict[str, pd.DataFrame]:
    """Per-case metrics of every evaluated experiment, grouped by paper table (unlinked: by task)."""
    groups: dict[str, list[pd.DataFrame]] = {}
    for experiment in experiments:
        metrics = context.metrics(experiment)
        if metrics is None:
            continue
        group = experiment.table if experiment.table in MEMORY_TABLES else f"other {experiment.task}"
        groups.setdefault(group, []).append(metrics.assign(architecture=experiment_label(experiment)))
    return {group: pd.concat(frames, ignore_index=True) for group, frames in groups.items()}


def score_distribution(groups: Mapping[str, pd.DataFrame], metric: str, scale: float, ylabel: str) -> Any:
    """Box and strip plots of ``metric`` per region (x) and architecture (hue), one panel per group."""
    import seaborn as sns

    figure, axes = new_figure(len(groups), 2, (5.5, 3.6))
    if not groups:
        not_run(axes[0], "no evaluations yet (not run)")
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
    tables = {table: memory_table(memory, table) for table in MEMORY_TABLES}
    return {table: frame for table, frame in tables.items() if frame is not None}


def memory_vs_paper(tables: Mapping[str, pd.DataFrame]) -> Any:
    """Grouped bars per row: paper, measured and (for reversible rows) the twin, in the paper's unit."""
    figure, axes = new_figure(len(MEMORY_TABLES), 2, (5.5, 3.6))
    for ax, table in zip(axes, MEMORY_TABLES, strict=True):
        unit = paper_results()[table]["memory_unit"]
        divisor = 1.0 if unit == "MiB" else 1024.0
        frame = tables.get(table)
        ax.set_title(TABLE_TITLES[table], fontsize=9)
        if frame is None:
            not_run(ax, f"{table}: not measured")
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
        not_run(left, "bruegger2019: not measured")
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
        not_run(right, "complexity: not measured")
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
