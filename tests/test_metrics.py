"""region_scores against an independent computation (scipy distance transforms, counting) and the empty-mask rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from revunet.evaluation.metrics import EMPTY_DISTANCE_MM, METRIC_NAMES, joint_crop, region_scores

SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask (outside the volume counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=SIX_NEIGHBOURS, border_value=0)


def directed(from_mask: np.ndarray, to_mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``from_mask`` to the nearest surface voxel of ``to_mask``."""
    to_nearest = ndimage.distance_transform_edt(~surface(to_mask), sampling=spacing)
    return to_nearest[surface(from_mask)]


def expected_scores(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """What region_scores should return for two non-empty masks, computed without medpy."""
    a, b = directed(prediction, reference, spacing), directed(reference, prediction, spacing)
    tp = np.sum(prediction & reference)
    tn = np.sum(~prediction & ~reference)
    return {
        "dice": 2 * tp / (prediction.sum() + reference.sum()),
        "hd95": float(np.percentile(np.concatenate([a, b]), 95)),
        "hausdorff": float(max(a.max(), b.max())),
        "sensitivity": tp / reference.sum(),
        "specificity": tn / (~reference).sum(),
    }


def random_blob(rng: np.random.Generator, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    """A random mask with some spatial structure (smoothed noise), so surfaces are neither trivial nor everywhere."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    return noise > np.quantile(noise, 1 - fill)


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [
        ((20, 24, 16), (1.0, 1.0, 1.0), 0),
        ((20, 24, 16), (1.0, 1.5, 3.0), 1),
        ((31, 17, 25), (0.8, 2.0, 1.2), 2),
        ((12, 40, 9), (3.0, 1.0, 1.5), 3),
    ],
)
def test_random_masks_match_independent_computation(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    for fill_prediction, fill_reference in [(0.2, 0.25), (0.05, 0.4), (0.5, 0.5)]:
        prediction = random_blob(rng, shape, fill_prediction)
        reference = random_blob(rng, shape, fill_reference)
        scores = region_scores(prediction, reference, spacing)
        assert set(scores) == set(METRIC_NAMES)
        for name, value in expected_scores(prediction, reference, spacing).items():
            assert scores[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_anisotropic_spacing_changes_distances_along_the_coarse_axis():
    reference = np.zeros((10, 10, 30), dtype=bool)
    reference[3:7, 3:7, 5:10] = True
    prediction = np.roll(reference, 4, axis=2)  # shifted 4 voxels along z
    fine = region_scores(prediction, reference, (1.0, 1.0, 1.0))
    coarse = region_scores(prediction, reference, (1.0, 1.0, 3.0))
    assert fine["hausdorff"] == pytest.approx(4.0)
    assert coarse["hausdorff"] == pytest.approx(12.0)
    assert coarse["dice"] == fine["dice"] == pytest.approx(2 * 4 * 4 * 1 / (2 * 4 * 4 * 5))


def test_hd95_pools_both_directions():
    """A cube found exactly plus a small false blob far away: the pooled 95th percentile ignores the blob.

    The blob holds about 6 % of the prediction's surface, so the prediction -> reference 95th percentile
    (MONAI/DeepMind take the larger directed one) is the blob's distance, while pooling with the
    reference -> prediction distances (all 0) halves its share below 5 %.
    """
    reference = np.zeros((50, 24, 24), dtype=bool)
    reference[2:22, 2:22, 2:22] = True
    prediction = reference.copy()
    prediction[40:46, 9:15, 9:15] = True
    spacing = (1.0, 1.0, 1.0)
    scores = region_scores(prediction, reference, spacing)
    a, b = directed(prediction, reference, spacing), directed(reference, prediction, spacing)
    assert scores["hd95"] == pytest.approx(np.percentile(np.concatenate([a, b]), 95)) == 0.0
    assert max(np.percentile(a, 95), np.percentile(b, 95)) > 15.0
    assert scores["hausdorff"] == pytest.approx(45 - 21)  # far face of the blob to the near face of the cube


def test_identical_masks():
    rng = np.random.default_rng(5)
    mask = random_blob(rng, (16, 16, 16), 0.3)
    assert region_scores(mask, mask, (1.0, 2.0, 0.5)) == {
        "dice": 1.0,
        "hd95": 0.0,
        "hausdorff": 0.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
    }


def test_both_empty():
    empty = np.zeros((8, 9, 10), dtype=bool)
    assert region_scores(empty, empty, (1.0, 1.0, 1.0)) == {
        "dice": 1.0,
        "hd95": 0.0,
        "hausdorff": 0.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
    }


def test_one_empty_either_way():
    empty = np.zeros((8, 9, 10), dtype=bool)
    blob = empty.copy()
    blob[2:5, 3:6, 4:8] = True
    missed = region_scores(empty, blob, (1.0, 1.5, 3.0))  # reference has a region, prediction misses it
    assert missed == {
        "dice": 0.0,
        "hd95": EMPTY_DISTANCE_MM,
        "hausdorff": EMPTY_DISTANCE_MM,
        "sensitivity": 0.0,
        "specificity": 1.0,
    }
    invented = region_scores(blob, empty, (1.0, 1.5, 3.0))  # only false positives
    n_false = blob.sum()
    assert invented == {
        "dice": 0.0,
        "hd95": EMPTY_DISTANCE_MM,
        "hausdorff": EMPTY_DISTANCE_MM,
        "sensitivity": 0.0,
        "specificity": pytest.approx((blob.size - n_false) / blob.size),
    }
    assert EMPTY_DISTANCE_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_reference_without_negatives():
    full = np.ones((6, 6, 6), dtype=bool)
    assert region_scores(full, full, (1.0, 1.0, 1.0))["specificity"] == 1.0
    partial = full.copy()
    partial[0] = False
    assert region_scores(partial, full, (1.0, 1.0, 1.0))["specificity"] == 0.0


def test_never_nan():
    rng = np.random.default_rng(9)
    shape = (7, 8, 9)
    cases = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.01, rng.random(shape) < 0.5]
    for prediction in cases:
        for reference in cases:
            scores = region_scores(prediction, reference, (2.0, 1.0, 0.5))
            assert all(math.isfinite(v) for v in scores.values()), scores
            assert all(v >= 0 for v in scores.values())


def test_cropping_leaves_distances_unchanged():
    rng = np.random.default_rng(11)
    shape = (40, 36, 30)
    for trial in range(4):
        prediction = np.zeros(shape, dtype=bool)
        reference = np.zeros(shape, dtype=bool)
        # Blobs well inside, and (trial 2, 3) touching the volume's edge, where erosion sees the border.
        start = (0, 0, 0) if trial >= 2 else (8, 10, 6)
        prediction[start[0] : start[0] + 12, start[1] : start[1] + 9, start[2] : start[2] + 11] = True
        reference[10:25, 12:20, 8:18] = rng.random((15, 8, 10)) < 0.7
        box = joint_crop(prediction, reference)
        assert (prediction[box].sum(), reference[box].sum()) == (prediction.sum(), reference.sum())
        cropped = region_scores(prediction, reference, (1.0, 1.5, 3.0), crop=True)
        full = region_scores(prediction, reference, (1.0, 1.5, 3.0), crop=False)
        assert cropped == full


def test_integer_masks_are_accepted_and_other_values_refused():
    mask = np.zeros((5, 5, 5), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    assert region_scores(mask, mask.astype(np.float32), (1, 1, 1))["dice"] == 1.0
    labels = mask * 4
    with pytest.raises(ValueError, match="prediction: a non-boolean mask must hold only 0 and 1, found also \\[4\\]"):
        region_scores(labels, mask, (1, 1, 1))


@pytest.mark.parametrize(
    ("spacing", "message"),
    [
        ((1.0, 1.0), "3 positive"),
        ((1.0, 0.0, 1.0), "3 positive"),
        ((1.0, -2, 1.0), "3 positive"),
        ((1.0, float("nan"), 1.0), "3 positive"),
        ("abc", "3 positive"),
        (None, "3 positive"),
    ],
)
def test_bad_spacing(spacing, message):
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match=message):
        region_scores(mask, mask, spacing)


def test_shape_mismatch_and_dimension():
    with pytest.raises(ValueError, match=r"differ in shape: \(3, 3, 3\) vs \(3, 3, 4\)"):
        region_scores(np.ones((3, 3, 3), bool), np.ones((3, 3, 4), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="expected a 3-D mask"):
        region_scores(np.ones((3, 3), bool), np.ones((3, 3), bool), (1, 1, 1))
