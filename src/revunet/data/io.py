"""Reading one case (a row of the case table) into canonical arrays, and refusing broken ones loudly.

Every dataset layout stores the same information differently: separate files or one 4-D file
per case, NIfTI or Analyze, labels 0/1/2/4 or 1/2/3 or 10/150/250. :func:`load_case` turns a
row of the case table (see :mod:`revunet.data.case_table`) into one :class:`LoadedCase` in the
canonical conventions of :mod:`revunet.tasks` (label spellings in :mod:`revunet.data.labels`), so that nothing downstream needs to know
where the data came from.

It is a pure reader: it writes nothing and keeps no state, so a broken case raises a
:class:`CaseError` naming the case, the file and what was expected, and never affects another case.

A modality cell of the form ``"<path>#<k>"`` names channel ``k`` (an index into the last axis)
of a 4-D file; the Medical Segmentation Decathlon stores the four BraTS modalities that way.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from revunet.catalog import TASK_MODALITIES
from revunet.data.labels import LABEL_MAPS, LAYOUT_TASKS, check_label_values, relabel

# Two grids whose affines differ by less than this (in mm, entry-wise) are the same grid.
AFFINE_TOLERANCE_MM = 1e-3

# What nibabel, gzip and zlib raise on a truncated or damaged file (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)


class CaseError(ValueError):
    """A case that cannot be used; the message names the case, the file and what was expected."""

    def __init__(self, message: str, case_id: str, path: str | None = None) -> None:
        super().__init__(message)
        self.case_id = case_id
        self.path = path


class CaseFileMissing(CaseError, FileNotFoundError):
    """A file the case table points to does not exist."""


class CorruptCaseFile(CaseError):
    """A file exists but nibabel cannot read it (truncated download, not a NIfTI/Analyze file)."""


class CaseGeometryError(CaseError):
    """Volumes of one case disagree on shape or affine, or are not 3-D."""


class CaseIntensityError(CaseError):
    """An image has NaN/Inf voxels or no non-zero voxel at all."""


class CaseLabelError(CaseError):
    """A label map holds values the layout does not define."""


@dataclass(frozen=True)
class LoadedCase:
    """One case in canonical form: what every model, metric and preprocessing step consumes."""

    case_id: str
    task: str  # "brats" or "iseg"
    images: dict[str, np.ndarray]  # canonical modality -> float32 3-D array, in TASK_MODALITIES order
    label: np.ndarray | None  # uint8 3-D, canonical labels (BraTS {0,1,2,4}; iSeg {0,1,2,3})
    affine: np.ndarray  # 4x4 float64 (of the first modality)
    spacing: tuple[float, float, float]
    source_files: dict[str, str]  # modality/label -> path string, for error messages and metadata


def split_channel(cell: str) -> tuple[Path, int | None]:
    """Split a case-table cell ``"path"`` or ``"path#k"`` into the path and the channel index (or None)."""
    path, separator, index = cell.rpartition("#")
    if separator and index.isdigit():
        return Path(path), int(index)
    return Path(cell), None


def _cell(row: Mapping[str, Any], column: str, case_id: str) -> str:
    """A row's value as a string; missing, None and pandas' NaN all read as empty."""
    try:
        value = row[column]
    except KeyError:
        raise CaseError(f"case {case_id}: the case-table row has no {column!r} column", case_id) from None
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def _read_file(case_id: str, role: str, path: Path) -> _Volume:
    """Read a whole NIfTI/Analyze file, turning every reading failure into a CaseError naming it."""
    if not path.is_file():
        raise CaseFileMissing(
            f"case {case_id}: {role} file {path} does not exist (expected a NIfTI .nii/.nii.gz or Analyze .hdr/.img volume)",
            case_id,
            str(path),
        )
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except FileNotFoundError as error:  # an Analyze .hdr whose .img is missing
        raise CaseFileMissing(
            f"case {case_id}: {role} file {path} is incomplete: {error.filename or error} does not exist "
            "(expected the .hdr/.img pair of an Analyze volume)",
            case_id,
            str(path),
        ) from error
    except _READ_ERRORS as error:
        raise CorruptCaseFile(
            f"case {case_id}: cannot read {role} file {path} ({type(error).__name__}: {error}); "
            "expected a complete NIfTI .nii/.nii.gz or Analyze .hdr/.img volume (truncated download?)",
            case_id,
            str(path),
        ) from error
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    spacing = (zooms + (1.0, 1.0, 1.0))[:3]
    return _Volume(data, np.asarray(image.affine, dtype=np.float64), spacing)  # type: ignore[arg-type]


def _squeeze_trailing(data: np.ndarray) -> np.ndarray:
    """Drop singleton axes after the third (iSeg stores 144x192x256x1)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _select(case_id: str, role: str, cell: str, volume: _Volume, channel: int | None) -> np.ndarray:
    """The 3-D array a cell names: the whole file, or one channel of a 4-D file."""
    data = volume.data
    if channel is not None:
        if data.ndim != 4 or channel >= data.shape[3]:
            raise CaseGeometryError(
                f"case {case_id}: {role} file {cell} has shape {data.shape}; "
                f"expected a 4-D volume with at least {channel + 1} channels on the last axis",
                case_id,
                cell,
            )
        data = data[..., channel]
    data = _squeeze_trailing(data)
    if data.ndim != 3:
        raise CaseGeometryError(
            f"case {case_id}: {role} file {cell} has shape {data.shape}; expected a 3-D volume", case_id, cell
        )
    return data


