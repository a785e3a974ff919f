"""The region tables: Brügger et al.'s Table 1 and the invertible-residual Tables 2-3.

Each sets memory, Dice and a surface distance per region side by side, paper vs reproduced; what
differs between them (title, distance metric, an extra memory column, lesion-wise columns) is data
in :data:`REGION_TABLES`. The BraTS tables add our BraTS 2023 lesion-wise Dice and HD95 scores
(:mod:`revunet.evaluation.lesions`) after the papers' whole-volume columns, in a view of their own
said to be "beyond the papers": the papers report whole-volume scores only. The Markdown shows the
views memory, segmentation (Dice, with the cases and the data), distances and lesion-wise, each
beside the configuration and the experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd

from revunet.experiments.recipe import Experiment
from revunet.papers import paper_results
from revunet.report.inputs import ReportContext, region_mean
from revunet.report.markdown import ReportTable, TableView
from revunet.report.tables.common import MEMORY_NOTE, memory_row, optional_memory, table_caption


class Metric(NamedTuple):
    """One reported metric: its key in the paper's rows, its metrics.csv column, header name, scale, format."""

    key: str
    column: str
    name: str
    scale: float
    spec: str


DICE = Metric("dice", "dice", "Dice", 100.0, ".2f")
HD95 = Metric("hd95", "hd95", "HD95", 1.0, ".2f")
HAUSDORFF = Metric("hausdorff", "hausdorff", "Hausdorff", 1.0, ".2f")
LESION_METRICS = (
    Metric("lesion_score_dice", "lesion_score_dice", "lesion-wise Dice", 100.0, ".2f"),
    Metric("lesion_score_hd95", "lesion_score_hd95", "lesion-wise HD95", 1.0, ".2f"),
)
BEYOND_PAPERS = "beyond the papers"
LEGACY_COLUMN = "legacy_group_norm_memory_mib"
KEYS = ("row", "experiment")  # in every view: the paper's configuration and our experiment


@dataclass(frozen=True)
class RegionTable:
    """What one region table reports beyond the common columns."""

    title: str
    distance: Metric
    distance_note: str
    legacy_group_norm: bool = False  # Brügger et al.'s rows measured with PyTorch 1.1's GroupNorm too
    lesion_wise: bool = False  # BraTS regions: add our lesion-wise scores (not in the paper)

    @property
    def lesion_metrics(self) -> tuple[Metric, ...]:
        return LESION_METRICS if self.lesion_wise else ()

    @property
    def metrics(self) -> tuple[Metric, Metric]:
        return (DICE, self.distance)


_HD95_NOTE = "HD95 is the 95th percentile of the pooled symmetric surface distances (medpy)"
_HAUSDORFF_NOTE = "Hausdorff is the maximum symmetric surface distance (the paper's Eq. 8)"
REGION_TABLES = {
    "bruegger2019": RegionTable(
        "Brügger et al. 2019, Table 1: memory, Dice (%) and HD95 (mm)",
        HD95,
        _HD95_NOTE,
        legacy_group_norm=True,
        lesion_wise=True,
    ),
    "invres_iseg": RegionTable(
        "Invertible-residual U-Nets, Table 2 (iSeg): memory, Dice (%) and Hausdorff (mm)", HAUSDORFF, _HAUSDORFF_NOTE
    ),
    "invres_brats": RegionTable(
        "Invertible-residual U-Nets, Table 3 (BraTS): memory, Dice (%) and Hausdorff (mm)",
        HAUSDORFF,
        _HAUSDORFF_NOTE,
        lesion_wise=True,
    ),
}


