"""A BraTS-like dataset as an nnU-Net v2 raw dataset, so that nnU-Net can plan and train on revunet's cases.

The dataset folder ``<nnUNet_raw>/DatasetNNN_<name>`` holds ``imagesTr/<case>_0000..0003.nii.gz``
(T1, T1ce, T2, FLAIR: the order of :data:`revunet.catalog.TASK_MODALITIES`), ``labelsTr/<case>.nii.gz``,
unlabelled cases in ``imagesTs/`` and a ``dataset.json`` for region-based training.

nnU-Net wants consecutive labels, so the canonical BraTS labels (0 background, 1 necrosis /
non-enhancing core, 2 edema, 4 enhancing; :mod:`revunet.tasks`) are renumbered as nnU-Net's own
BraTS conversions do: edema 1, necrosis 2, enhancing 3. The nested regions then read whole
tumour {1, 2, 3}, tumour core {2, 3}, enhancing tumour {3}. Each case goes through
:func:`revunet.data.io.load_case` first, so every layout's label spelling (BraTS 2023, the
Decathlon) is understood and a broken case is refused with the file named, before nnU-Net sees it.

Writing nnU-Net's format needs no nnU-Net: this module imports without the ``nnunet`` extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from revunet.catalog import TASK_MODALITIES
from revunet.data.io import load_case, split_channel
from revunet.data.labels import BRATS_LABELS, relabel
from revunet.data.layouts import find_cases
from revunet.tasks import BRATS_REGION_LABELS, TASKS

SUPPORTED_TASKS = ("brats",)
FILE_ENDING = ".nii.gz"
# Canonical BraTS label -> nnU-Net label (nnU-Net's BraTS conversions: edema 1, necrosis 2, enhancing 3).
NNUNET_LABELS: dict[int, int] = {0: 0, 2: 1, 1: 2, 4: 3}
CHANNEL_NAMES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
REGION_NAMES: dict[str, str] = {"WT": "whole tumor", "TC": "tumor core", "ET": "enhancing tumor"}
# nnU-Net finds a dataset by its three-digit id; the name follows it in the folder name.
MAX_DATASET_ID = 999
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

assert sorted(NNUNET_LABELS) == sorted(BRATS_LABELS) and sorted(NNUNET_LABELS.values()) == list(range(4))
assert tuple(CHANNEL_NAMES) == TASK_MODALITIES["brats"] and tuple(REGION_NAMES) == TASKS["brats"].regions


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetNNN_<name>``, the folder name nnU-Net looks datasets up by; ValueError for an id or name it cannot use."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= MAX_DATASET_ID:
        raise ValueError(
            f"dataset id must be an integer from 1 to {MAX_DATASET_ID} (nnU-Net's DatasetNNN), got {dataset_id!r}"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"dataset name {name!r} cannot be part of an nnU-Net folder name; expected letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
    return f"Dataset{dataset_id:03d}_{name}"


def to_nnunet_labels(label: np.ndarray) -> np.ndarray:
    """A canonical BraTS label map (0, 1, 2, 4; already checked) in nnU-Net's consecutive labels (uint8)."""
    return relabel(label, NNUNET_LABELS)


def nnunet_regions() -> dict[str, list[int]]:
    """Region name -> its nnU-Net labels, derived from revunet's own region definition (:meth:`Task.region_stack`)."""
    canonical = np.asarray(BRATS_LABELS)
    masks = TASKS["brats"].region_masks(canonical)
    return {
        REGION_NAMES[region]: sorted(NNUNET_LABELS[int(v)] for v in canonical[mask]) for region, mask in masks.items()
    }


def dataset_json(num_training: int, name: str, description: str) -> dict[str, Any]:
    """The ``dataset.json`` of a converted dataset: what nnU-Net needs for region-based BraTS training.

    ``regions_class_order`` is revunet's overwrite order (WT, TC, ET) in nnU-Net labels, so nnU-Net
    turns region predictions back into labels the way :func:`revunet.tasks.label_from_regions` does.
    """
    return {
        "name": name,
        "description": description,
        "channel_names": {str(i): CHANNEL_NAMES[m] for i, m in enumerate(TASK_MODALITIES["brats"])},
        "labels": {"background": 0, **nnunet_regions()},
        "regions_class_order": [NNUNET_LABELS[value] for _, value in BRATS_REGION_LABELS],
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "converted_by": "revunet nnunet-dataset",
    }


