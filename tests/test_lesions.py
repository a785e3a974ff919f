"""Lesion-wise scores on hand-built cases whose counts, Dice and HD95 are worked out by hand in each test."""

from __future__ import annotations

import numpy as np
import pytest

from revunet.evaluation.lesions import LESION_METRIC_NAMES, LESION_PENALTY_MM, lesion_scores, match_lesions
from revunet.evaluation.metrics import region_scores

SHAPE = (16, 12, 12)
ISO = (1.0, 1.0, 1.0)


def volume(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


CUBE = np.s_[2:5, 2:5, 2:5]  # 3 x 3 x 3 = 27 voxels
SMALL = np.s_[10:12, 8:10, 8:10]  # 2 x 2 x 2, far from CUBE
BAR = np.s_[2:8, 2:4, 2:4]  # 6 x 2 x 2 = 24 voxels, every voxel on its surface


def expect(scores, tp, fp, fn, f1, dice, hd95, score_dice, score_hd95):
    assert list(scores) == list(LESION_METRIC_NAMES)
    assert (scores["lesion_tp"], scores["lesion_fp"], scores["lesion_fn"]) == (tp, fp, fn)
    for name, value in [
        ("lesion_f1", f1),
        ("lesion_dice", dice),
        ("lesion_hd95", hd95),
        ("lesion_score_dice", score_dice),
        ("lesion_score_hd95", score_hd95),
    ]:
        assert scores[name] == pytest.approx(value, abs=1e-12), name


def test_two_lesions_one_missed():
    """CUBE found exactly, SMALL missed: F1 2/3; the pair's Dice 1, HD95 0; the miss costs Dice 0 and 374 mm."""
    scores = lesion_scores(volume(CUBE), volume(CUBE, SMALL), ISO)
    expect(scores, 1, 0, 1, 2 / 3, 1.0, 0.0, 1 / 2, 374 / 2)


def test_false_positive_and_a_shifted_match_on_an_anisotropic_grid():
    """Prediction: CUBE moved one voxel along x (2 mm voxels there) plus a false SMALL blob.

    Dice of the pair 2 x 18 / 54 = 2/3. Surfaces (every voxel of a 3-cube but its centre, 26 each):
    from the prediction, its far face x=5 (9 voxels) lies 2 mm from the reference's face x=4 and the
    voxel (3,3,3), the reference's centre, 1 mm from a reference surface voxel beside it; the other 16
    are on the reference surface. The other direction mirrors it. Pooled: 32 zeros, 2 ones, 18 twos;
    the 95th percentile (index 0.95 x 51 = 48.45) is 2 mm.
    """
    shifted = np.s_[3:6, 2:5, 2:5]
    scores = lesion_scores(volume(shifted, SMALL), volume(CUBE), (2.0, 1.0, 1.0))
    expect(scores, 1, 1, 0, 2 / 3, 2 / 3, 2.0, (2 / 3) / 2, (2.0 + 374) / 2)


def test_one_reference_lesion_split_in_two_predictions():
    """BAR predicted as x 2-4 (12 voxels, Dice 24/36) and x 6-7 (8 voxels, Dice 16/32), a gap at x=5.

    The better piece is matched, the other is a false positive. Its HD95: the piece's voxels all lie
    on BAR's surface (0, 12 values); BAR's voxels at x=2..4, 5, 6, 7 lie 0, 1, 2, 3 mm from the piece
    (12, 4, 4, 4 values). Pooled 36 values, index 0.95 x 35 = 33.25 falls among the 3s: 3 mm.
    """
    prediction = volume(np.s_[2:5, 2:4, 2:4], np.s_[6:8, 2:4, 2:4])
    scores = lesion_scores(prediction, volume(BAR), ISO)
    expect(scores, 1, 1, 0, 2 / 3, 2 / 3, 3.0, (2 / 3) / 2, (3.0 + 374) / 2)


def test_two_reference_lesions_merged_into_one_prediction():
    """References x 2-3 (8 voxels) and x 5-7 (12 voxels) predicted as one BAR.

    Dice 16/32 and 24/36: the prediction matches the larger reference, the other is a false negative.
    HD95 mirrors the split case: BAR's voxels at x=4, 3, 2 lie 1, 2, 3 mm from the matched reference: 3 mm.
    """
    reference = volume(np.s_[2:4, 2:4, 2:4], np.s_[5:8, 2:4, 2:4])
    scores = lesion_scores(volume(BAR), reference, ISO)
    expect(scores, 1, 0, 1, 2 / 3, 2 / 3, 3.0, (2 / 3) / 2, (3.0 + 374) / 2)


def test_empty_prediction():
    scores = lesion_scores(volume(), volume(CUBE, SMALL), ISO)
    expect(scores, 0, 0, 2, 0.0, 0.0, LESION_PENALTY_MM, 0.0, LESION_PENALTY_MM)


def test_empty_reference():
    scores = lesion_scores(volume(SMALL), volume(), ISO)
    expect(scores, 0, 1, 0, 0.0, 0.0, LESION_PENALTY_MM, 0.0, LESION_PENALTY_MM)


def test_both_empty():
    expect(lesion_scores(volume(), volume(), ISO), 0, 0, 0, 1.0, 1.0, 0.0, 1.0, 0.0)


def test_lesions_that_do_not_overlap_are_not_matched():
    """Two lesions side by side but not overlapping: one FP and one FN, scored as a miss (374 mm)."""
    scores = lesion_scores(volume(np.s_[6:8, 2:4, 2:4]), volume(np.s_[2:4, 2:4, 2:4]), ISO)
    expect(scores, 0, 1, 1, 0.0, 0.0, LESION_PENALTY_MM, 0.0, LESION_PENALTY_MM)


def test_voxels_touching_at_a_corner_are_one_lesion():
    """26-connectivity: two voxels sharing only a corner form one lesion, found exactly here."""
    mask = volume(np.s_[2:3, 2:3, 2:3], np.s_[3:4, 3:4, 3:4])
    expect(lesion_scores(mask, mask, ISO), 1, 0, 0, 1.0, 1.0, 0.0, 1.0, 0.0)


def test_matching_maximises_the_total_dice_not_greedily():
    """Greedy would take the best pair (0.6) and leave 0; the optimum pairs 0.5 + 0.55 = 1.05; Dice 0 never matches."""
    dice = np.array([[0.6, 0.5], [0.55, 0.0]])
    assert match_lesions(dice) == [(0, 1, 0.5), (1, 0, 0.55)]
    assert match_lesions(np.array([[0.0, 1e-7]])) == []
    assert match_lesions(np.zeros((0, 3))) == []


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"differ in shape"):
        lesion_scores(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 4), bool), ISO)
    with pytest.raises(ValueError, match="3 positive"):
        lesion_scores(volume(), volume(), (1.0, 0.0, 1.0))


def test_whole_region_hd95_is_reused_only_for_a_single_matched_pair():
    """One lesion each side: the pair is the whole region, so its HD95 is the region's (here 2 mm, see above)."""
    shifted, spacing = np.s_[3:6, 2:5, 2:5], (2.0, 1.0, 1.0)
    computed = lesion_scores(volume(shifted), volume(CUBE), spacing)
    assert computed["lesion_hd95"] == pytest.approx(region_scores(volume(shifted), volume(CUBE), spacing)["hd95"])
    assert lesion_scores(volume(shifted), volume(CUBE), spacing, region_hd95=computed["lesion_hd95"]) == computed
    # With a second predicted lesion the region's HD95 is not the pair's, and the value passed is ignored.
    two = lesion_scores(volume(shifted, SMALL), volume(CUBE), spacing, region_hd95=99.0)
    assert two["lesion_hd95"] == pytest.approx(2.0)