def _check_intensities(case_id: str, role: str, cell: str, image: np.ndarray) -> None:
    finite = np.isfinite(image)
    if not finite.all():
        nans = int(np.isnan(image).sum())
        infs = int(np.isinf(image).sum())
        raise CaseIntensityError(
            f"case {case_id}: {role} file {cell} has {nans + infs} non-finite voxels ({nans} NaN, {infs} Inf); "
            "expected finite intensities",
            case_id,
            cell,
        )
    if not image.any():
        raise CaseIntensityError(
            f"case {case_id}: {role} file {cell} is all zero; expected an image with non-zero (brain) voxels",
            case_id,
            cell,
        )


_Reference = tuple[str, str, tuple[int, ...], np.ndarray]  # role, cell, shape, affine of the first modality


def _check_same_grid(
    case_id: str,
    role: str,
    cell: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference: _Reference,
    expected: str = "every modality on the same grid",
) -> None:
    """A :class:`CaseGeometryError` unless ``cell`` has the shape and (within tolerance) the affine of the reference."""
    ref_role, ref_cell, ref_shape, ref_affine = reference
    if shape != ref_shape:
        raise CaseGeometryError(
            f"case {case_id}: {role} file {cell} has shape {shape} but {ref_role} file {ref_cell} has shape {ref_shape}; "
            f"expected {expected}",
            case_id,
            cell,
        )
    difference = float(np.max(np.abs(affine - ref_affine)))
    if difference > AFFINE_TOLERANCE_MM:
        raise CaseGeometryError(
            f"case {case_id}: {role} file {cell} has an affine that differs from {ref_role} file {ref_cell} "
            f"by up to {difference:.4g} (tolerance {AFFINE_TOLERANCE_MM} mm); expected {expected}.\n"
            f"{role} affine:\n{np.round(affine, 3)}\n{ref_role} affine:\n{np.round(ref_affine, 3)}",
            case_id,
            cell,
        )


def _canonical_label(case_id: str, layout: str, cell: str, raw: np.ndarray) -> np.ndarray:
    """Check the on-disk label values of ``layout`` and map them to the canonical ones."""
    mapping = LABEL_MAPS[layout]
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            count = int((~np.isfinite(raw)).sum())
            raise CaseLabelError(
                f"case {case_id}: label file {cell} has {count} NaN/Inf voxels; expected integer labels {sorted(mapping)}",
                case_id,
                cell,
            )
        if not np.array_equal(raw, np.round(raw)):
            raise CaseLabelError(
                f"case {case_id}: label file {cell} holds non-integer values; expected integer labels {sorted(mapping)}",
                case_id,
                cell,
            )
    elif raw.dtype.kind not in "iub":
        raise CaseLabelError(
            f"case {case_id}: label file {cell} has data type {raw.dtype}; expected integers", case_id, cell
        )
    values = raw.astype(np.int64)
    try:
        check_label_values(
            values, tuple(sorted(mapping)), source=f"case {case_id}: label file {cell} (layout {layout})"
        )
    except ValueError as error:
        raise CaseLabelError(str(error), case_id, cell) from None
    return relabel(values, mapping)


