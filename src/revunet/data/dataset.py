"""Torch dataset of (augmented) patches or whole volumes from preprocessed cases.

Every random choice of an item (patch position, augmentation parameters) is a function of
``(seed, epoch, index)`` only, through ``numpy.random.SeedSequence([seed, epoch, index])``.
So a DataLoader gives the same samples with any number of worker processes, a resumed run
replays the same epoch, and :meth:`PatchDataset.set_epoch` draws fresh samples per epoch.
Call ``set_epoch`` before iterating a DataLoader each epoch; with
``persistent_workers=True`` the workers keep the epoch they were started with, so leave
that option off (the default).

Patches: the start of a patch is uniform over all positions where it fits in the volume.
Along an axis where the volume is smaller than the patch, the volume is centred in the
patch and zero-padded (image 0, label 0 = background). ``patch_size=None`` yields the
whole preprocessed volume.

With augmentation, a patch is cut with extra in-plane context
(:meth:`Augmentation.context_margin`) and only the patch itself is computed by the warp,
which samples real data near the patch borders and costs what the patch costs, not the
volume. The rotation/scale centre is then the patch centre and the elastic control grid
spans the patch; for ``patch_size=None`` both refer to the whole volume.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from revunet.data.augment import Augmentation
from revunet.data.preprocess import PreprocessMeta, npz_path, read_meta, window


def sample_patch_start(shape: Sequence[int], patch_size: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """A patch start uniform over the positions where the patch fits; where the volume is
    smaller than the patch, the (negative) start that centres the volume in it."""
    starts = []
    for size, patch in zip(shape, patch_size, strict=True):
        if size >= patch:
            starts.append(int(rng.integers(0, size - patch + 1)))
        else:
            starts.append(-((patch - size) // 2))
    return tuple(starts)


class PatchDataset(Dataset):
    """Items ``{"image": float32 (C, X, Y, Z), "label": int64 (X, Y, Z), "case_id": str}``.

    ``len = len(case_ids) * samples_per_volume``; item ``i`` comes from case
    ``case_ids[i // samples_per_volume]``. ``cache_size`` keeps that many decoded volumes
    per process (useful with many patches per small volume, as for iSeg).
    """

    def __init__(
        self,
        preprocessed_dir: str | os.PathLike[str],
        case_ids: Sequence[str],
        patch_size: Sequence[int] | None = None,
        augment: Augmentation | None = None,
        samples_per_volume: int = 1,
        seed: int = 0,
        cache_size: int = 0,
    ) -> None:
        self.directory = Path(preprocessed_dir)
        self.case_ids = [str(case_id) for case_id in case_ids]
        if not self.case_ids:
            raise ValueError("PatchDataset needs at least one case id")
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if len(patch_size) != 3 or any(p <= 0 for p in patch_size):
                raise ValueError(f"patch_size must be three positive integers or None, got {patch_size}")
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be at least 1, got {samples_per_volume}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.patch_size: tuple[int, ...] | None = patch_size
        self.augment = augment
        self.samples_per_volume = int(samples_per_volume)
        self.seed = int(seed)
        self.epoch = 0
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.metas: dict[str, PreprocessMeta] = {case_id: self._meta(case_id) for case_id in self.case_ids}
        tasks = sorted({meta.task for meta in self.metas.values()})
        if len(tasks) != 1:
            raise ValueError(f"the cases mix tasks {tasks}; a dataset serves one task")
        self.task = tasks[0]
        self.channels = len(next(iter(self.metas.values())).modalities)

    def _meta(self, case_id: str) -> PreprocessMeta:
        meta = read_meta(self.directory, case_id)
        if not npz_path(self.directory, case_id).is_file():
            raise FileNotFoundError(f"case {case_id}: no preprocessed arrays at {npz_path(self.directory, case_id)}")
        if not meta.has_label:
            raise ValueError(f"case {case_id} has no label; only labelled cases can be trained or validated on")
        return meta

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch`` (patch positions and augmentations change per epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.case_ids) * self.samples_per_volume

    def _load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
            return self._cache[case_id]
        with np.load(npz_path(self.directory, case_id)) as stored:
            arrays = (stored["image"], stored["label"])
        if self.cache_size > 0:
            self._cache[case_id] = arrays
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        case_id = self.case_ids[index // self.samples_per_volume]
        image, label = self._load(case_id)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

        margin = (0, 0, 0)
        if self.patch_size is not None:
            start = sample_patch_start(image.shape[1:], self.patch_size, rng)
            if self.augment is not None:
                margin = self.augment.context_margin(self.patch_size)
            context_start = [s - m for s, m in zip(start, margin)]
            context_size = [p + 2 * m for p, m in zip(self.patch_size, margin)]
            image = window(image, context_start, context_size)
            label = window(label, context_start, context_size)

        # Copies: the returned tensors never alias the cache.
        image_t = torch.from_numpy(np.array(image, dtype=np.float32))
        label_t = torch.from_numpy(np.array(label, dtype=np.int64))
        if self.augment is not None:
            image_t, label_t = self.augment(image_t, label_t, int(rng.integers(2**63)), margin=margin)
        return {"image": image_t, "label": label_t, "case_id": case_id}
