"""Predictions in a BraTS challenge's naming and label convention, ready to upload.

Conventions (:data:`CONVENTIONS`):

- ``brats2021`` (BraTS 2018–2021): labels 0 background, 1 necrosis / non-enhancing core, 2 edema,
  4 enhancing tumour; one ``<case_id>.nii.gz`` per case (e.g. ``BraTS20_Validation_001.nii.gz``);
- ``brats2023`` (BraTS 2023 and later, glioma task): enhancing tumour is 3 (labels 0, 1, 2, 3);
  files are named ``BraTS-GLI-XXXXX-YYY.nii.gz``. A case id of that form is kept; a BraTS 2021 id
  ``BraTS2021_XXXXX`` becomes ``BraTS-GLI-XXXXX-000`` (BraTS 2023's glioma cases renumber 2021's,
  timepoint 000); any other id is refused, since the challenge would not recognise it.

Each prediction (what ``revunet infer`` wrote, listed in ``PRED_DIR/predictions.csv``) is read in its
dataset's label convention, checked against the case's original image grid (shape of the first
modality's header, affine within :data:`revunet.data.io.AFFINE_TOLERANCE_MM`), optionally
post-processed (:mod:`revunet.evaluation.postprocess`), and written as uint8 NIfTI with the
original image's affine. Every case is checked before the first file is written; a prediction of
the wrong shape, grid or labels is an :class:`ExportError` naming the file, what it holds and what
was expected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from revunet.catalog import TASK_MODALITIES
from revunet.data.case_table import read_case_table
from revunet.data.io import AFFINE_TOLERANCE_MM, split_channel
from revunet.data.labels import canonical_to_disk
from revunet.evaluation.postprocess import PostProcessing, postprocess
from revunet.evaluation.predict import write_label_nifti
from revunet.evaluation.score import EvaluationError, load_prediction, read_predictions


@dataclass(frozen=True)
class Convention:
    """A challenge's label values (through a layout of :data:`revunet.data.labels.LABEL_MAPS`) and file names."""

    name: str
    description: str
    layout: str


CONVENTIONS = {
    "brats2021": Convention("brats2021", "BraTS 2018-2021: labels 0, 1, 2, 4; <case>.nii.gz", "brats2021"),
    "brats2023": Convention("brats2023", "BraTS 2023+: labels 0, 1, 2, 3; BraTS-GLI-XXXXX-YYY.nii.gz", "brats2023"),
}
BRATS2023_ID = re.compile(r"BraTS-GLI-\d{5}-\d{3}")
BRATS2021_ID = re.compile(r"BraTS2021_(\d{5})")


class ExportError(ValueError):
    """Predictions that cannot be exported; the message names the case, the file and what was expected."""


def export_name(case_id: str, convention: str) -> str:
    """The file name of ``case_id``'s prediction in ``convention``."""
    if convention not in CONVENTIONS:
        raise ExportError(f"unknown convention {convention!r}; expected one of {sorted(CONVENTIONS)}")
    if convention == "brats2021" or BRATS2023_ID.fullmatch(case_id):
        return f"{case_id}.nii.gz"
    match = BRATS2021_ID.fullmatch(case_id)
    if match:
        return f"BraTS-GLI-{match.group(1)}-000.nii.gz"
    raise ExportError(
        f"case {case_id}: BraTS 2023 names files BraTS-GLI-XXXXX-YYY.nii.gz; got case id {case_id!r}, expected "
        "an id of that form or a BraTS 2021 id BraTS2021_XXXXX"
    )


def original_grid(row: dict) -> tuple[tuple[int, ...], np.ndarray, Path]:
    """Shape, affine and path of the case's first modality: the grid predictions are pasted back into."""
    modality = TASK_MODALITIES[str(row["task"])][0]
    path, _ = split_channel(str(row[modality]))  # a channel of a 4-D file (Decathlon) shares its 3-D grid
    image = nib.load(path)
    shape = tuple(int(s) for s in image.shape[:3])
    return shape, np.asarray(image.affine, dtype=np.float64), path


def _checked_label(
    row: dict, prediction_path: str, postprocessing: PostProcessing | None
) -> tuple[np.ndarray, np.ndarray]:
    """The case's canonical prediction (post-processed if asked) and the original affine, after every check."""
    case_id = str(row["case_id"])
    try:
        label, affine = load_prediction(prediction_path, case_id, str(row["layout"]))
    except EvaluationError as error:
        raise ExportError(str(error)) from None
    shape, original, image_path = original_grid(row)
    if label.shape != shape:
        raise ExportError(
            f"case {case_id}: prediction file {prediction_path} has shape {label.shape}; expected {shape}, the "
            f"original image grid of {image_path}"
        )
    difference = float(np.max(np.abs(affine - original)))
    if difference > AFFINE_TOLERANCE_MM:
        raise ExportError(
            f"case {case_id}: prediction file {prediction_path} has an affine that differs from {image_path}'s by up "
            f"to {difference:.4g} mm; expected the original image grid (tolerance {AFFINE_TOLERANCE_MM} mm)"
        )
    if postprocessing is not None:
        spacing = tuple(float(s) for s in nib.affines.voxel_sizes(original))
        label = postprocess(label, str(row["task"]), spacing, postprocessing)
    return label, original


def export_predictions(
    cases: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    convention: str,
    out: str | os.PathLike[str],
    postprocessing: PostProcessing | None = None,
) -> list[Path]:
    """Write every listed prediction into ``out`` in ``convention``; returns the files written, in list order."""
    predictions = read_predictions(pred_dir)
    table = read_case_table(cases)
    rows = {str(row["case_id"]): row for row in table.to_dict(orient="records")}
    unknown = sorted(set(predictions["case_id"]) - set(rows))
    if unknown:
        raise ExportError(f"case(s) {unknown[:5]} of {pred_dir} are not in the case table {cases}")
    tasks = sorted({str(rows[c]["task"]) for c in predictions["case_id"]})
    if tasks != ["brats"]:
        raise ExportError(f"the challenge conventions are BraTS's; the predictions are of task(s) {tasks}")
    names = {case_id: export_name(case_id, convention) for case_id in predictions["case_id"]}
    clashes = sorted(name for name in set(names.values()) if list(names.values()).count(name) > 1)
    if clashes:
        raise ExportError(f"several cases would be written as {clashes[:3]}; expected one file per case")
    checked = [
        (case_id, *_checked_label(rows[case_id], path, postprocessing))
        for case_id, path in zip(predictions["case_id"], predictions["path"], strict=True)
    ]
    layout = CONVENTIONS[convention].layout
    return [
        write_label_nifti(Path(out) / names[case_id], canonical_to_disk(label, layout), affine)
        for case_id, label, affine in checked
    ]
