"""Per-case preprocessing as the papers do it, its exact inverse, and its files.

Brügger et al. (and the two later papers, which follow them) crop every case to the
bounding box of voxels that are non-zero in any modality, centre crop/pad that box to a
fixed shape (160×192×160 at 1 mm), and z-score each modality over its own non-zero
voxels so that the background stays exactly 0. Everything a prediction needs to go back
to the original image geometry is recorded in :class:`PreprocessMeta`, and
:func:`paste_back` undoes the two crops.

Index bookkeeping, per axis: preprocessed index ``i`` is original index
``bbox_start + offset + i``. ``offset = floor((bbox_size - target) / 2)``; a negative
offset means the bounding box was padded with zeros, a positive one that it was cropped.
Only voxels inside the bounding box are ever pasted back (the rest of the original volume
is background in every modality by construction).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from revunet.atomic import open_atomic, write_text_atomic
from revunet.catalog import TASK_MODALITIES

if TYPE_CHECKING:
    from revunet.data.io import LoadedCase

Shape3 = tuple[int, int, int]

# Bump when the arrays written for the same inputs and settings would change; outputs
# written by another format version are recomputed rather than trusted.
PREPROCESS_VERSION = 1

PAPER_SHAPE: Shape3 = (160, 192, 160)


@dataclass(frozen=True)
class PreprocessMeta:
    """Everything needed to map preprocessed arrays back to the original image and to
    decide whether stored outputs are still current."""

    case_id: str
    task: str
    modalities: tuple[str, ...]
    original_shape: Shape3
    affine: list[list[float]]
    spacing: tuple[float, float, float]
    bbox_start: Shape3
    bbox_stop: Shape3
    offset: tuple[int, int, int]
    target_shape: Shape3 | None
    shape: Shape3
    source_files: dict[str, str]
    zscore_mean: dict[str, float]
    zscore_std: dict[str, float]
    has_label: bool = False
    lost_label_voxels: int = 0
    lost_brain_voxels: int = 0
    fingerprint: dict[str, Any] = field(default_factory=dict)
    version: int = PREPROCESS_VERSION

    def to_json(self) -> str:
        """The metadata as an indented JSON document (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessMeta:
        """Rebuild from :meth:`to_json`'s document, restoring tuples."""
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(name for name in known - set(data) if name not in _OPTIONAL_FIELDS)
        if missing:
            raise ValueError(f"preprocessing metadata lacks the fields {missing}")
        values = {key: value for key, value in data.items() if key in known}
        for name in ("modalities", "original_shape", "spacing", "bbox_start", "bbox_stop", "offset", "shape"):
            values[name] = tuple(values[name])
        if values.get("target_shape") is not None:
            values["target_shape"] = tuple(values["target_shape"])
        return cls(**values)


_OPTIONAL_FIELDS = {"has_label", "lost_label_voxels", "lost_brain_voxels", "fingerprint", "version"}


@dataclass(frozen=True)
class PreprocessedCase:
    """A case ready for training: ``image`` float32 ``(C, X, Y, Z)`` in TASK_MODALITIES
    order, ``label`` uint8 ``(X, Y, Z)`` canonical labels or ``None``."""

    image: np.ndarray
    label: np.ndarray | None
    meta: PreprocessMeta


def parse_shape(text: str) -> Shape3 | None:
    """``"160,192,160"`` (or ``160x192x160``) → ``(160, 192, 160)``; ``"none"`` → ``None``."""
    if text.strip().lower() == "none":
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"shape must be three positive integers like 160,192,160 or 'none', got {text!r}") from None
    if len(shape) != 3 or any(size <= 0 for size in shape):
        raise ValueError(f"shape must be three positive integers like 160,192,160 or 'none', got {text!r}")
    return shape  # type: ignore[return-value]


def nonzero_bbox(mask: np.ndarray) -> tuple[Shape3, Shape3]:
    """Start (inclusive) and stop (exclusive) per axis of the ``True`` voxels of ``mask``."""
    if not mask.any():
        raise ValueError("every voxel is zero in every modality: there is no bounding box to crop to")
    starts, stops = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        starts.append(int(present[0]))
        stops.append(int(present[-1]) + 1)
    return tuple(starts), tuple(stops)  # type: ignore[return-value]


