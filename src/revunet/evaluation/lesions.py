"""Lesion-wise scores of one binary region: connected components matched one to one, as BraTS has ranked since 2023.

The whole-volume Dice and HD95 of :mod:`revunet.evaluation.metrics` (what the 2019/2020 papers
report) treat a region as one mask: a missed small lesion barely moves them when a large one is
found. Since 2023 BraTS ranks by lesion-wise scores instead, which count every lesion. Here, per
region (the BraTS package's procedure, built on panoptica; our own code on scipy):

1. lesions are the connected components of the reference and of the prediction with
   26-connectivity (``scipy.ndimage.label`` with a 3 x 3 x 3 structure);
2. reference and predicted lesions are matched one to one by a maximum-weight bipartite matching
   on their Dice (``scipy.optimize.linear_sum_assignment``); a pair counts only when its Dice
   exceeds :data:`MATCH_DICE` = 1e-6, i.e. when the two lesions overlap;
3. a matched pair is a true positive (TP), an unmatched predicted lesion a false positive (FP),
   an unmatched reference lesion a false negative (FN). When one reference lesion is split into
   two predictions, the better-overlapping one is matched and the other is a FP; when two
   reference lesions are merged into one prediction, it matches the one it overlaps better and
   the other is a FN.

Scores (keys of :data:`LESION_METRIC_NAMES`):

- ``lesion_tp``, ``lesion_fp``, ``lesion_fn``: the counts;
- ``lesion_f1`` = 2 TP / (2 TP + FP + FN), the detection F1;
- ``lesion_dice``: mean Dice over the matched pairs;
- ``lesion_hd95``: mean over the matched pairs of each pair's HD95 (mm, the case's spacing), the
  same HD95 as the whole-volume one (medpy: 6-connected surfaces, both directions pooled);
- ``lesion_score_dice`` = (sum of matched Dice) / (TP + FP + FN): BraTS 2023's "lesion-wise Dice",
  where every miss and every false positive counts as a lesion of Dice 0;
- ``lesion_score_hd95`` = (sum of matched HD95 + 374 mm x (FP + FN)) / (TP + FP + FN): BraTS 2023's
  "lesion-wise HD95", where every unmatched lesion costs :data:`LESION_PENALTY_MM` = 374 mm.

Empty regions (BraTS 2023's rules; this function never returns NaN):

- both empty: TP = FP = FN = 0, F1 1, Dice 1, HD95 0, score Dice 1, score HD95 0 (the 2023 code
  turns its 0/0 into 1 and 0);
- no match at all (one side empty, or no overlapping pair): F1 0, Dice 0, HD95 374, score Dice 0,
  score HD95 374 (the mean over no pairs is undefined; it gets the values of a miss).
  panoptica's own defaults differ only in form: NaN when neither side has a lesion, and for no true
  positive otherwise Dice 0 and an infinite distance, which BraTS turns into 374 mm.

What differs from the 2023 scripts (Sage Bionetworks / BraTS-2023-Metrics): they merge reference
lesions lying within 3 dilations of each other into one, ignore reference lesions of 50 voxels or
fewer, let every prediction touching a (dilated) reference lesion count for it (many to one), and
take the larger of the two directed 95th percentiles as HD95. The matching here is the newer,
panoptica-based package's: one to one, no dilation, no volume threshold.

Speed: both masks are labelled inside their joint bounding box, and each matched pair's HD95 is
computed inside the pair's own bounding box plus one voxel (distances between surface voxels do not
change, see :func:`revunet.evaluation.metrics.joint_crop`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from revunet.evaluation.metrics import as_mask, as_spacing, joint_crop, pooled_hd95

LESION_METRIC_NAMES = (
    "lesion_tp",
    "lesion_fp",
    "lesion_fn",
    "lesion_f1",
    "lesion_dice",
    "lesion_hd95",
    "lesion_score_dice",
    "lesion_score_hd95",
)
# BraTS 2023's distance for a lesion that is missed or invented (mm).
LESION_PENALTY_MM = 374.0
# A reference and a predicted lesion may be matched only when their Dice exceeds this.
MATCH_DICE = 1e-6
# 26-connectivity: voxels touching by a face, an edge or a corner belong to one lesion.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 1..n of the 26-connected components of a boolean mask (0 outside), and n."""
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    return labels, int(count)


