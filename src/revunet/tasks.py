"""What a segmentation task means, in one place: BraTS tumour regions and iSeg tissue classes.

A :class:`Task` knows its input modalities, its canonical label values, the regions that are
scored, how logits become probabilities and how probabilities become labels. Everything
downstream (datasets, losses, validation, inference, scoring, figures, memory tables) asks the
task instead of branching on its name.

BraTS (2018–2021 convention): canonical labels 0 background, 1 necrotic / non-enhancing core,
2 edema, 4 enhancing tumour. Scored and trained on the nested regions WT = label != 0,
TC = label in {1, 4}, ET = label == 4, as independent sigmoid channels; thresholded sigmoids
become a label map by the overwrite order WT→2, TC→1, ET→4 (Brügger et al.'s submission rule:
a voxel in ET is 4 even if the TC channel missed it).

iSeg: canonical labels 0 background, 1 CSF, 2 GM, 3 WM (on disk 0/10/150/250, see
:mod:`revunet.data.labels`); softmax over the four classes, argmax to labels; CSF, GM and WM
are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from revunet.catalog import TASK_MODALITIES, TASK_OUTPUTS, TASK_REGIONS

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)

SIGMOID_THRESHOLD = 0.5
# BraTS: the canonical label each region's voxels get, in overwrite order (later wins).
BRATS_REGION_LABELS = (("WT", 2), ("TC", 1), ("ET", 4))


def _stack(masks: list[ArrayLike]) -> ArrayLike:
    if isinstance(masks[0], torch.Tensor):
        return torch.stack(masks)
    return np.stack(masks)


@dataclass(frozen=True)
class Task:
    """One task's conventions; use :data:`TASKS` or :func:`get_task`, not the constructor."""

    name: str
    modalities: tuple[str, ...]
    labels: tuple[int, ...]  # canonical label values, background first
    regions: tuple[str, ...]  # scored regions, in output-channel order
    output: str  # "sigmoid" (independent regions) or "softmax" (exclusive classes)

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    @property
    def out_channels(self) -> int:
        """Network output channels: one per region (sigmoid) or one per class (softmax)."""
        return len(self.regions) if self.output == "sigmoid" else len(self.labels)

    def region_stack(self, label: ArrayLike) -> ArrayLike:
        """Boolean masks of the scored regions stacked on a new first axis (``(...)`` → ``(R, ...)``)."""
        if self.name == "brats":
            return _stack([label != 0, (label == 1) | (label == 4), label == 4])
        return _stack([label == value for value in self.labels[1:]])

    def region_masks(self, label: ArrayLike) -> dict[str, ArrayLike]:
        """region name -> boolean mask of a canonical label map."""
        return dict(zip(self.regions, self.region_stack(label), strict=True))

    def targets(self, label: torch.Tensor | np.ndarray) -> torch.Tensor:
        """What the loss needs from a canonical label map (or a batch of them).

        Sigmoid tasks: float32 region masks on a channel axis, ``(X, Y, Z)`` → ``(R, X, Y, Z)``
        and ``(B, X, Y, Z)`` → ``(B, R, X, Y, Z)``. Softmax tasks: int64 class indices.
        """
        label = torch.as_tensor(label)
        if self.output == "softmax":
            return label.to(torch.int64)
        regions = self.region_stack(label).to(torch.float32)
        return regions.movedim(0, 1) if label.ndim == 4 else regions

    def predicted_regions(self, probabilities: ArrayLike) -> ArrayLike:
        """Boolean ``(R, ...)`` region masks from ``(K, ...)`` probabilities (threshold or argmax)."""
        if self.output == "sigmoid":
            return probabilities > SIGMOID_THRESHOLD
        classes = probabilities.argmax(0)
        return self.region_stack(classes)

    def labels_from_probabilities(self, probabilities: torch.Tensor | np.ndarray) -> np.ndarray:
        """Canonical uint8 label map from ``(K, X, Y, Z)`` probabilities."""
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.detach().cpu().numpy()
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 4 or probabilities.shape[0] != self.out_channels:
            raise ValueError(
                f"{self.name}: expected probabilities of shape ({self.out_channels}, x, y, z), got {probabilities.shape}"
            )
        if self.output == "softmax":
            return probabilities.argmax(axis=0).astype(np.uint8)
        return label_from_regions(probabilities > SIGMOID_THRESHOLD)


def label_from_regions(regions: np.ndarray) -> np.ndarray:
    """BraTS label map from WT, TC, ET masks (``(3, ...)`` bool) by the overwrite order WT→2, TC→1, ET→4."""
    if regions.shape[0] != len(BRATS_REGION_LABELS):
        raise ValueError(f"expected 3 region masks (WT, TC, ET) on the first axis, got shape {regions.shape}")
    label = np.zeros(regions.shape[1:], dtype=np.uint8)
    for index, (_, value) in enumerate(BRATS_REGION_LABELS):
        label[regions[index].astype(bool)] = value
    return label


TASKS: dict[str, Task] = {
    "brats": Task("brats", TASK_MODALITIES["brats"], (0, 1, 2, 4), TASK_REGIONS["brats"], TASK_OUTPUTS["brats"]),
    "iseg": Task("iseg", TASK_MODALITIES["iseg"], (0, 1, 2, 3), TASK_REGIONS["iseg"], TASK_OUTPUTS["iseg"]),
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None