def centre_offsets(size: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """Per-axis start of a ``target``-sized window centred on ``size`` (negative: padding)."""
    return tuple((s - t) // 2 for s, t in zip(size, target, strict=True))


def window(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """The ``size`` window of the last ``len(size)`` axes of ``array`` starting at ``start``.

    Parts of the window outside ``array`` are ``fill``; ``start`` may be negative. Leading
    axes (channels) are kept whole.
    """
    lead = array.ndim - len(size)
    out = np.full(array.shape[:lead] + tuple(size), fill, dtype=array.dtype)
    source, target = [slice(None)] * lead, [slice(None)] * lead
    for axis, (begin, length) in enumerate(zip(start, size, strict=True)):
        extent = array.shape[lead + axis]
        low, high = max(begin, 0), min(begin + length, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
    out[tuple(target)] = array[tuple(source)]
    return out


def _kept_region(meta: PreprocessMeta) -> tuple[slice, ...]:
    """Original-volume slices of the voxels that survive both crops."""
    region = []
    for start, stop, offset, size in zip(meta.bbox_start, meta.bbox_stop, meta.offset, meta.shape, strict=True):
        low = max(start, start + offset)
        high = min(stop, start + offset + size)
        region.append(slice(low, max(low, high)))
    return tuple(region)


def kept_mask(meta: PreprocessMeta) -> np.ndarray:
    """Boolean mask in the original geometry of the voxels the preprocessed volume holds."""
    mask = np.zeros(meta.original_shape, dtype=bool)
    mask[_kept_region(meta)] = True
    return mask


def lost_voxels(volume: np.ndarray, meta: PreprocessMeta) -> int:
    """How many non-zero voxels of an original-geometry ``volume`` the preprocessing cut off.

    With ``volume`` the original label this counts the tumour/tissue voxels a fixed
    160×192×160 crop removed, which happens for rare, unusually large heads.
    """
    outside = np.ones(meta.original_shape, dtype=bool)
    outside[_kept_region(meta)] = False
    nonzero = volume != 0
    if nonzero.ndim > 3:
        nonzero = nonzero.reshape(-1, *meta.original_shape).any(axis=0)
    return int(np.count_nonzero(nonzero & outside))


def _image_stack(case: LoadedCase, modalities: Sequence[str]) -> np.ndarray:
    """The case's modalities as one float32 ``(C, X, Y, Z)`` array, in task order."""
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise ValueError(f"case {case.case_id}: modalities {missing} are missing (needs {list(modalities)})")
    stack = np.stack([np.asarray(case.images[m], dtype=np.float32) for m in modalities])
    if stack.ndim != 4:
        raise ValueError(f"case {case.case_id}: images must be 3-D, got shape {tuple(int(s) for s in stack.shape[1:])}")
    return stack


def preprocess_case(case: LoadedCase, target_shape: Shape3 | None) -> PreprocessedCase:
    """Crop to the non-zero bounding box, centre crop/pad to ``target_shape`` (``None``: keep
    the box), z-score each modality over its non-zero voxels.

    Pure: reads nothing but ``case``. Warns when label voxels fall outside the crop.
    """
    modalities = TASK_MODALITIES[case.task]
    stack = _image_stack(case, modalities)
    original_shape = tuple(int(s) for s in stack.shape[1:])
    try:
        bbox_start, bbox_stop = nonzero_bbox((stack != 0).any(axis=0))
    except ValueError as error:
        raise ValueError(f"case {case.case_id}: {error}") from None
    bbox_size = tuple(b - a for a, b in zip(bbox_start, bbox_stop, strict=True))
    shape = tuple(target_shape) if target_shape is not None else bbox_size
    offset = centre_offsets(bbox_size, shape)

    # One window straight from the original volume, restricted to the bounding box so
    # that padding never picks up voxels outside it (they are zero anyway).
    inside_box = window(stack[(slice(None), *(slice(a, b) for a, b in zip(bbox_start, bbox_stop)))], offset, shape)
    image, means, stds = _zscore(inside_box, modalities, case.case_id)

    label = None
    if case.label is not None:
        if case.label.shape != original_shape:
            raise ValueError(
                f"case {case.case_id}: label shape {case.label.shape} differs from image shape {original_shape}"
            )
        boxed = case.label[tuple(slice(a, b) for a, b in zip(bbox_start, bbox_stop))]
        label = window(np.asarray(boxed, dtype=np.uint8), offset, shape)

    meta = PreprocessMeta(
        case_id=case.case_id,
        task=case.task,
        modalities=tuple(modalities),
        original_shape=original_shape,  # type: ignore[arg-type]
        affine=np.asarray(case.affine, dtype=np.float64).tolist(),
        spacing=tuple(float(s) for s in case.spacing),  # type: ignore[arg-type]
        bbox_start=bbox_start,
        bbox_stop=bbox_stop,
        offset=offset,  # type: ignore[arg-type]
        target_shape=tuple(target_shape) if target_shape is not None else None,  # type: ignore[arg-type]
        shape=shape,  # type: ignore[arg-type]
        source_files=dict(case.source_files),
        zscore_mean=means,
        zscore_std=stds,
        has_label=label is not None,
    )
    lost_label = lost_voxels(case.label, meta) if case.label is not None else 0
    lost_brain = lost_voxels(stack, meta)
    meta = dataclasses.replace(meta, lost_label_voxels=lost_label, lost_brain_voxels=lost_brain)
    if lost_label:
        warnings.warn(
            f"case {case.case_id}: the {'x'.join(map(str, shape))} crop cuts off {lost_label} labelled voxels "
            f"(bounding box {'x'.join(map(str, bbox_size))})",
            RuntimeWarning,
            stacklevel=2,
        )
    return PreprocessedCase(image=image, label=label, meta=meta)


def _zscore(
    stack: np.ndarray, modalities: Sequence[str], case_id: str
) -> tuple[np.ndarray, dict[str, float], dict[str, float]]:
    """Z-score every channel over its own non-zero voxels; zero voxels stay exactly 0."""
    out = np.zeros_like(stack, dtype=np.float32)
    means, stds = {}, {}
    for channel, modality in enumerate(modalities):
        values = stack[channel]
        nonzero = values != 0
        if not nonzero.any():
            raise ValueError(
                f"case {case_id}: modality {modality} has no non-zero voxel inside the crop; cannot z-score it"
            )
        foreground = values[nonzero].astype(np.float64)
        mean, std = float(foreground.mean()), float(foreground.std())
        if not std > 0 or not np.isfinite(std):
            raise ValueError(
                f"case {case_id}: modality {modality} has zero variance over its non-zero voxels "
                f"(all equal {mean:g}); cannot z-score it"
            )
        out[channel][nonzero] = ((foreground - mean) / std).astype(np.float32)
        means[modality], stds[modality] = mean, std
    return out, means, stds


def paste_back(volume: np.ndarray, meta: PreprocessMeta, fill: float = 0) -> np.ndarray:
    """Place a preprocessed-space array back into the original image geometry.

    ``volume`` has shape ``(..., *meta.shape)`` (a label map, or probabilities with leading
    channel axes); the result has shape ``(..., *meta.original_shape)`` and ``volume``'s
    dtype. Voxels the preprocessing dropped (outside the bounding box, or cut by the
    centre crop) are ``fill``.
    """
    volume = np.asarray(volume)
    if tuple(volume.shape[-3:]) != tuple(meta.shape):
        raise ValueError(f"case {meta.case_id}: expected an array ending in shape {meta.shape}, got {volume.shape}")
    lead = volume.shape[:-3]
    out = np.full(lead + tuple(meta.original_shape), fill, dtype=volume.dtype)
    region = _kept_region(meta)
    source = tuple(
        slice(r.start - (start + offset), r.stop - (start + offset))
        for r, start, offset in zip(region, meta.bbox_start, meta.offset, strict=True)
    )
    out[(..., *region)] = volume[(..., *source)]
    return out


def npz_path(out_dir: str | os.PathLike[str], case_id: str) -> Path:
    """Where :func:`save_preprocessed` puts a case's arrays."""
    return Path(out_dir) / f"{case_id}.npz"


def meta_path(out_dir: str | os.PathLike[str], case_id: str) -> Path:
    """Where :func:`save_preprocessed` puts a case's metadata."""
    return Path(out_dir) / f"{case_id}.json"


def save_preprocessed(out_dir: str | os.PathLike[str], case: PreprocessedCase) -> Path:
    """Write ``<out_dir>/<case_id>.npz`` (uncompressed ``image``, ``label`` if present) and
    then ``<out_dir>/<case_id>.json``, each atomically; returns the ``.npz`` path.

    The JSON is written last, so its presence means the arrays beside it are complete.
    """
    arrays = {"image": np.ascontiguousarray(case.image, dtype=np.float32)}
    if case.label is not None:
        arrays["label"] = np.ascontiguousarray(case.label, dtype=np.uint8)
    target = npz_path(out_dir, case.meta.case_id)
    _write_npz_atomic(target, arrays)
    write_text_atomic(meta_path(out_dir, case.meta.case_id), case.meta.to_json())
    return target


def _write_npz_atomic(target: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open_atomic(target) as stream:
        np.savez(stream, **arrays)  # a file object: numpy does not append ".npz"


def read_meta(path_or_dir: str | os.PathLike[str], case_id: str | None = None) -> PreprocessMeta:
    """The metadata of one preprocessed case (a folder plus ``case_id``, or a ``.json``/``.npz`` path)."""
    path = _case_path(path_or_dir, case_id).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no preprocessing metadata at {path} (run `revunet preprocess` for this case)")
    try:
        return PreprocessMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: unreadable preprocessing metadata ({error})") from None


def load_preprocessed(path_or_dir: str | os.PathLike[str], case_id: str | None = None) -> PreprocessedCase:
    """Read what :func:`save_preprocessed` wrote (a folder plus ``case_id``, or either file's path)."""
    meta = read_meta(path_or_dir, case_id)
    arrays_path = _case_path(path_or_dir, case_id).with_suffix(".npz")
    if not arrays_path.is_file():
        raise FileNotFoundError(f"no preprocessed arrays at {arrays_path}")
    with np.load(arrays_path) as stored:
        image = stored["image"]
        label = stored["label"] if "label" in stored.files else None
    expected = (len(meta.modalities), *meta.shape)
    if image.shape != expected:
        raise ValueError(f"{arrays_path}: image shape {image.shape} does not match its metadata {expected}")
    return PreprocessedCase(image=image, label=label, meta=meta)


def _case_path(path_or_dir: str | os.PathLike[str], case_id: str | None) -> Path:
    path = Path(path_or_dir)
    if case_id is not None:
        return path / f"{case_id}.npz"
    if path.suffix in (".npz", ".json"):
        return path
    raise ValueError(f"{path}: give a .npz/.json path, or a folder and a case id")


def input_fingerprint(row: Mapping[str, Any], target_shape: Shape3 | None) -> dict[str, Any]:
    """What decides whether stored outputs are current: the case-table row, the size and
    modification time of every file it names, the target shape and the format version."""
    cells = {str(key): ("" if _is_missing(value) else str(value)) for key, value in row.items()}
    files = {}
    for value in sorted(set(cells.values())):
        path = re.sub(r"#\d+$", "", value)  # "<file>#<k>": channel k of a 4-D file
        if path and os.path.isfile(path):
            status = os.stat(path)
            files[path] = [status.st_size, status.st_mtime_ns]
    return {
        "row": cells,
        "files": files,
        "target_shape": list(target_shape) if target_shape is not None else None,
        "version": PREPROCESS_VERSION,
    }


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def is_current(out_dir: str | os.PathLike[str], case_id: str, fingerprint: Mapping[str, Any]) -> bool:
    """True when both output files exist and the metadata records exactly ``fingerprint``."""
    if not npz_path(out_dir, case_id).is_file():
        return False
    try:
        meta = read_meta(out_dir, case_id)
    except (FileNotFoundError, ValueError):
        return False
    # A JSON round trip makes tuples and lists compare alike.
    return json.loads(json.dumps(meta.fingerprint)) == json.loads(json.dumps(dict(fingerprint)))


def describe(case: PreprocessedCase) -> str:
    """One line for logs: shape, crop and anything lost."""
    meta = case.meta
    box = "x".join(str(b - a) for a, b in zip(meta.bbox_start, meta.bbox_stop))
    text = f"{meta.case_id}: {'x'.join(map(str, meta.original_shape))} -> box {box} -> {'x'.join(map(str, meta.shape))}"
    if meta.lost_label_voxels or meta.lost_brain_voxels:
        text += f" (crop cut {meta.lost_brain_voxels} brain and {meta.lost_label_voxels} labelled voxels)"
    return text


__all__ = [
    "PAPER_SHAPE",
    "PREPROCESS_VERSION",
    "PreprocessMeta",
    "PreprocessedCase",
    "centre_offsets",
    "describe",
    "input_fingerprint",
    "is_current",
    "kept_mask",
    "load_preprocessed",
    "lost_voxels",
    "meta_path",
    "nonzero_bbox",
    "npz_path",
    "parse_shape",
    "paste_back",
    "preprocess_case",
    "read_meta",
    "save_preprocessed",
    "window",
]
