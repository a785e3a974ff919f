"""Training-time augmentation as the papers describe it, built on torchio.

Brügger et al. rotate, scale and elastically deform in the axial plane only, with the same
random parameters for every axial slice, because BraTS volumes were interpolated along z:
nothing may mix neighbouring slices. torchio's affine and elastic transforms are 3-D (and
its elastic one is slow and fills with the image minimum), so the in-plane part is a
small torchio transform of our own, :class:`InPlaneWarp`, that composes rotation,
isotropic in-plane scaling and a 2-D elastic field into ONE sampling grid (one
interpolation, not three) and applies it to every axial slice with
:func:`torch.nn.functional.grid_sample`. Flips are torchio's :class:`~torchio.RandomFlip`;
per-channel intensity shift/scale is :class:`ChannelIntensity`.

Conventions:

- arrays are ``(C, X, Y, Z)``; Z (the last axis) is the axial axis, as in BraTS/NIfTI;
- images are interpolated bilinearly within each slice, labels by nearest neighbour (so a
  label map never gains a value; a tiny region can disappear, as with any resampling);
- whatever comes from outside the volume is filled with 0, for images and labels alike
  (background of z-scored images is 0, so padding looks like background);
- the intensity change touches only non-zero voxels by default (background stays 0, as
  in validation);
- randomness comes from torch's global generator, as in torchio; :meth:`Augmentation.__call__`
  takes a seed and runs under :func:`torch.random.fork_rng`, so results are a function of
  that seed alone and the caller's random state is untouched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from torchio.transforms.augmentation import RandomTransform


@dataclass(frozen=True)
class AugmentationConfig:
    """Which augmentations run and how strong they are; presets per paper.

    ``rotation_degrees``: in-plane rotation about the axial (z) axis, uniform in ±this.
    ``scale_range``: isotropic in-plane scale factor, uniform in [low, high] (> 1 enlarges).
    ``elastic_sigma``/``elastic_points``: 2-D elastic field; displacements (voxels) drawn from
    N(0, sigma²) on an ``elastic_points``² grid spanning the slice, upsampled bicubically.
    ``intensity_shift``: per-channel additive shift uniform in ±this (z-score units).
    ``intensity_scale``: per-channel multiplicative factor uniform in 1 ± this.
    ``flip_probability``: each axis in ``flip_axes`` is flipped independently with this probability.
    """

    rotation_degrees: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    elastic_sigma: float = 0.0
    elastic_points: int = 3
    intensity_shift: float = 0.0
    intensity_scale: float = 0.0
    intensity_foreground_only: bool = True
    flip_probability: float = 0.0
    flip_axes: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        low, high = self.scale_range
        problems = []
        if not self.rotation_degrees >= 0:
            problems.append(f"rotation_degrees must be >= 0, got {self.rotation_degrees}")
        if not 0 < low <= high:
            problems.append(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if not self.elastic_sigma >= 0 or self.elastic_points < 2:
            problems.append(
                f"elastic_sigma must be >= 0 and elastic_points >= 2, got {self.elastic_sigma}, {self.elastic_points}"
            )
        if not self.intensity_shift >= 0 or not 0 <= self.intensity_scale < 1:
            problems.append(
                f"intensity_shift must be >= 0 and intensity_scale in [0, 1), got {self.intensity_shift}, {self.intensity_scale}"
            )
        if not 0 <= self.flip_probability <= 1:
            problems.append(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not set(self.flip_axes) <= {0, 1, 2}:
            problems.append(f"flip_axes must be among 0, 1, 2, got {self.flip_axes}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def none(cls) -> AugmentationConfig:
        """No augmentation at all (validation, or ablations)."""
        return cls()

    @classmethod
    def bruegger2019(cls) -> AugmentationConfig:
        """Brügger et al. 2019: in-plane rotation ±20°, in-plane scale [1/1.1, 1.1], 2-D elastic
        (3×3 grid, σ 10 voxels), per-channel shift ±0.1, flip of each axis with p 0.5."""
        return cls(
            rotation_degrees=20.0,
            scale_range=(1 / 1.1, 1.1),
            elastic_sigma=10.0,
            elastic_points=3,
            intensity_shift=0.1,
            flip_probability=0.5,
        )

    @classmethod
    def pendse2020(cls) -> AugmentationConfig:
        """Pendse et al. 2020: rotation about the long axis ±20°, scale ±10 %, flips on every axis,
        intensity ±10 % (multiplicative), elastic deformation. The paper gives no elastic
        strength; it builds on Brügger et al.'s pipeline, so their in-plane 3×3 / σ 10 is used."""
        return cls(
            rotation_degrees=20.0,
            scale_range=(0.9, 1.1),
            elastic_sigma=10.0,
            elastic_points=3,
            intensity_scale=0.1,
            flip_probability=0.5,
        )

    @classmethod
    def invres2020(cls) -> AugmentationConfig:
        """The invertible-U-Net paper states no augmentation; our choice: flips of each axis
        with p 0.5 plus a mild in-plane rotation (±10°) and scale (±10 %)."""
        return cls(rotation_degrees=10.0, scale_range=(0.9, 1.1), flip_probability=0.5)

    @classmethod
    def preset(cls, name: str) -> AugmentationConfig:
        """A preset by name: ``none``, ``bruegger2019``, ``pendse2020`` or ``invres2020``."""
        if name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}")
        return getattr(cls, name)()

    def to_dict(self) -> dict[str, Any]:
        """Plain values for configs and logs."""
        return dataclasses.asdict(self)

    @property
    def warps(self) -> bool:
        """Whether any in-plane resampling happens."""
        return self.rotation_degrees > 0 or self.scale_range != (1.0, 1.0) or self.elastic_sigma > 0


