"""Real brain anatomy for synthetic subjects: the MNI ICBM152 2009a template, warped per subject.

Synthetic subjects are built on the grey- and white-matter probability maps of the MNI ICBM152
2009a nonlinear symmetric template that ship inside the nilearn wheel (1 mm, 197x233x189), so the
default pipeline runs on real cortical folding, ventricles and deep nuclei without any download.
The template T1 in that file is already skull-stripped (zero outside the brain); the brain mask is
its non-zero region joined with the GM+WM maps, and CSF is what the mask holds beyond GM and WM.

Each subject is the template resampled onto its own grid through a random similarity transform
(small rotation, scale, shift) composed with a smooth elastic displacement. The template is
downsampled to (about) the target voxel size first and warped at that size, which keeps a
default dataset fast on a laptop. Every random field here lives in physical millimetres on a
lattice anchored to the field of view, so a subject drawn at 2.5 mm and at 3 mm is the same brain.

Licence of the template. The MNI ICBM152 templates are distributed by the McConnell Brain Imaging
Centre (Montreal Neurological Institute, McGill University) under a permissive notice: anyone may
use, copy, modify and distribute them free of charge, on the single condition that the copyright
notice below appears in all copies; they come without any warranty. nilearn's own description
page lists the licence as "unknown"; the notice is quoted as nibabel's COPYING file carries it for
the same template family (see also https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/).
Synthetic datasets derived from it therefore carry :data:`TEMPLATE_NOTICE` in their manifest and
in a NOTICE file next to the images. Reference: Fonov et al., NeuroImage 47 (2009) S102 and
NeuroImage 54 (2011) 313-327.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

TEMPLATE_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and "
    "its documentation for any purpose and without fee is hereby granted, provided that the above "
    "copyright notice appear in all copies. The authors and McGill University make no representations "
    'about the suitability of this software for any purpose. It is provided "as is" without express '
    "or implied warranty. The authors are not responsible for any data loss, equipment damage, property "
    "loss, or injury to subjects or patients resulting from the use or misuse of this software package."
)
TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric (as shipped in nilearn)"
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

# Tumours are seeded in deep, supratentorial white matter of the template (world mm, MNI space).
_DEEP_WM_PROBABILITY = 0.9
_DEEP_WM_MARGIN_MM = 10.0
_SUPRATENTORIAL_MIN_Z_MM = -5.0


def template_directory() -> Path:
    """Folder of nilearn's bundled template files, found without importing nilearn (which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it ships the MNI152 template the synthetic data need")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"nilearn's template files {missing} are missing from {folder}")
    return folder


@dataclass(frozen=True)
class Grid:
    """A subject's voxel grid: shape, isotropic spacing, and an axis-aligned voxel-to-world affine.

    ``fov_mm`` is the nominal field of view the grid was sized from; random lattices are anchored
    to it so that they do not depend on the voxel size.
    """

    shape: tuple[int, int, int]
    spacing: float
    affine: np.ndarray
    fov_mm: tuple[float, float, float]

    def axis_mm(self) -> list[np.ndarray]:
        """Per axis, voxel centres in mm relative to the grid centre (along the array axes)."""
        return [(np.arange(n) - (n - 1) / 2.0) * self.spacing for n in self.shape]

    def axis_signs(self) -> np.ndarray:
        """+1/-1 per array axis: the direction of the matching world axis (affines here are diagonal)."""
        return np.sign(np.diag(self.affine)[:3])

    def centre_world(self) -> np.ndarray:
        """World coordinates (mm) of the grid centre."""
        centre = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        return self.affine[:3, :3] @ centre + self.affine[:3, 3]


def grid_shape(fov_mm: tuple[float, float, float], spacing: float) -> tuple[int, int, int]:
    """Voxels per axis covering ``fov_mm`` at ``spacing`` (rounded, at least 1)."""
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    return tuple(max(1, round(extent / spacing)) for extent in fov_mm)  # type: ignore[return-value]


