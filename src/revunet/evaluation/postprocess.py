"""The post-processing most BraTS 2019–2020 entries applied, as an option that is evaluated with and without.

Two rules on a canonical BraTS label map (0, 1 necrosis / non-enhancing core, 2 edema, 4 enhancing
tumour), in this order:

1. small-component removal: every 26-connected component of the whole tumour (label != 0) whose
   volume is below ``min_component_mm3`` becomes background; 0 turns the rule off (the default:
   the demo's synthetic tumours have no spurious fragments to remove);
2. ET→NCR: when the case's predicted enhancing tumour (label 4) is below ``et_min_mm3`` in total,
   it is relabelled necrosis / non-enhancing core (1). Why: BraTS scores a case whose reference
   has no enhancing tumour (many lower-grade gliomas) with ET Dice 0 and HD95 373 as soon as a single
   voxel of ET is predicted, and Dice 1 / HD95 0 when none is; a small predicted ET is then more
   often false than true. TC and WT are unchanged by this rule (1 and 4 are both tumour core).

Volumes are in mm³ (the voxel count times the voxel volume), which is the voxel count on BraTS's
1 mm grid and keeps the rule's meaning on the demo's 3 mm grid. The default 500 mm³ (500 voxels at
1 mm) is a round value of the order that BraTS 2019–2020 entries reported; Isensee et al. (nnU-Net,
BraTS 2020 winner) chose theirs on cross-validated training predictions. This project does not
choose it that way (the demo has no cross-validated training predictions): it is set in the
config (``postprocessing.et_min_mm3``). iSeg label maps are returned unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from revunet.evaluation.lesions import components

NECROSIS, ENHANCING = 1, 4


@dataclass(frozen=True)
class PostProcessing:
    """The two rules' thresholds (mm³); a threshold of 0 turns its rule off."""

    et_min_mm3: float = 500.0
    min_component_mm3: float = 0.0

    def __post_init__(self) -> None:
        for name in ("et_min_mm3", "min_component_mm3"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"post-processing {name} must be a finite number of mm³ >= 0, got {value!r}")

    def describe(self) -> str:
        """One line for tables and logs, e.g. ``ET→NCR below 500 mm³``."""
        parts = []
        if self.min_component_mm3 > 0:
            parts.append(f"tumour components below {self.min_component_mm3:g} mm³ removed")
        if self.et_min_mm3 > 0:
            parts.append(f"ET→NCR below {self.et_min_mm3:g} mm³")
        return ", ".join(parts) or "none"


def _voxel_mm3(spacing: Sequence[float]) -> float:
    return float(np.prod([float(s) for s in spacing]))


def remove_small_components(label: np.ndarray, spacing: Sequence[float], min_mm3: float) -> np.ndarray:
    """``label`` with every 26-connected whole-tumour component below ``min_mm3`` set to background."""
    if min_mm3 <= 0:
        return label
    components_map, count = components(label != 0)
    if count == 0:
        return label
    sizes_mm3 = ndimage.sum_labels(np.ones(label.shape), components_map, index=np.arange(1, count + 1))
    small = np.flatnonzero(sizes_mm3 * _voxel_mm3(spacing) < min_mm3) + 1
    out = label.copy()
    out[np.isin(components_map, small)] = 0
    return out


def et_to_ncr(label: np.ndarray, spacing: Sequence[float], min_mm3: float) -> np.ndarray:
    """``label`` with its enhancing tumour relabelled necrosis when the case's ET is below ``min_mm3`` in total."""
    enhancing = label == ENHANCING
    volume = np.count_nonzero(enhancing) * _voxel_mm3(spacing)
    if volume == 0 or volume >= min_mm3:
        return label
    out = label.copy()
    out[enhancing] = NECROSIS
    return out


def postprocess(label: np.ndarray, task: str, spacing: Sequence[float], settings: PostProcessing) -> np.ndarray:
    """Apply the rules of ``settings`` to a canonical label map of ``task`` (BraTS only; iSeg unchanged)."""
    if task != "brats":
        return label
    label = remove_small_components(label, spacing, settings.min_component_mm3)
    return et_to_ncr(label, spacing, settings.et_min_mm3)
