"""BraTS scores without and with post-processing (beyond the papers, which report neither the rule nor its effect).

Two rows per BraTS experiment: its plain predictions (``EVAL_DIR/<exp>/metrics.csv``) and the same
predictions after the post-processing of :mod:`revunet.evaluation.postprocess`
(``EVAL_DIR/<exp>/postprocessed/metrics.csv``, the rules named in its ``postprocessing`` column).
Columns: the whole-volume Dice (%) and HD95 (mm) the papers report, then BraTS 2023's lesion-wise
Dice (%) and HD95 (mm), per region, as means over the test cases; the Markdown shows the two
families as two views, each beside the experiment, the post-processing and the number of cases.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from revunet.report.inputs import ReportContext, case_metrics, experiment_order, region_mean
from revunet.report.markdown import ReportTable, TableView
from revunet.report.tables.regions import DICE, HD95, LESION_METRICS, Metric

POSTPROCESSED_FOLDER = "postprocessed"
REGIONS = ("WT", "TC", "ET")
METRICS: tuple[Metric, ...] = (DICE, HD95, *LESION_METRICS)


def _scores(metrics: pd.DataFrame | None, source: str) -> dict[str, Any]:
    """Mean of every metric and region (scaled, 2 decimals), None where absent."""
    record: dict[str, Any] = {}
    for metric in METRICS:
        for region in REGIONS:
            value = None
            if metrics is not None and metric.column in metrics.columns:
                mean = region_mean(metrics, region, metric.column, source)
                value = None if math.isnan(mean) else round(mean * metric.scale, 2)
            record[f"{metric.column}_{region}"] = value
    record["n_cases"] = int(metrics["case_id"].nunique()) if metrics is not None else None
    return record


def _described(metrics: pd.DataFrame | None) -> str:
    """The rules a post-processed evaluation applied, from its ``postprocessing`` column."""
    if metrics is None or "postprocessing" not in metrics.columns:
        return "post-processed"
    return ", ".join(sorted(set(metrics["postprocessing"].astype(str))))


def postprocessing_table(context: ReportContext) -> ReportTable:
    """Every BraTS experiment's scores without and with post-processing."""
    evaluations = context.inputs.evaluations
    records = []
    for experiment in experiment_order(e for e in context.experiments if e.task == "brats"):
        plain = context.metrics(experiment)
        folder = evaluations / experiment.name if evaluations is not None else None
        processed = case_metrics(folder, POSTPROCESSED_FOLDER)
        source = str(folder / POSTPROCESSED_FOLDER / "metrics.csv") if folder else ""
        for how, metrics, where in (
            ("none", plain, context.metrics_path(experiment)),
            (_described(processed), processed, source),
        ):
            records.append({"experiment": experiment.name, "postprocessing": how, **_scores(metrics, where)})
    columns = ["experiment", "postprocessing", *(f"{m.column}_{r}" for m in METRICS for r in REGIONS), "n_cases"]
    frame = pd.DataFrame(records, columns=columns)
    frame["n_cases"] = frame["n_cases"].astype("Int64")
    formats = {f"{m.column}_{r}": m.spec for m in METRICS for r in REGIONS} | {"n_cases": ".0f"}
    headers = {f"{m.column}_{r}": f"{m.name} {r}" for m in METRICS for r in REGIONS}
    headers |= {"experiment": "Experiment", "postprocessing": "Post-processing", "n_cases": "test cases"}
    caption = (
        "Beyond the papers: each BraTS experiment's test predictions scored as they are and after the "
        "post-processing of BraTS 2019-2020 entries (config postprocessing: whole-tumour components below a volume "
        "removed, then a case's enhancing tumour relabelled necrosis when below a volume). Whole-volume Dice (%) and "
        "HD95 (mm) as in the papers, then BraTS 2023's lesion-wise Dice (%) and HD95 (mm); means over the cases."
    )
    title = "BraTS post-processing: scores without and with it (beyond the papers)"
    keys = ("experiment", "postprocessing")
    views = [
        TableView(
            "whole_volume",
            "Whole-volume Dice (%) and HD95 (mm) per region, as the papers score them.",
            (*keys, *(f"{m.column}_{r}" for m in (DICE, HD95) for r in REGIONS), "n_cases"),
        ),
        TableView(
            "lesion_wise",
            "BraTS 2023's lesion-wise Dice (%) and HD95 (mm) per region.",
            (*keys, *(f"{m.column}_{r}" for m in LESION_METRICS for r in REGIONS), "n_cases"),
        ),
    ]
    return ReportTable("postprocessing", title, caption, frame, formats, headers, {"experiment": "–"}, views)
