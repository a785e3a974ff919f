"""MR images from tissue fractions: contrast tables, texture, bias field, Rician noise, int16.

Intensities mix per-tissue means by each voxel's tissue fractions (partial volume), so boundaries
are graded the way a real acquisition blurs them. On top come a faint tissue texture, a smooth
multiplicative bias field per modality, Rician noise (the magnitude of complex Gaussian noise, as
a magnitude MR image has), and a random global scale per modality; the result is stored as int16
that is exactly zero outside the brain and at least 1 inside, like a skull-stripped scan.

The contrast tables are relative to white matter and follow the textbook ordering: on T1,
WM > GM > CSF; on T2, CSF > GM > WM; FLAIR nulls CSF; edema is bright on T2 and FLAIR; contrast
agent makes the enhancing rim bright on T1ce, while necrosis stays dark. In the isointense phase
of infant brains (about 6 months, the iSeg challenge) GM and WM nearly match on both T1 and T2.
Class means deliberately sit close enough that noise, bias field and partial volume make them
overlap voxel by voxel (see benchmarks/synthetic_separability.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from revunet.data.synth.anatomy import Grid, smooth_field

# tissue -> (t1, t1ce, t2, flair), relative to white matter.
BRATS_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.40, 0.35, 2.20, 0.30),
    "gm": (0.78, 0.72, 1.30, 1.15),
    "wm": (1.00, 1.00, 1.00, 1.00),
    "edema": (0.72, 0.72, 1.80, 1.65),
    "enhancing": (0.80, 1.75, 1.50, 1.40),
    "enhancing_weak": (0.78, 1.20, 1.55, 1.40),  # the patchy, faintly enhancing parts of the rim
    "necrosis": (0.45, 0.42, 2.00, 1.10),
    "nonenhancing": (0.62, 0.64, 1.95, 1.55),
    # Normal findings a voxel classifier confuses with tumour: enhancing vessels, choroid plexus and
    # dura (flow voids on T1/T2, bright after contrast) and white-matter hyperintensities.
    "vessel": (0.60, 1.75, 0.90, 0.80),
    "wmh": (0.85, 0.85, 1.55, 1.40),
}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")

# tissue -> (t1, t2) at the isointense phase: GM and WM within a few per cent of each other.
ISEG_CONTRAST: dict[str, tuple[float, float]] = {
    "csf": (0.45, 1.90),
    "gm": (0.93, 0.94),
    "wm": (1.00, 1.00),
}
ISEG_MODALITIES = ("t1", "t2")

# Relative amplitude of the smooth texture within each tissue.
TEXTURE = {
    "csf": 0.02,
    "gm": 0.03,
    "wm": 0.03,
    "edema": 0.08,
    "enhancing": 0.12,
    "enhancing_weak": 0.12,
    "necrosis": 0.10,
    "nonenhancing": 0.08,
    "vessel": 0.05,
    "wmh": 0.05,
}
TUMOUR_TISSUES = ("edema", "enhancing", "enhancing_weak", "necrosis", "nonenhancing")


@dataclass(frozen=True)
class AcquisitionSettings:
    """Ranges the per-subject, per-modality acquisition parameters are drawn from."""

    noise: tuple[float, float] = (0.05, 0.08)  # Gaussian sigma relative to the white-matter intensity
    bias: tuple[float, float] = (0.06, 0.14)  # std of the log bias field
    bias_cell_mm: float = 90.0
    scale: tuple[float, float] = (300.0, 1200.0)  # white-matter intensity before the bias field


def normal_findings(
    rng: np.random.Generator, grid: Grid, csf: np.ndarray, gm: np.ndarray, wm: np.ndarray
) -> dict[str, np.ndarray]:
    """Fractions of enhancing vessels (in sulci, at the surface, in the ventricles) and of
    white-matter hyperintensities (a few blobs in deep white matter), both label 0.

    Vessels are where two independent smooth fields are both near zero: the intersection of two
    random surfaces is a network of curves. Hyperintensities are where a smooth field peaks.
    """
    first, second, peaks = smooth_field(rng, grid, cell_mm=9.0, count=3)
    tubes = np.exp(-(first**2 + second**2) / (2 * 0.25**2))
    vessel = 0.9 * tubes * np.clip(csf + 0.5 * gm, 0.0, 1.0)
    threshold = rng.uniform(1.6, 2.2)
    wmh = np.clip((peaks - threshold) / 0.4, 0.0, 0.8) * np.clip(wm - 0.3, 0.0, 0.7) / 0.7
    return {"vessel": vessel.astype(np.float32), "wmh": wmh.astype(np.float32)}


def render(
    rng: np.random.Generator,
    grid: Grid,
    mask: np.ndarray,
    fractions: Mapping[str, np.ndarray],
    contrast: Mapping[str, tuple[float, ...]],
    modalities: tuple[str, ...],
    settings: AcquisitionSettings,
) -> dict[str, np.ndarray]:
    """One int16 image per modality from tissue ``fractions`` (each a float array on ``grid``)."""
    normal_texture, tumour_texture = smooth_field(rng, grid, cell_mm=6.0, count=2)
    bias = smooth_field(rng, grid, cell_mm=settings.bias_cell_mm, count=len(modalities))
    images: dict[str, np.ndarray] = {}
    for channel, modality in enumerate(modalities):
        clean = np.zeros(grid.shape, dtype=np.float32)
        for tissue, fraction in fractions.items():
            texture = tumour_texture if tissue in TUMOUR_TISSUES else normal_texture
            clean += fraction * (contrast[tissue][channel] * (1.0 + TEXTURE[tissue] * texture))
        scale = rng.uniform(*settings.scale)
        sigma = rng.uniform(*settings.noise)
        field = np.exp(rng.uniform(*settings.bias) * bias[channel])
        signal = clean * field * scale
        noise = rng.standard_normal((2,) + grid.shape, dtype=np.float32) * (sigma * scale)
        magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
        image = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)
        image[~mask] = 0
        images[modality] = image
    return images