PRESETS = ("none", "bruegger2019", "pendse2020", "invres2020")


def in_plane_grid(
    shape: Sequence[int],
    degrees: float = 0.0,
    scale: float = 1.0,
    displacement: torch.Tensor | np.ndarray | None = None,
    margin: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Sampling grid for :func:`grid_sample` (``align_corners=True``) over an input slice of
    ``shape`` (X, Y); the output is that slice less ``margin`` voxels on each side.

    Output voxel ``p`` reads the input at ``R(degrees) (p - c) / scale + c + margin + d(p)``
    where ``c`` is the output's centre and ``d`` the displacement field upsampled bicubically
    from ``displacement`` ``(2, P, Q)`` (voxels along X and Y; control points spanning the
    output corner to corner). Returns ``(1, X - 2 margin_x, Y - 2 margin_y, 2)``.
    """
    size_x, size_y = int(shape[0]), int(shape[1])
    out_x, out_y = size_x - 2 * int(margin[0]), size_y - 2 * int(margin[1])
    if out_x < 1 or out_y < 1:
        raise ValueError(f"a margin of {tuple(margin)} leaves nothing of a {size_x}x{size_y} slice")
    centre_x, centre_y = (out_x - 1) / 2, (out_y - 1) / 2
    xs = torch.arange(out_x, dtype=torch.float64) - centre_x
    ys = torch.arange(out_y, dtype=torch.float64) - centre_y
    px, py = torch.meshgrid(xs, ys, indexing="ij")
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    source_x = (cos * px - sin * py) / scale + centre_x + int(margin[0])
    source_y = (sin * px + cos * py) / scale + centre_y + int(margin[1])
    if displacement is not None:
        coarse = torch.as_tensor(displacement, dtype=torch.float64)[None]
        dense = F.interpolate(coarse, size=(out_x, out_y), mode="bicubic", align_corners=True)[0]
        source_x = source_x + dense[0]
        source_y = source_y + dense[1]
    # grid_sample's last axis is (W, H) = (Y, X); normalise so -1/+1 are the first/last voxel.
    norm_x = source_x * (2 / (size_x - 1)) - 1 if size_x > 1 else source_x * 2
    norm_y = source_y * (2 / (size_y - 1)) - 1 if size_y > 1 else source_y * 2
    return torch.stack((norm_y, norm_x), dim=-1)[None].to(torch.float32)


def warp_slices(volume: torch.Tensor, grid: torch.Tensor, nearest: bool) -> torch.Tensor:
    """Resample every axial slice of ``volume`` ``(C, X, Y, Z)`` with the same 2-D ``grid``
    ``(1, X', Y', 2)``; returns ``(C, X', Y', Z)``.

    Slices are treated as channels of one 2-D image, so z is never interpolated.
    """
    channels, size_x, size_y, size_z = volume.shape
    out_x, out_y = grid.shape[1:3]
    dtype = volume.dtype
    planes = volume.permute(0, 3, 1, 2).reshape(1, channels * size_z, size_x, size_y).to(torch.float32)
    warped = F.grid_sample(
        planes, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros", align_corners=True
    )
    warped = warped.reshape(channels, size_z, out_x, out_y).permute(0, 2, 3, 1).contiguous()
    return warped.to(dtype)


def base_arguments(transform: tio.Transform) -> dict[str, Any]:
    """The arguments a random transform passes on to the fixed transform it draws, read from
    the public attributes every torchio ``Transform`` keeps (torchio's own helper for this is
    private and newer than the torchio versions we support)."""
    return {
        "copy": transform.copy,
        "include": transform.include,
        "exclude": transform.exclude,
        "keep": transform.keep,
        "parse_input": transform.parse_input,
        "label_keys": transform.label_keys,
    }


class InPlaneWarp(tio.SpatialTransform):
    """Rotate about z, scale isotropically in-plane and deform elastically in 2-D, with the
    same parameters for every axial slice; images bilinear, label maps nearest neighbour.

    ``margin`` (X, Y): the input carries that much context on each side, and the output is
    the warped centre without it (a patch warped with real data around it).
    """

    def __init__(
        self,
        degrees: float = 0.0,
        scale: float = 1.0,
        displacement: np.ndarray | None = None,
        margin: Sequence[int] = (0, 0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.degrees = float(degrees)
        self.scale = float(scale)
        self.displacement = None if displacement is None else np.asarray(displacement, dtype=np.float64)
        self.margin = (int(margin[0]), int(margin[1]))
        self.args_names = ["degrees", "scale", "displacement", "margin"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        grids: dict[tuple[int, int], torch.Tensor] = {}
        for image in self.get_images(subject):
            plane = tuple(image.data.shape[1:3])
            if plane not in grids:
                grids[plane] = in_plane_grid(plane, self.degrees, self.scale, self.displacement, self.margin)
            nearest = not isinstance(image, tio.ScalarImage)
            image.set_data(warp_slices(image.data, grids[plane], nearest=nearest))
        return subject


class RandomInPlaneWarp(RandomTransform, tio.SpatialTransform):
    """Draw :class:`InPlaneWarp` parameters: angle uniform in ±``degrees``, scale uniform in
    ``scale_range``, control-point displacements N(0, ``elastic_sigma``²) voxels."""

    def __init__(
        self,
        degrees: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        elastic_sigma: float = 0.0,
        elastic_points: int = 3,
        margin: Sequence[int] = (0, 0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.degrees = float(degrees)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.elastic_sigma = float(elastic_sigma)
        self.elastic_points = int(elastic_points)
        self.margin = (int(margin[0]), int(margin[1]))

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        angle = self.sample_uniform(-self.degrees, self.degrees) if self.degrees > 0 else 0.0
        low, high = self.scale_range
        scale = self.sample_uniform(low, high) if high > low else low
        displacement = None
        if self.elastic_sigma > 0:
            points = self.elastic_points
            displacement = (torch.randn(2, points, points, dtype=torch.float64) * self.elastic_sigma).numpy()
        warp = InPlaneWarp(angle, scale, displacement, self.margin, **base_arguments(self))
        return warp(subject)


class ChannelIntensity(tio.IntensityTransform):
    """``x * scales[c] + shifts[c]`` per channel, only on non-zero voxels if ``foreground_only``."""

    def __init__(
        self,
        shifts: Sequence[float],
        scales: Sequence[float],
        foreground_only: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shifts = [float(s) for s in shifts]
        self.scales = [float(s) for s in scales]
        self.foreground_only = foreground_only
        self.args_names = ["shifts", "scales", "foreground_only"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            data = image.data
            if data.shape[0] != len(self.shifts):
                raise ValueError(
                    f"ChannelIntensity has {len(self.shifts)} channel parameters, the image {data.shape[0]} channels"
                )
            shape = (-1,) + (1,) * (data.ndim - 1)
            shifts = torch.tensor(self.shifts, dtype=data.dtype).reshape(shape)
            scales = torch.tensor(self.scales, dtype=data.dtype).reshape(shape)
            changed = data * scales + shifts
            if self.foreground_only:
                changed = torch.where(data != 0, changed, torch.zeros((), dtype=data.dtype))
            image.set_data(changed)
        return subject


class RandomChannelIntensity(RandomTransform, tio.IntensityTransform):
    """Draw a shift uniform in ±``shift`` and a factor uniform in 1 ± ``scale`` per channel."""

    def __init__(self, shift: float = 0.0, scale: float = 0.0, foreground_only: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = float(shift)
        self.scale = float(scale)
        self.foreground_only = foreground_only

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for name, image in self.get_images_dict(subject).items():
            channels = image.data.shape[0]
            shifts = (torch.rand(channels, dtype=torch.float64) * 2 - 1) * self.shift
            scales = 1 + (torch.rand(channels, dtype=torch.float64) * 2 - 1) * self.scale
            arguments = {**base_arguments(self), "include": [name]}
            subject = ChannelIntensity(shifts.tolist(), scales.tolist(), self.foreground_only, **arguments)(subject)
        return subject


class Augmentation:
    """Random augmentation of an ``(image, label)`` pair that is a pure function of a seed.

    ``augment(image (C, X, Y, Z), label (X, Y, Z) or None, seed) -> (image, label)``.
    Label dtype is kept; its values stay a subset of the input's (plus 0 from outside).
    With ``margin`` the input carries that much context per side and the output is the
    augmented centre (see :meth:`context_margin`).
    """

    def __init__(self, config: AugmentationConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"Augmentation({self.config})"

    def pipeline(self, margin: Sequence[int] = (0, 0, 0)) -> tio.Compose:
        """The torchio transforms, in order: in-plane warp, flips, intensity."""
        config = self.config
        steps: list[tio.Transform] = []
        if config.warps:
            steps.append(
                RandomInPlaneWarp(
                    config.rotation_degrees,
                    config.scale_range,
                    config.elastic_sigma,
                    config.elastic_points,
                    margin=margin[:2],
                    copy=False,
                )
            )
        if config.flip_probability > 0 and config.flip_axes:
            steps.append(
                tio.RandomFlip(axes=tuple(config.flip_axes), flip_probability=config.flip_probability, copy=False)
            )
        if config.intensity_shift > 0 or config.intensity_scale > 0:
            steps.append(
                RandomChannelIntensity(
                    config.intensity_shift, config.intensity_scale, config.intensity_foreground_only, copy=False
                )
            )
        return tio.Compose(steps, copy=False)

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None,
        seed: int,
        margin: Sequence[int] = (0, 0, 0),
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        margin = tuple(int(m) for m in margin)
        if any(margin) and not self.config.warps:
            # Nothing samples the context: cut it off first.
            inner = tuple(slice(m, size - m) for m, size in zip(margin, image.shape[1:]))
            image = image[(slice(None), *inner)]
            label = label[inner] if label is not None else None
            margin = (0, 0, 0)
        if margin[2]:
            raise ValueError("the augmentation never needs context along z; margin must be (mx, my, 0)")
        subject = tio.Subject(image=tio.ScalarImage(tensor=image))
        if label is not None:
            subject.add_image(tio.LabelMap(tensor=label[None]), "label")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) % (2**63))
            out = self.pipeline(margin)(subject)
        image_out = out["image"].data.contiguous()
        label_out = out["label"].data[0].to(label.dtype).contiguous() if label is not None else None
        return image_out, label_out

    def context_margin(self, patch_size: Sequence[int]) -> tuple[int, int, int]:
        """Voxels of context per side (X, Y, Z) to read around a patch so that its in-plane
        warp samples real data rather than zero padding: rotation about the patch centre,
        the smallest scale, elastic displacements up to 3σ. Z never needs any."""
        if not self.config.warps:
            return (0, 0, 0)
        size_x, size_y = patch_size[0], patch_size[1]
        reach = self.config.elastic_sigma * 3
        smallest = self.config.scale_range[0]
        if self.config.rotation_degrees > 0:
            radius = 0.5 * math.hypot(size_x - 1, size_y - 1) / smallest + reach
            extents = (radius, radius)
        else:
            extents = (0.5 * (size_x - 1) / smallest + reach, 0.5 * (size_y - 1) / smallest + reach)
        margins = [max(0, math.ceil(extent - 0.5 * (size - 1))) for extent, size in zip(extents, (size_x, size_y))]
        return (margins[0], margins[1], 0)
