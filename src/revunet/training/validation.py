"""Validation during training: hard Dice per region on the split's validation part.

The validation part chooses the checkpoint (``best.pt``) and stops early; it never overlaps the
test part that inference and the tables report (:mod:`revunet.data.splits`). Volumes are
predicted exactly as `revunet infer` predicts the experiment's test cases, through the same
:func:`revunet.evaluation.predict.predict_with` with the experiment's sliding window, overlap
and test-time flips, so ``best.pt`` is chosen on what inference will produce. Only rank 0
validates; a stop request between two volumes abandons the validation (it is redone on resume).
"""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import torch
from torch import nn

from revunet.data.dataset import PatchDataset
from revunet.evaluation.predict import InferenceSettings, experiment_settings, predict_with
from revunet.experiments.recipe import Experiment
from revunet.tasks import get_task
from revunet.training.interruption import StopWatch
from revunet.training.setup import Run


def hard_dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of two boolean masks; both empty counts as 1 (BraTS convention)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def inference_settings(experiment: Experiment, device: torch.device) -> InferenceSettings:
    """How `revunet infer` predicts this experiment's cases (window, overlap, flips), on ``device``."""
    return experiment_settings(experiment, get_task(experiment.task).output, device)


@torch.no_grad()
def validate(
    model: nn.Module, dataset: PatchDataset, settings: InferenceSettings, task: str, watch: StopWatch | None = None
) -> dict[str, float] | None:
    """Mean hard Dice per region over the validation volumes (keys: the task's regions); None when
    a stop request (``watch``) came in between two volumes."""
    spec = get_task(task)
    scores: dict[str, list[float]] = {region: [] for region in spec.regions}
    for index in range(len(dataset)):
        if watch is not None and watch.signal_name is not None:
            return None
        item = dataset[index]
        image, label = cast(torch.Tensor, item["image"]), cast(torch.Tensor, item["label"])
        probabilities = predict_with(model, image, settings)
        # through the label map inference writes (BraTS: the overwrite order WT, TC, ET)
        predicted = spec.region_stack(torch.as_tensor(spec.labels_from_probabilities(probabilities)))
        truth = spec.region_stack(label)
        for region, p, t in zip(scores, predicted, truth):
            scores[region].append(hard_dice(p, t))
    return {region: float(np.mean(values)) for region, values in scores.items()}


def maybe_validate(run: Run, epoch: int, watch: StopWatch) -> dict[str, float] | str | None:
    """Rank 0's validation scores on every rank, on the epochs that validate (else None); the
    reason, a string, when a stop request came before or during the validation. Its wall time
    goes to ``run.validation_seconds`` (log.csv)."""
    run.validation_seconds = None
    if run.validation is None or epoch % run.experiment.validate_every != 0:
        return None
    reason = watch.reason("validation")
    if reason is not None:
        return reason
    scores: dict[str, float] | str | None = None
    if run.processes.is_main:
        started = time.perf_counter()
        settings = inference_settings(run.experiment, run.device)
        scores = validate(run.model, run.validation, settings, run.experiment.task, watch)
        run.validation_seconds = time.perf_counter() - started
        watch.measured("validation", run.validation_seconds)
        if scores is None:
            scores = watch.signal_name
    return run.processes.share(scores)
