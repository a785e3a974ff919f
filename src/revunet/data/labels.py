"""Canonical label conventions, one per task, and the conversions the papers use.

BraTS (2018-2021 convention): 0 background, 1 necrotic/non-enhancing core, 2 edema,
4 enhancing tumour. Training targets are the nested regions WT = label != 0,
TC = label in {1, 4}, ET = label == 4 (independent sigmoid channels).

iSeg: 0 background, 1 CSF, 2 GM, 3 WM (on disk 0/10/150/250; softmax classes).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)

BRATS_LABELS = (0, 1, 2, 4)
BRATS_REGIONS = ("WT", "TC", "ET")
ISEG_LABELS = (0, 1, 2, 3)
ISEG_CLASSES = ("background", "CSF", "GM", "WM")
ISEG_DISK_VALUES = {0: 0, 10: 1, 150: 2, 250: 3}

TASK_MODALITIES = {"brats": ("t1", "t1ce", "t2", "flair"), "iseg": ("t1", "t2")}
TASK_LABELS = {"brats": BRATS_LABELS, "iseg": ISEG_LABELS}


def brats_regions(label: ArrayLike) -> ArrayLike:
    """Boolean WT, TC, ET masks stacked on a new first axis (label ``(...)`` → ``(3, ...)``)."""
    if isinstance(label, torch.Tensor):
        return torch.stack((label != 0, (label == 1) | (label == 4), label == 4))
    return np.stack((label != 0, (label == 1) | (label == 4), label == 4))


def regions_to_brats_label(regions: np.ndarray) -> np.ndarray:
    """Label map from WT, TC, ET masks (``(3, ...)`` bool) by the overwrite order WT→2, TC→1, ET→4.

    This is how Brügger et al. turn thresholded sigmoids into a BraTS submission: a voxel
    in ET is 4 even if the network's TC channel missed it.
    """
    if regions.shape[0] != 3:
        raise ValueError(f"expected 3 region masks (WT, TC, ET) on the first axis, got shape {regions.shape}")
    label = np.zeros(regions.shape[1:], dtype=np.uint8)
    label[regions[0].astype(bool)] = 2
    label[regions[1].astype(bool)] = 1
    label[regions[2].astype(bool)] = 4
    return label


def iseg_to_disk(label: np.ndarray) -> np.ndarray:
    """Canonical iSeg classes {0,1,2,3} → the values iSeg files use {0,10,150,250}."""
    lookup = np.zeros(4, dtype=np.uint8)
    for disk, canonical in ISEG_DISK_VALUES.items():
        lookup[canonical] = disk
    return lookup[label]


def check_label_values(label: np.ndarray, allowed: tuple[int, ...], source: str) -> None:
    """Raise a ValueError naming ``source`` and the offending values if ``label`` has values outside ``allowed``."""
    found = np.unique(label)
    unexpected = sorted(set(found.tolist()) - set(allowed))
    if unexpected:
        raise ValueError(
            f"{source}: unexpected label values {unexpected} (found {found.tolist()}, expected a subset of {list(allowed)})"
        )