def pair_dice(reference: np.ndarray, n_reference: int, prediction: np.ndarray, n_prediction: int) -> np.ndarray:
    """Dice of every (reference lesion, predicted lesion) pair, shape (n_reference, n_prediction)."""
    either = (reference > 0) | (prediction > 0)
    codes = reference[either].astype(np.int64) * (n_prediction + 1) + prediction[either]
    counts = np.bincount(codes, minlength=(n_reference + 1) * (n_prediction + 1)).reshape(
        n_reference + 1, n_prediction + 1
    )
    reference_sizes = counts[1:, :].sum(axis=1)
    prediction_sizes = counts[:, 1:].sum(axis=0)
    return 2.0 * counts[1:, 1:] / (reference_sizes[:, None] + prediction_sizes[None, :])


def match_lesions(dice: np.ndarray) -> list[tuple[int, int, float]]:
    """(reference index, prediction index, Dice) of the one-to-one matching of maximum total Dice.

    Indices are 0-based rows and columns of ``dice``; pairs of Dice <= :data:`MATCH_DICE` are dropped.
    """
    if dice.size == 0:
        return []
    rows, columns = linear_sum_assignment(dice, maximize=True)
    return [(int(r), int(c), float(dice[r, c])) for r, c in zip(rows, columns) if dice[r, c] > MATCH_DICE]


def _union_box(first: tuple[slice, ...], second: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box holding both boxes, grown by one voxel and clipped at the array's edges."""
    return tuple(
        slice(max(min(a.start, b.start) - 1, 0), min(max(a.stop, b.stop) + 1, size))
        for a, b, size in zip(first, second, shape)
    )


def _empty_scores(both_empty: bool) -> dict[str, float]:
    """Scores when no pair is matched: perfect if there was nothing to find, those of a miss otherwise."""
    good = 1.0 if both_empty else 0.0
    distance = 0.0 if both_empty else LESION_PENALTY_MM
    return {"lesion_f1": good, "lesion_dice": good, "lesion_hd95": distance} | {
        "lesion_score_dice": good,
        "lesion_score_hd95": distance,
    }


def lesion_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], region_hd95: float | None = None
) -> dict[str, float]:
    """The lesion-wise scores of :data:`LESION_METRIC_NAMES` for one region (see the module docstring).

    ``prediction`` and ``reference`` are boolean 3-D masks of one shape (0/1 integer arrays are
    accepted); ``spacing`` is the voxel size in mm along each axis. Counts are returned as floats.
    ``region_hd95``, the whole-region HD95 when already computed, is reused when each side is a
    single lesion and the two match: the pair is then the whole region (the common case, a third
    faster).
    """
    prediction = as_mask(prediction, "prediction")
    reference = as_mask(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference masks differ in shape: {prediction.shape} vs {reference.shape}")
    voxel_mm = as_spacing(spacing)
    if not prediction.any() and not reference.any():
        return {"lesion_tp": 0.0, "lesion_fp": 0.0, "lesion_fn": 0.0} | _empty_scores(both_empty=True)
    box = joint_crop(prediction, reference)
    predicted, n_predicted = components(prediction[box])
    expected, n_expected = components(reference[box])
    matches = match_lesions(pair_dice(expected, n_expected, predicted, n_predicted))
    tp, fp, fn = len(matches), n_predicted - len(matches), n_expected - len(matches)
    scores = {"lesion_tp": float(tp), "lesion_fp": float(fp), "lesion_fn": float(fn)}
    if not matches:
        return scores | _empty_scores(both_empty=False)
    predicted_boxes, expected_boxes = ndimage.find_objects(predicted), ndimage.find_objects(expected)
    dices, distances = [], []
    for r, c, dice in matches:
        if region_hd95 is not None and n_predicted == n_expected == 1:
            distances.append(float(region_hd95))
        else:
            pair = _union_box(expected_boxes[r], predicted_boxes[c], predicted.shape)
            distances.append(pooled_hd95(predicted[pair] == c + 1, expected[pair] == r + 1, voxel_mm))
        dices.append(dice)
    lesions = tp + fp + fn
    scores["lesion_f1"] = 2.0 * tp / (2 * tp + fp + fn)
    scores["lesion_dice"] = float(np.mean(dices))
    scores["lesion_hd95"] = float(np.mean(distances))
    scores["lesion_score_dice"] = float(np.sum(dices)) / lesions
    scores["lesion_score_hd95"] = (float(np.sum(distances)) + LESION_PENALTY_MM * (fp + fn)) / lesions
    return scores
