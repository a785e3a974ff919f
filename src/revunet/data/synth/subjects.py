"""The synthetic subjects themselves: a warped template brain, a tumour or infant contrasts, MRI rendering.

:mod:`revunet.data.synth.generate` writes them in the real datasets' layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from revunet.data.labels import ISEG_LABELS
from revunet.data.synth.anatomy import (
    Anatomy,
    Grid,
    WarpSettings,
    grid_shape,
    warp_anatomy,
)
from revunet.data.synth.mri import (
    BRATS_CONTRAST,
    BRATS_MODALITIES,
    ISEG_CONTRAST,
    ISEG_MODALITIES,
    AcquisitionSettings,
    normal_findings,
    render,
)
from revunet.data.synth.tumour import (
    EDEMA,
    ENHANCING,
    NECROSIS,
    TumourPlan,
    TumourSettings,
    case_plan,
    synth_tumour,
)

BRATS_FOV_MM = (240.0, 240.0, 155.0)
ISEG_FOV_MM = (144.0, 192.0, 256.0)
DEFAULT_SPACING = 3.0
MIN_SPACING, MAX_SPACING = 1.0, 8.0

# Adult brains a little smaller than MNI152 so that the rotated head fits 155 mm axially;
# 6-month infant brains about 80 % of adult size along each axis.
BRATS_WARP = WarpSettings(scale_range=(0.82, 0.92), max_rotation_deg=5.0)
ISEG_WARP = WarpSettings(scale_range=(0.76, 0.84), elastic_mm=2.0)
TUMOUR = TumourSettings()
ACQUISITION = AcquisitionSettings()
ISEG_ACQUISITION = AcquisitionSettings(noise=(0.035, 0.055))
_TASK_TAGS = {"brats": 1, "iseg": 2}
_PARTIAL_VOLUME_SIGMA = 0.5  # voxels: soft edges of tumour compartments in the images


def brats_grid(spacing: float = DEFAULT_SPACING) -> Grid:
    """BraTS geometry at ``spacing``: 240x240x155 mm, axes flipped in x and y like the real files."""
    shape = grid_shape(BRATS_FOV_MM, spacing)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing
    return Grid(shape, float(spacing), affine, BRATS_FOV_MM)


def iseg_header(shape: tuple[int, int, int], spacing: float, dtype: type) -> nib.AnalyzeHeader:
    header = nib.AnalyzeHeader()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape + (1,))
    header.set_zooms((spacing, spacing, spacing, 1.0))
    return header


def iseg_grid(spacing: float = DEFAULT_SPACING) -> Grid:
    """iSeg geometry at ``spacing``: 144x192x256 mm, with the affine nibabel reads from an Analyze header."""
    shape = grid_shape(ISEG_FOV_MM, spacing)
    affine = iseg_header(shape, float(spacing), np.int16).get_best_affine()
    return Grid(shape, float(spacing), np.asarray(affine, dtype=np.float64), ISEG_FOV_MM)


@dataclass(frozen=True)
class SyntheticSubject:
    """One subject with what made it: the images, the label map, and the anatomy and design behind them."""

    images: dict[str, np.ndarray]  # modality -> int16, zero outside the brain
    label: np.ndarray  # uint8; BraTS {0,1,2,4}, iSeg canonical {0,1,2,3}
    affine: np.ndarray
    anatomy: Anatomy
    plan: TumourPlan | None  # None for iSeg-like subjects


def _streams(task: str, index: int, seed: int) -> list[np.random.Generator]:
    """Independent random streams for anatomy, lesion and acquisition of one subject."""
    if index < 0:
        raise ValueError(f"subject index must be non-negative, got {index}")
    sequence = np.random.SeedSequence([int(seed), _TASK_TAGS[task], int(index)])
    return [np.random.default_rng(child) for child in sequence.spawn(3)]


def _soft(mask: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float32), _PARTIAL_VOLUME_SIGMA, mode="constant")


def make_brats_subject(index: int, seed: int = 0, spacing: float = DEFAULT_SPACING) -> SyntheticSubject:
    """BraTS-like subject ``index`` (0-based): warped anatomy, planned tumour, four modalities."""
    anatomy_rng, tumour_rng, imaging_rng = _streams("brats", index, seed)
    plan = case_plan(index, seed)
    anatomy = warp_anatomy(anatomy_rng, brats_grid(spacing), BRATS_WARP)
    tumour = synth_tumour(tumour_rng, anatomy, plan, TUMOUR)
    label = tumour.label

    core_tissue = "necrosis" if plan.enhancing else "nonenhancing"
    enhancing = _soft(label == ENHANCING)
    lesion = {
        "edema": _soft(label == EDEMA) * tumour.edema_strength,
        "enhancing": enhancing * tumour.enhancement,
        "enhancing_weak": enhancing * (1.0 - tumour.enhancement),
        core_tissue: _soft(label == NECROSIS),
    }
    normal = normal_findings(imaging_rng, anatomy.grid, anatomy.csf, anatomy.gm, anatomy.wm)
    remaining = np.clip(1.0 - sum(lesion.values()), 0.0, 1.0)
    normal = {name: fraction * remaining for name, fraction in normal.items()}
    tissue = remaining * np.clip(1.0 - sum(normal.values()), 0.0, 1.0)
    fractions = {
        "csf": anatomy.csf * tissue,
        "gm": anatomy.gm * tissue,
        "wm": anatomy.wm * tissue,
        **normal,
        **lesion,
    }
    images = render(imaging_rng, anatomy.grid, anatomy.mask, fractions, BRATS_CONTRAST, BRATS_MODALITIES, ACQUISITION)
    label = np.where(anatomy.mask, label, 0).astype(np.uint8)
    return SyntheticSubject(images, label, anatomy.grid.affine.copy(), anatomy, plan)


def make_iseg_subject(index: int, seed: int = 0, spacing: float = DEFAULT_SPACING) -> SyntheticSubject:
    """iSeg-like (6-month infant) subject ``index`` (0-based): T1, T2 and canonical labels 0-3."""
    anatomy_rng, _, imaging_rng = _streams("iseg", index, seed)
    anatomy = warp_anatomy(anatomy_rng, iseg_grid(spacing), ISEG_WARP)
    fractions = {"csf": anatomy.csf, "gm": anatomy.gm, "wm": anatomy.wm}
    images = render(
        imaging_rng, anatomy.grid, anatomy.mask, fractions, ISEG_CONTRAST, ISEG_MODALITIES, ISEG_ACQUISITION
    )
    # Hard labels: the dominant tissue of each brain voxel, as the task's CSF, GM, WM labels.
    tissue_labels = np.asarray(ISEG_LABELS[1:], dtype=np.uint8)
    label = tissue_labels[np.argmax(np.stack([anatomy.csf, anatomy.gm, anatomy.wm]), axis=0)]
    label[~anatomy.mask] = 0
    return SyntheticSubject(images, label, anatomy.grid.affine.copy(), anatomy, None)


def synth_brats_subject(
    index: int, seed: int = 0, spacing: float = DEFAULT_SPACING
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """BraTS-like subject as arrays: ({t1, t1ce, t2, flair} int16, label uint8 {0,1,2,4}, affine)."""
    subject = make_brats_subject(index, seed, spacing)
    return subject.images, subject.label, subject.affine


def synth_iseg_subject(
    index: int, seed: int = 0, spacing: float = DEFAULT_SPACING
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """iSeg-like subject as arrays: ({t1, t2} int16, label uint8 canonical {0,1,2,3}, affine)."""
    subject = make_iseg_subject(index, seed, spacing)
    return subject.images, subject.label, subject.affine


# ---------------------------------------------------------------------------------------------
# Writing datasets
