"""Synthetic glioma labels on a warped brain: lobulated core, enhancing rim, white-matter edema.

The labels follow BraTS (0 background, 1 necrosis / non-enhancing core, 2 edema, 4 enhancing
tumour) and are nested the way annotators draw them: necrosis is enclosed by the enhancing rim,
the core by edema. Concretely, on the 26-neighbourhood: every neighbour of a necrosis voxel is
core, and every neighbour of a core voxel is tumour (label != 0). Edema spreads along a geodesic
distance that is cheap through white matter, slow through grey matter and blocked by CSF and the
outside of the brain, which is how vasogenic edema follows fibre tracts.

Which cases lack enhancing tumour and which have two foci is a deterministic, seeded design
(:func:`case_plan`), so the fractions are exact over blocks of cases rather than left to chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from revunet.data.labels import BRATS_LABELS
from revunet.data.synth.anatomy import Anatomy, deep_white_matter_points, smooth_field

# The task's canonical BraTS labels, background first: necrosis / non-enhancing core, edema, enhancing.
_, NECROSIS, EDEMA, ENHANCING = BRATS_LABELS
CUBE = np.ones((3, 3, 3), dtype=bool)  # the 26-neighbourhood

NO_ENHANCING_BLOCK = 4  # one case in every 4 has no enhancing tumour (LGG-like)
MULTIFOCAL_BLOCK = 6  # one case in every 6 has two foci
_PLAN_TAG = 7411  # keeps the plan's random stream apart from the subjects' streams


@dataclass(frozen=True)
class TumourPlan:
    """The design of one case: whether the core enhances, and how many separate foci it has."""

    enhancing: bool
    foci: int

    @property
    def grade(self) -> str:
        """BraTS grade for name_mapping.csv: non-enhancing tumours are filed as LGG."""
        return "HGG" if self.enhancing else "LGG"


def case_plan(index: int, seed: int) -> TumourPlan:
    """Design of case ``index`` (0-based): exactly one case per block of 4 lacks enhancement and one per
    block of 6 is multifocal, at a seeded position inside the block. Depends only on (seed, index)."""
    if index < 0:
        raise ValueError(f"case index must be non-negative, got {index}")
    position4 = np.random.default_rng([seed, _PLAN_TAG, NO_ENHANCING_BLOCK, index // NO_ENHANCING_BLOCK]).integers(
        NO_ENHANCING_BLOCK
    )
    position6 = np.random.default_rng([seed, _PLAN_TAG, MULTIFOCAL_BLOCK, index // MULTIFOCAL_BLOCK]).integers(
        MULTIFOCAL_BLOCK
    )
    return TumourPlan(
        enhancing=bool(index % NO_ENHANCING_BLOCK != position4),
        foci=2 if index % MULTIFOCAL_BLOCK == position6 else 1,
    )


@dataclass(frozen=True)
class TumourSettings:
    """Sizes in mm of template space (cores) or subject space (rim, edema reach)."""

    core_radius_mm: tuple[float, float] = (9.0, 20.0)
    second_core_radius_mm: tuple[float, float] = (7.0, 13.0)
    min_foci_distance_mm: float = 50.0
    lobulation: float = 0.25  # amplitude of the smooth noise added to the core's shape function
    rim_mm: tuple[float, float] = (3.5, 6.5)
    edema_reach_mm: tuple[float, float] = (8.0, 24.0)  # geodesic reach through white matter
    grey_matter_speed: float = 0.3  # edema speed in GM relative to WM


@dataclass(frozen=True)
class Tumour:
    """The label map and, for rendering, how strongly each edema voxel shows (1 near the core, lower at the margin)."""

    label: np.ndarray  # uint8, values {0, 1, 2, 4}
    edema_strength: np.ndarray  # float32 in [0, 1]
    enhancement: np.ndarray  # float32 in [0, 1]: how strongly each part of the rim takes up contrast


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _core_shape(rng: np.random.Generator, points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Shape function of one focus, positive inside: the union of 2-4 random ellipsoids around ``centre``.

    Each ellipsoid contributes 1 - (its normalised radius), so the zero level set is the union's surface
    and the value grows towards the centres.
    """
    lobes = int(rng.integers(2, 5))
    shape = np.full(points.shape[1:], -np.inf, dtype=np.float32)
    for lobe in range(lobes):
        if lobe == 0:
            lobe_centre, radii = centre, radius * rng.uniform(0.7, 1.1, 3)
        else:
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            lobe_centre = centre + direction * radius * rng.uniform(0.3, 0.7)
            radii = radius * rng.uniform(0.4, 0.8, 3)
        inverse = (_random_rotation(rng).T / radii[:, None]).astype(np.float32)
        offset = points - lobe_centre[:, None, None, None].astype(np.float32)
        local = np.einsum("ij,j...->i...", inverse, offset)
        np.maximum(shape, 1.0 - np.sqrt((local**2).sum(axis=0)), out=shape)
    return shape


