"""The ET→NCR rule and small-component removal on hand-built label maps, and their evaluation by `revunet evaluate`."""

from __future__ import annotations

import numpy as np
import pytest

from revunet.evaluation.postprocess import PostProcessing, et_to_ncr, postprocess, remove_small_components


def tumour() -> np.ndarray:
    """Edema 4x4x4 (64 voxels) holding 8 ET voxels, plus a separate 1-voxel edema fragment."""
    label = np.zeros((12, 10, 10), dtype=np.uint8)
    label[2:6, 2:6, 2:6] = 2
    label[3:5, 3:5, 3:5] = 4
    label[9, 8, 8] = 2
    return label


def test_et_below_the_threshold_becomes_necrosis_and_tc_wt_are_unchanged():
    label = tumour()
    # 8 ET voxels of 2 x 2 x 2 mm = 64 mm³.
    assert np.array_equal(et_to_ncr(label, (2, 2, 2), 64.0), label)  # not below: kept
    relabelled = et_to_ncr(label, (2, 2, 2), 64.5)
    assert not (relabelled == 4).any() and np.array_equal(relabelled == 1, label == 4)
    assert np.array_equal(np.isin(relabelled, (1, 4)), np.isin(label, (1, 4)))  # TC unchanged
    assert np.array_equal(relabelled != 0, label != 0)  # WT unchanged
    assert np.array_equal(et_to_ncr(label, (1, 1, 1), 0.0), label)  # threshold 0: off


def test_small_components_are_removed_by_volume():
    label = tumour()
    # The fragment is 1 voxel = 1 mm³ at 1 mm, the tumour 64 mm³.
    assert np.array_equal(remove_small_components(label, (1, 1, 1), 1.0), label)
    cleaned = remove_small_components(label, (1, 1, 1), 2.0)
    assert cleaned[9, 8, 8] == 0 and np.array_equal(cleaned[:8], label[:8])
    assert not remove_small_components(label, (1, 1, 1), 65.0).any()


def test_postprocess_applies_both_for_brats_only():
    label = tumour()
    settings = PostProcessing(et_min_mm3=500, min_component_mm3=2)
    out = postprocess(label, "brats", (1, 1, 1), settings)
    assert out[9, 8, 8] == 0 and not (out == 4).any() and (out == 1).sum() == 8
    assert postprocess(label, "iseg", (1, 1, 1), settings) is label
    assert settings.describe() == "tumour components below 2 mm³ removed, ET→NCR below 500 mm³"
    assert PostProcessing(0, 0).describe() == "none"
    with pytest.raises(ValueError, match="et_min_mm3 must be a finite number of mm³ >= 0, got -1"):
        PostProcessing(et_min_mm3=-1)
