"""Scoring a folder of predicted label maps against the reference labels: per-case metrics and their summary.

Inputs are what ``revunet infer`` writes: ``PRED_DIR/predictions.csv`` (columns ``case_id``,
``prediction``, ``seconds``; a relative ``prediction`` path is read relative to ``PRED_DIR``) and
one label-map NIfTI per case on the case's original grid, in the dataset's on-disk label
convention (the case table's ``layout``). Each prediction is mapped to canonical labels with
:data:`revunet.data.labels.LABEL_MAPS`, the reference is read with :func:`revunet.data.io.load_case`,
and every region is scored by :func:`revunet.evaluation.metrics.region_scores` with the reference's voxel
spacing (mm, from its header):

- BraTS: the nested regions WT, TC, ET (:meth:`revunet.tasks.Task.region_masks`);
- iSeg: the classes CSF, GM, WM (canonical labels 1, 2, 3).

BraTS regions are also scored lesion-wise (:func:`revunet.evaluation.lesions.lesion_scores`,
BraTS's ranking since 2023). iSeg's tissue classes are not: each is one large connected sheet of
tissue in every infant brain, so "lesions" would be one true positive plus stray voxels, and its
challenge never scored them that way; their lesion columns are left empty.

Outputs (CSV, written atomically, the summary last so that its presence means both are complete):

- metrics, long format, one row per case x region: ``experiment, case_id, region, dice, hd95,
  hausdorff, sensitivity, specificity`` (distances in mm), then the lesion-wise ``lesion_tp,
  lesion_fp, lesion_fn, lesion_f1, lesion_dice, lesion_hd95, lesion_score_dice, lesion_score_hd95``
  (empty for iSeg), and ``postprocessing`` (``none``, or the rules applied before scoring);
- summary, one row per region x metric: ``experiment, region, metric, mean, std, median, n``, plus
  region ``mean``: per case the mean over its regions, summarised the same way. ``std`` is the
  sample standard deviation (ddof 1), 0 when there is a single case. A metric with no values for
  a region (the lesion-wise ones of iSeg) has no summary rows.

``revunet evaluate --postprocess`` scores the predictions after the BraTS post-processing of
:mod:`revunet.evaluation.postprocess` (the workflow writes those tables beside the plain ones).

A prediction on a different grid, with label values the layout does not define, or for a case the
case table does not hold, is an :class:`EvaluationError` naming the case and the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.data.io import AFFINE_TOLERANCE_MM, CaseError, load_case
from revunet.data.labels import disk_to_canonical
from revunet.evaluation.lesions import LESION_METRIC_NAMES, lesion_scores
from revunet.evaluation.metrics import METRIC_NAMES, region_scores
from revunet.evaluation.postprocess import PostProcessing, postprocess
from revunet.evaluation.predict import PREDICTIONS_FILE
from revunet.tasks import get_task

# The papers' whole-volume columns: what every reader of metrics.csv may rely on.
WHOLE_VOLUME_COLUMNS = ("experiment", "case_id", "region", *METRIC_NAMES)
# `postprocessing`: "none", or the rules applied before scoring (PostProcessing.describe()).
METRICS_COLUMNS = (*WHOLE_VOLUME_COLUMNS, *LESION_METRIC_NAMES, "postprocessing")
ALL_METRICS = (*METRIC_NAMES, *LESION_METRIC_NAMES)
# Tasks scored lesion-wise: BraTS's tumour regions (iSeg's tissue classes are one sheet each).
LESION_TASKS = frozenset({"brats"})
SUMMARY_COLUMNS = ("experiment", "region", "metric", "mean", "std", "median", "n")
MEAN_REGION = "mean"


class EvaluationError(ValueError):
    """Predictions that cannot be scored; the message names the case and the file."""


def case_scores(
    prediction: np.ndarray, reference: np.ndarray, task: str, spacing: Sequence[float]
) -> dict[str, dict[str, float]]:
    """region -> metric -> value for one case, from canonical label maps of one shape (lesion-wise too for BraTS)."""
    regions = get_task(task).region_masks
    predicted, expected = regions(prediction), regions(reference)
    scores = {}
    for region in expected:
        scores[region] = region_scores(predicted[region], expected[region], spacing)
        if task in LESION_TASKS:
            hd95 = scores[region]["hd95"]
            scores[region] |= lesion_scores(predicted[region], expected[region], spacing, region_hd95=hd95)
    return scores


# --------------------------------------------------------------------------- reading predictions


def read_predictions(pred_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``PRED_DIR/predictions.csv`` as a table of ``case_id`` and absolute ``path``, columns and ids checked."""
    listing = Path(pred_dir) / PREDICTIONS_FILE
    if not listing.is_file():
        raise EvaluationError(f"{listing} does not exist; expected the predictions list written by `revunet infer`")
    table = pd.read_csv(listing, dtype=str, keep_default_na=False)
    missing = [column for column in ("case_id", "prediction") if column not in table.columns]
    if missing:
        raise EvaluationError(f"{listing}: missing column(s) {missing}; expected columns case_id, prediction, seconds")
    if table.empty:
        raise EvaluationError(f"{listing}: lists no predictions")
    duplicated = sorted(set(table.loc[table["case_id"].duplicated(), "case_id"]))
    if duplicated:
        raise EvaluationError(f"{listing}: case(s) {duplicated[:5]} listed more than once")
    empty = table.loc[table["prediction"].str.len() == 0, "case_id"].tolist()
    if empty:
        raise EvaluationError(f"{listing}: no prediction file given for case(s) {empty[:5]}")
    paths = [Path(cell) if Path(cell).is_absolute() else Path(pred_dir) / cell for cell in table["prediction"]]
    return pd.DataFrame({"case_id": table["case_id"], "path": [str(p) for p in paths]})