@dataclass(frozen=True)
class TemplateMaps:
    """Template tissue maps resampled to an isotropic lattice: probabilities in [0, 1], float32."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    lattice_mm: float  # spacing of the arrays
    origin_mm: np.ndarray  # world coordinates of array index (0, 0, 0)
    brain_centre_mm: np.ndarray  # centre of the brain's bounding box, world mm


@functools.lru_cache(maxsize=1)
def _template_1mm() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The three template volumes as float32 in [0, 1] and their (shared) affine."""
    import nibabel as nib

    folder = template_directory()
    volumes: dict[str, np.ndarray] = {}
    affine = None
    for key, name in TEMPLATE_FILES.items():
        image = nib.load(folder / name)
        volumes[key] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        if affine is None:
            affine = image.affine
        elif not np.allclose(affine, image.affine):
            raise ValueError(f"template file {name} is not on the grid of {TEMPLATE_FILES['t1']}")
    assert affine is not None
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError("expected the 1 mm RAS template grid shipped with nilearn")
    return volumes, np.asarray(affine, dtype=np.float64)


@functools.lru_cache(maxsize=4)
def template_maps(spacing: float) -> TemplateMaps:
    """Template GM, WM and brain probabilities averaged down to ``spacing`` (never below 1 mm).

    The Gaussian pre-filter has the variance of a box of width ``spacing``, so each lattice value
    approximates the tissue fraction of a voxel of the target size (partial volume).
    """
    volumes, affine = _template_1mm()
    gm = np.clip(volumes["gm"], 0.0, 1.0)
    wm = np.clip(volumes["wm"], 0.0, 1.0)
    total = gm + wm
    over = total > 1.0
    gm = np.where(over, gm / np.maximum(total, 1e-6), gm)
    wm = np.where(over, wm / np.maximum(total, 1e-6), wm)
    # The converted T1 is skull-stripped: its support is the brain including CSF spaces.
    brain = np.maximum((volumes["t1"] > 0).astype(np.float32), gm + wm)
    maps = {"gm": gm, "wm": wm, "brain": brain}
    lattice = max(float(spacing), 1.0)
    if lattice > 1.0:
        sigma = np.sqrt((lattice**2 - 1.0) / 12.0)
        shape = np.floor((np.asarray(brain.shape) - 1) / lattice).astype(int) + 1
        points = np.meshgrid(*[np.arange(n) * lattice for n in shape], indexing="ij")
        for key, volume in maps.items():
            smooth = ndimage.gaussian_filter(volume, sigma, mode="constant")
            maps[key] = ndimage.map_coordinates(smooth, points, order=1, prefilter=False).astype(np.float32)
    inside = np.argwhere(volumes["t1"] > 0)
    centre_voxel = (inside.min(axis=0) + inside.max(axis=0)) / 2.0
    result = TemplateMaps(
        gm=maps["gm"],
        wm=maps["wm"],
        brain=np.clip(maps["brain"], 0.0, 1.0),
        lattice_mm=lattice,
        origin_mm=affine[:3, 3].copy(),
        brain_centre_mm=affine[:3, :3] @ centre_voxel + affine[:3, 3],
    )
    for array in (result.gm, result.wm, result.brain):
        array.setflags(write=False)
    return result


@functools.lru_cache(maxsize=1)
def deep_white_matter_points() -> np.ndarray:
    """Template positions (world mm, N x 3) deep in supratentorial white matter, on a 2 mm lattice.

    Tumour centres are drawn from these: far enough (``_DEEP_WM_MARGIN_MM``) from CSF and the brain
    surface that a core fits before it meets a ventricle, and above the cerebellum.
    """
    maps = template_maps(2.0)
    csf = maps.brain - maps.gm - maps.wm
    tissue = (maps.brain > 0.5) & (csf < 0.3)
    depth = ndimage.distance_transform_edt(tissue, sampling=maps.lattice_mm)
    keep = (maps.wm > _DEEP_WM_PROBABILITY) & (depth >= _DEEP_WM_MARGIN_MM)
    points = np.argwhere(keep) * maps.lattice_mm + maps.origin_mm
    points = points[points[:, 2] >= _SUPRATENTORIAL_MIN_Z_MM]
    if len(points) == 0:
        raise ValueError("the template has no deep white matter: unexpected template files")
    points.setflags(write=False)
    return points


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a < 1.0, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


def _lattice_weights(axis_mm: np.ndarray, fov_mm: float, cell_mm: float) -> np.ndarray:
    """Cubic B-spline weights (voxels x lattice nodes), rows scaled to unit sum of squares."""
    nodes = int(np.ceil(fov_mm / cell_mm)) + 4
    positions = (np.arange(nodes) - (nodes - 1) / 2.0) * cell_mm
    weights = _cubic_bspline((axis_mm[:, None] - positions[None, :]) / cell_mm)
    return weights / np.sqrt((weights**2).sum(axis=1, keepdims=True))


