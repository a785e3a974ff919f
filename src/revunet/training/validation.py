"""Validation during training: hard Dice per region on the held-out whole volumes.

Volumes are predicted as `revunet infer` predicts them (padded to the model's size multiple and
cropped back, float32), so validation scores what inference will produce. Only rank 0
validates; a stop request between two volumes abandons the validation (it is redone on resume).
"""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import torch
from torch import nn

from revunet.data.dataset import PatchDataset
from revunet.evaluation.predict import predict_volume
from revunet.tasks import get_task
from revunet.training.interruption import StopWatch
from revunet.training.setup import Run


def hard_dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of two boolean masks; both empty counts as 1 (BraTS convention)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


@torch.no_grad()
def validate(
    model: nn.Module, dataset: PatchDataset, task: str, device: torch.device, watch: StopWatch | None = None
) -> dict[str, float] | None:
    """Mean hard Dice per region over the held-out volumes (keys: the task's regions); None when
    a stop request (``watch``) came in between two volumes.

    Whole volumes are predicted as `revunet infer` predicts them (padded to the model's size
    multiple and cropped back, float32), so validation scores what inference will produce.
    """
    spec = get_task(task)
    scores: dict[str, list[float]] = {region: [] for region in spec.regions}
    for index in range(len(dataset)):
        if watch is not None and watch.signal_name is not None:
            return None
        item = dataset[index]
        image, label = cast(torch.Tensor, item["image"]), cast(torch.Tensor, item["label"])
        probabilities = predict_volume(model, image, spec.output, device=device)
        predicted, truth = spec.predicted_regions(probabilities), spec.region_stack(label)
        for region, p, t in zip(scores, predicted, truth):
            scores[region].append(hard_dice(p, t))
    return {region: float(np.mean(values)) for region, values in scores.items()}


def maybe_validate(run: Run, epoch: int, watch: StopWatch) -> dict[str, float] | str | None:
    """Rank 0's validation scores on every rank, on the epochs that validate (else None); the
    reason, a string, when a stop request came before or during the validation."""
    if run.held_out is None or epoch % run.experiment.validate_every != 0:
        return None
    reason = watch.reason("validation")
    if reason is not None:
        return reason
    scores: dict[str, float] | str | None = None
    if run.processes.is_main:
        started = time.perf_counter()
        scores = validate(run.model, run.held_out, run.experiment.task, run.device, watch)
        watch.measured("validation", time.perf_counter() - started)
        if scores is None:
            scores = watch.signal_name
    return run.processes.share(scores)