def _checked_layout(row: Mapping[str, Any], case_id: str) -> tuple[str, str]:
    """The row's ``(layout, task)``; CaseError unless the layout is known and serves the task."""
    layout = _cell(row, "layout", case_id)
    task = _cell(row, "task", case_id)
    if layout not in LABEL_MAPS:
        raise CaseError(f"case {case_id}: unknown layout {layout!r}; expected one of {sorted(LABEL_MAPS)}", case_id)
    if task != LAYOUT_TASKS[layout]:
        raise CaseError(
            f"case {case_id}: task {task!r} does not match layout {layout!r} (a {LAYOUT_TASKS[layout]} layout)", case_id
        )
    return layout, task


def _read_images(
    row: Mapping[str, Any], case_id: str, task: str
) -> tuple[dict[str, np.ndarray], dict[str, str], _Volume, _Reference]:
    """The task's modalities as float32 arrays, their cells, the first file and its grid, all checked."""
    files: dict[Path, _Volume] = {}  # a 4-D file holding several modalities is read once
    images: dict[str, np.ndarray] = {}
    source_files: dict[str, str] = {}
    first: _Volume | None = None
    reference: _Reference | None = None
    for modality in TASK_MODALITIES[task]:
        cell = _cell(row, modality, case_id)
        if not cell:
            raise CaseFileMissing(f"case {case_id}: no {modality} file in the case table; expected a path", case_id)
        path, channel = split_channel(cell)
        if path not in files:
            files[path] = _read_file(case_id, modality, path)
        vol = files[path]
        image = _select(case_id, modality, cell, vol, channel).astype(np.float32)
        _check_intensities(case_id, modality, cell, image)
        if reference is None:
            first, reference = vol, (modality, cell, image.shape, vol.affine)
        else:
            _check_same_grid(case_id, modality, cell, image.shape, vol.affine, reference)
        images[modality] = image
        source_files[modality] = cell
    assert first is not None and reference is not None  # every task has at least one modality
    return images, source_files, first, reference


def _read_label(case_id: str, layout: str, label_cell: str, reference: _Reference) -> np.ndarray:
    """The canonical label map of ``label_cell``, checked to lie on the images' grid (shape and affine:
    a label map shifted or flipped against its images would teach the wrong voxels)."""
    path, channel = split_channel(label_cell)
    volume = _read_file(case_id, "label", path)
    raw = _select(case_id, "label", label_cell, volume, channel)
    _check_same_grid(
        case_id, "label", label_cell, raw.shape, volume.affine, reference, "the label map on the image grid"
    )
    return _canonical_label(case_id, layout, label_cell, np.asarray(raw))


def load_case(row: Mapping[str, Any]) -> LoadedCase:
    """Read and validate one case-table row (a dict or a pandas Series) into canonical arrays.

    The row's ``layout`` decides how label values are mapped; its ``task`` which modalities are read.
    Raises a :class:`CaseError` subclass naming the case, the file and what was expected.
    """
    case_id = _cell(row, "case_id", "?") or "?"
    layout, task = _checked_layout(row, case_id)
    images, source_files, first, reference = _read_images(row, case_id, task)
    label: np.ndarray | None = None
    label_cell = _cell(row, "label", case_id)
    if label_cell:
        label = _read_label(case_id, layout, label_cell, reference)
        source_files["label"] = label_cell
    return LoadedCase(
        case_id=case_id,
        task=task,
        images=images,
        label=label,
        affine=first.affine,
        spacing=first.spacing,
        source_files=source_files,
    )