def region_table(context: ReportContext, table: str) -> ReportTable:
    """Memory, Dice and distances of one region table, paper vs reproduced."""
    layout = REGION_TABLES[table]
    paper = paper_results()[table]
    unit = paper["memory_unit"]
    regions = list(paper["regions"])
    memory = context.memory_table(table)
    linked = context.linked[table]
    records = [
        _region_record(context, layout, entry, linked.get(entry["row"]), memory, unit, regions)
        for entry in paper["rows"]
    ]
    frame = _ordered(pd.DataFrame(records), regions, layout.metrics, layout.lesion_metrics)
    frame["n_cases"] = frame["n_cases"].astype("Int64")
    formats, headers = _region_columns(unit, regions, layout.metrics, layout.lesion_metrics)
    units = "paper MB are MiB (the authors' code divides by 1024 twice)" if unit == "MiB" else "paper GB read as GiB"
    extra = (
        f"Reproduced Dice and distances are means over the split's test cases, which never chose the "
        f"checkpoint; {layout.distance_note}; {units}. The twin "
        "has the same parameters stored by plain autograd (no memory saving)."
    )
    if layout.lesion_wise:
        extra += (
            " Lesion-wise columns (beyond the papers, which score whole volumes): BraTS 2023's lesion-wise Dice (%) "
            "and HD95 (mm), 26-connected lesions matched one to one, each miss or false positive counted as "
            "Dice 0 and 374 mm."
        )
    caption = table_caption(context, table, linked.values(), MEMORY_NOTE.format(table=table), extra)
    missing = {"experiment": "–", "data": "–", f"twin_memory_{unit.lower()}": "–"}
    views = _region_views(list(frame.columns), layout, regions)
    return ReportTable(table, layout.title + ", paper vs reproduced", caption, frame, formats, headers, missing, views)


def _region_views(columns: list[str], layout: RegionTable, regions: list[str]) -> list[TableView]:
    """Memory; Dice per region (with the data); distances per region; our lesion-wise scores (BraTS)."""
    memory = tuple(c for c in columns if "memory" in c)
    measured = ["the paper's", "ours measured", "their ratio", "the floor (what no exact implementation avoids)"]
    measured += ["measured/floor", "the non-reversible twin's"]
    measured += ["ours with PyTorch 1.1's GroupNorm"] if LEGACY_COLUMN in memory else []
    distance = layout.distance

    def scores(*metrics: Metric, sides: tuple[str, ...] = ("paper", "reproduced")) -> tuple[str, ...]:
        return tuple(f"{side}_{m.column}_{region}" for m in metrics for region in regions for side in sides)

    views = [
        TableView(
            "memory",
            f"Peak memory of one training step at the paper's size: {', '.join(measured[:-1])} and {measured[-1]}.",
            (*KEYS, *memory),
        ),
        TableView(
            "segmentation",
            "Dice (%) per region, the paper's next to ours (means over the test cases), and the data ours come from.",
            (*KEYS, *scores(DICE), "n_cases", "data"),
        ),
        TableView(
            "distances",
            f"{distance.name} (mm) per region, the paper's next to ours (means over the test cases).",
            (*KEYS, *scores(distance), "n_cases"),
        ),
    ]
    if layout.lesion_wise:
        views.append(
            TableView(
                "lesion_wise",
                f"Ours only ({BEYOND_PAPERS}, which score whole volumes): BraTS 2023's lesion-wise Dice (%) and "
                "HD95 (mm) per region.",
                (*KEYS, *scores(*LESION_METRICS, sides=("reproduced",)), "n_cases"),
            )
        )
    return views