def _pick_centres(rng: np.random.Generator, foci: int, min_distance_mm: float) -> list[np.ndarray]:
    candidates = deep_white_matter_points()
    centres = [candidates[rng.integers(len(candidates))]]
    for _ in range(1, foci):
        far = candidates[np.min([np.linalg.norm(candidates - c, axis=1) for c in centres], axis=0) >= min_distance_mm]
        centres.append(far[rng.integers(len(far))])
    return [np.asarray(c, dtype=np.float64) for c in centres]


def _crop_around(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    found = np.argwhere(mask)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def geodesic_distance(sources: np.ndarray, cost: np.ndarray, spacing: float, max_sweeps: int = 200) -> np.ndarray:
    """Shortest-path length from ``sources`` where a step costs its length times the mean ``cost`` of its ends.

    ``cost`` is per mm (1/speed; ``inf`` blocks). Paths use the 26-neighbourhood. Solved by
    repeated vectorised relaxation sweeps until nothing changes, which on a cropped neighbourhood of
    a tumour takes a few dozen sweeps.
    """
    distance = np.where(sources, 0.0, np.inf)
    steps = [np.array(s) for s in np.ndindex(3, 3, 3) if s != (1, 1, 1)]
    size = cost.shape

    def window(shift: np.ndarray) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        target = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(shift, size))
        source = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip(shift, size))
        return target, source

    moves = []
    for step in steps:
        shift = step - 1
        target, source = window(shift)
        length = spacing * float(np.linalg.norm(shift))
        moves.append((target, source, length * 0.5 * (cost[target] + cost[source])))
    for _ in range(max_sweeps):
        before = distance.copy()
        for target, source, step_cost in moves:
            np.minimum(distance[target], distance[source] + step_cost, out=distance[target])
        if np.array_equal(before, distance):
            break
    return distance


def synth_tumour(rng: np.random.Generator, anatomy: Anatomy, plan: TumourPlan, settings: TumourSettings) -> Tumour:
    """Place a tumour following ``plan`` in ``anatomy`` and return its nested BraTS labels."""
    grid = anatomy.grid
    spacing = grid.spacing
    # Tumour and edema stay in brain tissue; the core keeps one voxel away from CSF and the brain edge
    # so that edema can always enclose it.
    allowed = anatomy.mask & (anatomy.csf < 0.5)
    core_allowed = ndimage.binary_erosion(allowed, CUBE, border_value=0)
    if not core_allowed.any():
        raise ValueError(f"spacing {spacing} mm is too coarse to place a tumour inside the brain")

    centres = _pick_centres(rng, plan.foci, settings.min_foci_distance_mm)
    shape = np.full(grid.shape, -np.inf, dtype=np.float32)
    for focus, centre in enumerate(centres):
        radius = rng.uniform(*(settings.core_radius_mm if focus == 0 else settings.second_core_radius_mm))
        np.maximum(shape, _core_shape(rng, anatomy.template_mm, centre, radius), out=shape)
    shape += settings.lobulation * smooth_field(rng, grid, cell_mm=12.0)[0]
    core = (shape > 0) & core_allowed
    if not core.any():  # a focus smaller than a voxel: keep its innermost allowed voxel
        core.flat[np.argmax(np.where(core_allowed, shape, -np.inf))] = True

    rim_noise = smooth_field(rng, grid, cell_mm=10.0)[0]
    reach_noise = smooth_field(rng, grid, cell_mm=16.0)[0]
    rim_mm = rng.uniform(*settings.rim_mm)
    reach_mm = rng.uniform(*settings.edema_reach_mm)

    reach = np.maximum(reach_mm * (1.0 + 0.25 * reach_noise), spacing)
    window = _crop_around(core, int(np.ceil(float(reach.max()) / spacing)) + 2)
    core_w = core[window]

    label = np.zeros(grid.shape, dtype=np.uint8)
    label_w = label[window]
    if plan.enhancing:
        depth = ndimage.distance_transform_edt(core_w, sampling=spacing)
        rim = np.maximum(rim_mm * (1.0 + 0.3 * rim_noise[window]), spacing)
        necrosis = (depth > rim) & ndimage.binary_erosion(core_w, CUBE, border_value=0)
        label_w[core_w] = ENHANCING
        label_w[necrosis] = NECROSIS
    else:
        label_w[core_w] = NECROSIS

    speed = anatomy.wm[window] + settings.grey_matter_speed * anatomy.gm[window]
    passable = allowed[window] & (speed > 0.05)
    cost = np.where(passable, 1.0 / np.maximum(speed, 0.05), np.inf)
    distance = geodesic_distance(core_w, cost, spacing)
    edema = (distance <= reach[window]) & passable & ~core_w
    edema |= ndimage.binary_dilation(core_w, CUBE) & ~core_w
    label_w[edema] = EDEMA

    # Edema fades towards its margin: full strength near the core, 30 % at the reach.
    strength = np.zeros(grid.shape, dtype=np.float32)
    relative = np.where(np.isfinite(distance), distance / reach[window], 1.0)
    strength[window] = np.clip(1.0 - 0.7 * relative**2, 0.3, 1.0)
    # Enhancement is patchy: strong in most of the rim, faint in places.
    enhancement = np.clip(0.55 + 0.5 * smooth_field(rng, grid, cell_mm=8.0)[0], 0.0, 1.0)
    return Tumour(label=label, edema_strength=strength, enhancement=enhancement)