def load_prediction(path: str | os.PathLike[str], case_id: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """A prediction file's canonical label map and affine; values must be the layout's on-disk labels."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"case {case_id}: prediction file {path} does not exist")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many kinds on a damaged file
        raise EvaluationError(
            f"case {case_id}: cannot read prediction file {path} ({type(error).__name__}: {error}); "
            "expected a NIfTI label map"
        ) from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise EvaluationError(
            f"case {case_id}: prediction file {path} has shape {data.shape}; expected a 3-D label map"
        )
    try:
        canonical = disk_to_canonical(data, layout)
    except ValueError as error:
        raise EvaluationError(f"case {case_id}: prediction file {path} {error}") from None
    return canonical, np.asarray(image.affine, dtype=np.float64)


# --------------------------------------------------------------------------- choosing and scoring cases


def select_cases(predictions: pd.DataFrame, split: Any | None, part: str) -> list[str]:
    """Case ids to score: every listed prediction, or (with a split) those of the split's ``part``.

    Every case of the chosen part must have a prediction.
    """
    listed = predictions["case_id"].tolist()
    if split is None:
        return listed
    try:
        wanted = split.part(part)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    missing = sorted(set(wanted) - set(listed))
    if missing:
        raise EvaluationError(
            f"{len(missing)} case(s) of the split's {part} part have no prediction: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    return sorted(wanted)


def evaluate_predictions(
    cases: pd.DataFrame,
    predictions: pd.DataFrame,
    case_ids: Sequence[str],
    experiment: str,
    postprocessing: PostProcessing | None = None,
) -> pd.DataFrame:
    """The long metrics table for ``case_ids``: every listed case is checked before any is scored.

    With ``postprocessing`` each prediction is post-processed (:mod:`revunet.evaluation.postprocess`)
    before it is scored.
    """
    rows_by_id: dict[str, Mapping[str, Any]] = {str(row["case_id"]): row for _, row in cases.iterrows()}
    path_by_id = dict(zip(predictions["case_id"], predictions["path"], strict=True))
    unknown = sorted(set(predictions["case_id"]) - set(rows_by_id))
    if unknown:
        raise EvaluationError(
            f"case(s) {unknown[:5]} in {PREDICTIONS_FILE} are not in the case table; "
            "expected predictions of the dataset the case table lists"
        )
    unlabelled = sorted(c for c in case_ids if not str(rows_by_id[c]["label"]))
    if unlabelled:
        raise EvaluationError(f"case(s) {unlabelled[:5]} have no reference label in the case table; cannot score them")

    how = postprocessing.describe() if postprocessing is not None else "none"
    rows = []
    for case_id in case_ids:
        row = rows_by_id[case_id]
        try:
            case = load_case(row)
        except CaseError as error:
            raise EvaluationError(f"reference of case {case_id}: {error}") from error
        assert case.label is not None
        path = path_by_id[case_id]
        prediction, affine = load_prediction(path, case_id, str(row["layout"]))
        if prediction.shape != case.label.shape:
            raise EvaluationError(
                f"case {case_id}: prediction file {path} has shape {prediction.shape} but the reference label "
                f"{case.source_files['label']} has shape {case.label.shape}; expected the original image grid"
            )
        difference = float(np.max(np.abs(affine - case.affine)))
        if difference > AFFINE_TOLERANCE_MM:
            raise EvaluationError(
                f"case {case_id}: prediction file {path} has an affine that differs from the reference's by up to "
                f"{difference:.4g} (tolerance {AFFINE_TOLERANCE_MM} mm); expected the original image grid"
            )
        if postprocessing is not None:
            prediction = postprocess(prediction, case.task, case.spacing, postprocessing)
        for region, scores in case_scores(prediction, case.label, case.task, case.spacing).items():
            rows.append(
                {"experiment": experiment, "case_id": case_id, "region": region, **scores, "postprocessing": how}
            )
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for one case), median and n of every metric per region and for the per-case region mean."""
    if metrics.empty:
        raise EvaluationError("no cases to summarise")
    experiment = str(metrics["experiment"].iloc[0])
    regions = list(dict.fromkeys(metrics["region"]))
    present = [metric for metric in ALL_METRICS if metric in metrics.columns]
    per_case_mean = metrics.groupby("case_id", sort=False)[present].mean()
    rows = []
    for region in [*regions, MEAN_REGION]:
        values = per_case_mean if region == MEAN_REGION else metrics.loc[metrics["region"] == region]
        for metric in present:
            column = values[metric].to_numpy(dtype=np.float64)
            if np.isnan(column).all():
                continue
            rows.append(
                {
                    "experiment": experiment,
                    "region": region,
                    "metric": metric,
                    "mean": float(column.mean()),
                    "std": float(column.std(ddof=1)) if column.size > 1 else 0.0,
                    "median": float(np.median(column)),
                    "n": int(column.size),
                }
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def write_evaluation(
    metrics: pd.DataFrame,
    summary: pd.DataFrame,
    metrics_path: str | os.PathLike[str],
    summary_path: str | os.PathLike[str],
) -> None:
    """Write both tables atomically, the summary last (its existence means the evaluation finished)."""
    write_text_atomic(metrics_path, metrics.to_csv(index=False))
    write_text_atomic(summary_path, summary.to_csv(index=False))


def summary_text(summary: pd.DataFrame) -> str:
    """A short fixed-width table of the summary: per region Dice, HD95 (mm), sensitivity, specificity, and
    (where scored) the BraTS 2023 lesion-wise Dice and HD95 scores."""
    heads = ("Dice mean ± std", "HD95 mean ± std", "HD95 median", "sens", "spec", "LW Dice", "LW HD95")
    lines = [
        f"{'region':<8}{'n':>4}  {heads[0]:>17}  {heads[1]:>17}  {heads[2]:>11}  {heads[3]:>6}  {heads[4]:>6}"
        f"  {heads[5]:>7}  {heads[6]:>7}"
    ]
    table = summary.set_index(["region", "metric"])
    for region in dict.fromkeys(summary["region"]):
        dice, hd95 = table.loc[(region, "dice")], table.loc[(region, "hd95")]
        sensitivity = table.loc[(region, "sensitivity"), "mean"]
        specificity = table.loc[(region, "specificity"), "mean"]
        lesion = [
            f"{table.loc[(region, metric), 'mean']:>7.{digits}f}" if (region, metric) in table.index else f"{'–':>7}"
            for metric, digits in (("lesion_score_dice", 4), ("lesion_score_hd95", 2))
        ]
        lines.append(
            f"{region:<8}{int(dice['n']):>4}  {dice['mean']:>8.4f} ± {dice['std']:<6.4f}  "
            f"{hd95['mean']:>8.2f} ± {hd95['std']:<6.2f}  {hd95['median']:>11.2f}  "
            f"{sensitivity:>6.4f}  {specificity:>6.4f}  {lesion[0]}  {lesion[1]}"
        )
    return "\n".join(lines)