def _region_record(
    context: ReportContext,
    layout: RegionTable,
    entry: dict[str, Any],
    experiment: Experiment | None,
    memory: pd.DataFrame | None,
    unit: str,
    regions: list[str],
) -> dict[str, Any]:
    """One paper row: its memory (paper, measured, twin), then paper and reproduced metrics per region."""
    divisor = 1.0 if unit == "MiB" else 1024.0
    suffix = unit.lower()
    measured = memory_row(memory, entry["row"])
    record: dict[str, Any] = {"row": entry["row"], "experiment": experiment.name if experiment else ""}
    record[f"paper_memory_{suffix}"] = float(entry["memory"])
    record[f"measured_memory_{suffix}"] = measured["measured_mb"] / divisor if measured is not None else None
    record["memory_ratio"] = measured["ratio"] if measured is not None else None
    record[f"floor_memory_{suffix}"] = optional_memory(measured, "floor_mb", divisor)
    record["memory_vs_floor"] = optional_memory(measured, "measured_vs_floor", 1.0)
    record[f"twin_memory_{suffix}"] = optional_memory(measured, "twin_mb", divisor)
    if layout.legacy_group_norm:
        record[LEGACY_COLUMN] = optional_memory(measured, "legacy_group_norm_mb", divisor)
    metrics = context.metrics(experiment) if experiment else None
    for metric in layout.metrics:
        for region in regions:
            record[f"paper_{metric.column}_{region}"] = float(entry[metric.key][region])
            value = None
            if metrics is not None:
                mean = region_mean(metrics, region, metric.column, context.metrics_path(experiment))
                value = round(mean * metric.scale, 2)
            record[f"reproduced_{metric.column}_{region}"] = value
    for metric in layout.lesion_metrics:
        for region in regions:
            value = None
            if metrics is not None and metric.column in metrics.columns:
                mean = region_mean(metrics, region, metric.column, context.metrics_path(experiment))
                value = None if math.isnan(mean) else round(mean * metric.scale, 2)
            record[f"reproduced_{metric.column}_{region}"] = value
    record["n_cases"] = int(metrics["case_id"].nunique()) if metrics is not None else None
    record["data"] = context.data_of(experiment) if experiment else ""
    return record


def _region_columns(
    unit: str, regions: list[str], metrics: tuple[Metric, ...], lesion_metrics: tuple[Metric, ...]
) -> tuple[dict[str, str], dict[str, str]]:
    """The Markdown format spec and header of every column of a region table."""
    suffix = unit.lower()
    memory_format = ".0f" if unit == "MiB" else ".2f"
    formats = {f"{side}_memory_{suffix}": memory_format for side in ("paper", "measured", "floor", "twin")}
    formats.update({"memory_ratio": ".2f", "memory_vs_floor": ".2f", LEGACY_COLUMN: memory_format, "n_cases": ".0f"})
    headers = {
        "row": "Configuration",
        "experiment": "Experiment",
        f"paper_memory_{suffix}": f"Memory {unit} paper",
        f"measured_memory_{suffix}": f"Memory {unit} measured",
        "memory_ratio": "measured/paper",
        f"floor_memory_{suffix}": f"floor {unit}",
        "memory_vs_floor": "measured/floor",
        f"twin_memory_{suffix}": f"non-reversible twin {unit}",
        LEGACY_COLUMN: "measured with PyTorch 1.1 GroupNorm MiB",
        "n_cases": "test cases",
        "data": "Data",
    }
    for metric in metrics:
        for region in regions:
            for side, word in (("paper", "paper"), ("reproduced", "ours")):
                formats[f"{side}_{metric.column}_{region}"] = metric.spec
                headers[f"{side}_{metric.column}_{region}"] = f"{metric.name} {region} {word}"
    for metric in lesion_metrics:
        for region in regions:
            formats[f"reproduced_{metric.column}_{region}"] = metric.spec
            headers[f"reproduced_{metric.column}_{region}"] = (
                f"{metric.name} {region} ours"  # the view says: beyond the papers
            )
    return formats, headers


def _ordered(
    frame: pd.DataFrame, regions: list[str], metrics: tuple[Metric, ...], lesion_metrics: tuple[Metric, ...]
) -> pd.DataFrame:
    """Paper and reproduced columns of each metric and region side by side, then our lesion-wise columns."""
    front = [c for c in frame.columns if "memory" in c or c in ("row", "experiment")]
    metric_columns = [
        f"{side}_{metric.column}_{region}"
        for metric in metrics
        for region in regions
        for side in ("paper", "reproduced")
    ]
    lesion_columns = [f"reproduced_{metric.column}_{region}" for metric in lesion_metrics for region in regions]
    return frame[front + metric_columns + lesion_columns + ["n_cases", "data"]]
