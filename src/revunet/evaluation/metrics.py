"""Overlap and surface-distance scores of one binary region, with the BraTS conventions for empty masks.

:func:`region_scores` compares a predicted mask with a reference mask on a voxel grid of known
spacing (mm) and returns Dice, HD95, Hausdorff distance, sensitivity and specificity. It never
returns NaN: every 0/0 has a defined value.

Empty masks (the BraTS challenge convention, PAPER_FACTS section 5):

- both empty: Dice 1, HD95 0, Hausdorff 0 — nothing to find and nothing found;
- exactly one empty: Dice 0, HD95 :data:`EMPTY_DISTANCE_MM` = 373.13 mm and Hausdorff the same
  373.13 mm. The constant is the diagonal of the 240 x 240 x 155 BraTS grid at 1 mm,
  sqrt(240² + 240² + 155²); it is used whatever the grid and spacing, so that scores from
  different datasets stay comparable to the challenge's.

Sensitivity and specificity by counting (TP, FN, TN, FP over the whole volume):

- sensitivity = TP / (TP + FN); with an empty reference (no positives to find) it is 1 if the
  prediction is empty too and 0 otherwise, the same rule as Dice, so that a prediction of
  only false positives is not rewarded;
- specificity = TN / (TN + FP); with a reference that fills the whole volume (no negatives) it is
  1 if the prediction fills it too and 0 otherwise, the same rule with foreground and
  background swapped.

Surface distances come from medpy (``medpy.metric.binary.hd`` and ``hd95`` with
``voxelspacing=spacing`` and ``connectivity=1``): the surface of a mask is the mask minus its
erosion by the 6-neighbourhood, and each surface voxel's distance to the other mask's surface is
read from a Euclidean distance transform in mm. Note which HD95 this is: medpy pools the two
directed distance sets (prediction → reference and reference → prediction) and takes the 95th
percentile of the pooled set, whereas MONAI and DeepMind's surface-distance package take the
larger of the two directed 95th percentiles; the two can differ when the masks' surfaces have
very different sizes. Hausdorff is the maximum over both directions (the same in all three).

medpy itself would raise on an empty mask in ``hd``/``hd95`` (and older combinations of medpy and
NumPy 2 return NaN from ``dc`` for two empty masks), so empty masks are settled here before medpy
is called. Before the distance transforms both masks are cropped to their joint bounding box plus
one voxel of margin: distances between surface voxels do not change (a mask touching the volume's
edge is cropped at that edge, so its erosion is unchanged too), and on a 240 x 240 x 155 volume
the transforms run tens of times faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from medpy.metric import binary as medpy_binary

# Diagonal of the 240 x 240 x 155 BraTS grid at 1 mm: the distance scored when exactly one mask is empty.
EMPTY_DISTANCE_MM = 373.13
METRIC_NAMES = ("dice", "hd95", "hausdorff", "sensitivity", "specificity")

# 6-neighbourhood (face) connectivity for the surface, as in the BraTS evaluation.
_CONNECTIVITY = 1


def as_mask(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a boolean 3-D mask; a non-boolean array is accepted only if it holds 0 and 1 alone."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D mask, got an array of shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a boolean or 0/1 numeric mask, got data type {array.dtype}")
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = values[~np.isin(values, (0, 1))][:10].tolist()
        raise ValueError(f"{name}: a non-boolean mask must hold only 0 and 1, found also {shown}")
    return array.astype(bool)


def as_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(
            f"spacing must be 3 positive finite numbers (mm per voxel along each axis), got {spacing!r}"
        ) from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be 3 positive finite numbers (mm per voxel along each axis), got {spacing!r}")
    return values  # type: ignore[return-value]


def joint_crop(prediction: np.ndarray, reference: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the smallest box holding every foreground voxel of either mask, grown by ``margin`` voxels.

    The box is clipped at the volume's edges. Both masks must be non-empty together (at least one voxel).
    """
    either = prediction | reference
    box = []
    for axis in range(either.ndim):
        others = tuple(a for a in range(either.ndim) if a != axis)
        present = np.flatnonzero(either.any(axis=others))
        if present.size == 0:
            raise ValueError("joint_crop needs at least one foreground voxel in either mask")
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, either.shape[axis])))
    return tuple(box)


def surface_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float], crop: bool = True
) -> tuple[float, float]:
    """(HD95, Hausdorff) in mm between two non-empty masks, by medpy; ``crop`` first cuts the joint bounding box."""
    if crop:
        box = joint_crop(prediction, reference)
        prediction, reference = prediction[box], reference[box]
    hd95 = pooled_hd95(prediction, reference, spacing)
    hausdorff = medpy_binary.hd(prediction, reference, voxelspacing=spacing, connectivity=_CONNECTIVITY)
    return float(hd95), float(hausdorff)


def pooled_hd95(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """HD95 in mm between two non-empty masks: medpy's pooled 95th percentile over 6-connected surfaces, uncropped."""
    return float(medpy_binary.hd95(prediction, reference, voxelspacing=spacing, connectivity=_CONNECTIVITY))


def _ratio(numerator: int, denominator: int, when_undefined: float) -> float:
    return numerator / denominator if denominator else when_undefined


def region_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], crop: bool = True
) -> dict[str, float]:
    """Dice, HD95 (mm), Hausdorff (mm), sensitivity and specificity of one region (see the module docstring).

    ``prediction`` and ``reference`` are boolean 3-D masks of one shape (0/1 integer arrays are
    accepted); ``spacing`` is the voxel size in mm along each axis. ``crop=False`` runs the
    surface distances on the full volumes (same result, slower; kept for testing that).
    """
    prediction = as_mask(prediction, "prediction")
    reference = as_mask(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference masks differ in shape: {prediction.shape} vs {reference.shape}")
    voxel_mm = as_spacing(spacing)

    tp = int(np.count_nonzero(prediction & reference))
    predicted = int(np.count_nonzero(prediction))
    positives = int(np.count_nonzero(reference))
    fp = predicted - tp
    negatives = reference.size - positives
    tn = negatives - fp

    if predicted == 0 and positives == 0:
        dice, hd95, hausdorff = 1.0, 0.0, 0.0
    elif predicted == 0 or positives == 0:
        dice, hd95, hausdorff = 0.0, EMPTY_DISTANCE_MM, EMPTY_DISTANCE_MM
    else:
        dice = 2.0 * tp / (predicted + positives)
        hd95, hausdorff = surface_distances(prediction, reference, voxel_mm, crop=crop)
    return {
        "dice": float(dice),
        "hd95": hd95,
        "hausdorff": hausdorff,
        "sensitivity": _ratio(tp, positives, when_undefined=1.0 if predicted == 0 else 0.0),
        "specificity": _ratio(tn, negatives, when_undefined=1.0 if predicted == reference.size else 0.0),
    }