def _write_image(cell: str, out: Path) -> None:
    """One modality as its own ``.nii.gz``: a byte copy when it already is one, else nibabel (same data type
    and affine; one channel of the Decathlon's 4-D files)."""
    path, channel = split_channel(cell)
    if channel is None and path.name.lower().endswith(FILE_ENDING):
        shutil.copyfile(path, out)
        return
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    if channel is not None:
        data = data[..., channel]
    header = image.header.copy()
    header.set_data_dtype(data.dtype)  # scaled integers arrive as floats: keep the values, not the old type
    nib.save(nib.Nifti1Image(data, image.affine, header), out)


def _write_label(label: np.ndarray, image_cell: str, out: Path) -> None:
    """The nnU-Net label map as uint8 on the grid (affine and header geometry) of the case's first image."""
    image = nib.load(split_channel(image_cell)[0])
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(to_nnunet_labels(label), image.affine, header), out)


def _write_case(row: Mapping[str, Any], folder: Path) -> bool:
    """Check one case (:func:`load_case` raises naming the file) and write it; whether it was labelled."""
    case = load_case(row)
    images = folder / ("imagesTr" if case.label is not None else "imagesTs")
    images.mkdir(exist_ok=True)
    for channel, modality in enumerate(TASK_MODALITIES["brats"]):
        _write_image(case.source_files[modality], images / f"{case.case_id}_{channel:04d}{FILE_ENDING}")
    if case.label is None:
        return False
    (folder / "labelsTr").mkdir(exist_ok=True)
    _write_label(
        case.label, case.source_files[TASK_MODALITIES["brats"][0]], folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}"
    )
    return True


def _target(nnunet_raw: Path, folder_name: str, force: bool) -> Path:
    """The dataset folder to write; FileExistsError when it exists (unless ``force``) or another
    folder has the same id (nnU-Net could not tell the two apart, so ``force`` does not replace it)."""
    target = nnunet_raw / folder_name
    prefix = folder_name.split("_", 1)[0] + "_"
    clashes = (
        sorted(p.name for p in nnunet_raw.glob(f"{prefix}*") if p.name != folder_name) if nnunet_raw.is_dir() else []
    )
    if clashes:
        raise FileExistsError(
            f"{nnunet_raw} already holds {', '.join(clashes)} with the id of {folder_name}; nnU-Net finds datasets "
            "by id, so choose another id (or remove that folder)"
        )
    if target.exists() and not force:
        raise FileExistsError(f"nnU-Net dataset {target} already exists; pass force=True (--force) to replace it")
    return target


def write_raw_dataset(
    source: str | os.PathLike[str],
    nnunet_raw: str | os.PathLike[str],
    dataset_id: int,
    name: str = "RevunetBraTS",
    layout: str = "auto",
    force: bool = False,
) -> Path:
    """Convert the BraTS-like dataset in ``source`` into ``<nnunet_raw>/DatasetNNN_<name>`` and return that folder.

    The folder is built under a hidden temporary name beside it and renamed into place when
    complete, so a failure leaves no partial dataset for nnU-Net to find. An existing folder is
    a FileExistsError unless ``force``, which replaces it. Only the BraTS task is supported.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    table = find_cases(source, layout)
    task, found_layout = str(table["task"].iloc[0]), str(table["layout"].iloc[0])
    if task not in SUPPORTED_TASKS:
        raise ValueError(
            f"{source} holds a {task} dataset (layout {found_layout}); the nnU-Net conversion supports only "
            f"the {', '.join(SUPPORTED_TASKS)} task"
        )
    raw = Path(nnunet_raw)
    target = _target(raw, folder_name, force)
    raw.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.", suffix=".partial", dir=raw))
    try:
        fresh = staging / folder_name
        fresh.mkdir()
        labelled = sum(_write_case(row, fresh) for _, row in table.iterrows())
        if not labelled:
            raise ValueError(
                f"none of the {len(table)} cases in {source} has a label; nnU-Net trains only on labelled cases"
            )
        description = f"{len(table)} cases of the {found_layout} dataset {Path(source).resolve()}, converted by revunet"
        document = dataset_json(labelled, name, description)
        (fresh / "dataset.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            os.rename(target, staging / "previous")
        os.rename(fresh, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