def smooth_field(rng: np.random.Generator, grid: Grid, cell_mm: float, count: int = 1) -> np.ndarray:
    """``count`` independent smooth random fields on ``grid`` (shape ``(count, *grid.shape)``).

    Each is zero-mean with unit variance at every voxel, smooth on the scale ``cell_mm``: random
    values on a lattice of that spacing, anchored to the field of view, blended by cubic B-splines.
    Separable weights make it cheap (no 3-D interpolation) and independent of the voxel size.
    """
    weights = [_lattice_weights(u, fov, cell_mm) for u, fov in zip(grid.axis_mm(), grid.fov_mm)]
    field = rng.standard_normal((count,) + tuple(w.shape[1] for w in weights))
    # Contract one lattice axis at a time (smallest arrays first); the last step is a plain matmul.
    field = np.einsum("nabc,ia->nibc", field, weights[0])
    field = np.einsum("nibc,jb->nijc", field, weights[1])
    return np.matmul(field.astype(np.float32), weights[2].T.astype(np.float32))


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class WarpSettings:
    """How far one subject's brain may differ from the template.

    ``scale_range`` is the isotropic brain size relative to the template (adult BraTS brains are
    drawn a little smaller than MNI152 so that the head fits 240x240x155 mm after rotation; infant
    brains much smaller). ``elastic_mm`` is the standard deviation of each displacement component,
    smooth on the scale ``elastic_cell_mm``.
    """

    scale_range: tuple[float, float] = (0.86, 0.95)
    anisotropy: float = 0.03
    max_rotation_deg: float = 6.0
    max_shift_mm: float = 4.0
    elastic_mm: float = 2.5
    elastic_cell_mm: float = 32.0


@dataclass(frozen=True)
class Anatomy:
    """One subject's warped tissue fractions on its grid; they sum to 1 inside ``mask``, 0 outside."""

    grid: Grid
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray  # bool brain mask
    template_mm: np.ndarray  # (3, *shape) float32: where each voxel comes from in template space


def warp_anatomy(rng: np.random.Generator, grid: Grid, settings: WarpSettings) -> Anatomy:
    """Resample the template onto ``grid`` through a random similarity transform and elastic warp."""
    template = template_maps(grid.spacing)
    scales = rng.uniform(*settings.scale_range) * (1.0 + rng.uniform(-settings.anisotropy, settings.anisotropy, 3))
    angles = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, 3))
    shift = rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, 3)
    # Subject offset v (world mm from the grid centre) -> template offset R^T S^-1 v.
    to_template = _rotation(angles).T @ np.diag(1.0 / scales)
    displacement = settings.elastic_mm * smooth_field(rng, grid, settings.elastic_cell_mm, count=3)

    offsets = [u * s for u, s in zip(grid.axis_mm(), grid.axis_signs())]
    broadcast = [offsets[0][:, None, None], offsets[1][None, :, None], offsets[2][None, None, :]]
    centre = template.brain_centre_mm + shift
    template_mm = np.empty((3,) + grid.shape, dtype=np.float32)
    for row in range(3):
        template_mm[row] = centre[row] + displacement[row]
        for column in range(3):
            template_mm[row] += to_template[row, column] * broadcast[column]

    lattice_index = (template_mm - template.origin_mm[:, None, None, None].astype(np.float32)) / template.lattice_mm

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, lattice_index, order=1, mode="constant", cval=0.0, prefilter=False)

    brain = np.clip(sample(template.brain), 0.0, 1.0)
    gm = np.clip(sample(template.gm), 0.0, 1.0)
    wm = np.clip(sample(template.wm), 0.0, 1.0)
    mask = brain > 0.5
    # Tissue fractions of the brain part of each voxel (the rest of an edge voxel is background).
    gm = np.minimum(gm, brain)
    wm = np.minimum(wm, brain - gm)
    csf = brain - gm - wm
    scale = np.where(mask, 1.0 / np.maximum(brain, 1e-6), 0.0)
    return Anatomy(
        grid=grid,
        csf=(csf * scale).astype(np.float32),
        gm=(gm * scale).astype(np.float32),
        wm=(wm * scale).astype(np.float32),
        mask=mask,
        template_mm=template_mm,
    )
