"""Checkpoint files: what `revunet train` writes and `revunet infer` reads.

A checkpoint is a ``torch.save``'d dictionary, written atomically, holding at least::

    format: 1
    experiment: Experiment.to_dict()      # rebuilds the model and explains the run
    model_state: state_dict of the bare model (never a DDP wrapper's "module." keys)
    epoch: number of completed epochs

Training checkpoints (``last.pt``) add the optimiser, scheduler, random states and
early-stopping state so a rerun resumes exactly; ``best.pt`` may hold only the keys above.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from revunet.atomic import open_atomic
from revunet.experiments.recipe import Experiment

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "experiment", "model_state", "epoch")


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` atomically; it must carry :data:`REQUIRED_KEYS`."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks the keys {missing}")
    with open_atomic(path, "wb") as stream:
        torch.save(dict(payload), stream)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file is an error naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # Our checkpoints hold random-number-generator states (numpy arrays, Python tuples),
        # so they are loaded in full; only load checkpoints you wrote yourself.
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise ValueError(f"{path}: not a revunet checkpoint (expected the keys {list(REQUIRED_KEYS)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload['format']}, this revunet reads format {CHECKPOINT_FORMAT}")
    return payload


def build_experiment_model(experiment: Experiment) -> nn.Module:
    """The registry model an experiment describes (untrained)."""
    from revunet.models.registry import build_model

    return build_model(experiment.model, **experiment.model_params)


def model_from_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Experiment, dict[str, Any]]:
    """Rebuild the trained model (in eval mode), its experiment, and the raw checkpoint."""
    payload = load_checkpoint(path, map_location)
    experiment = Experiment.from_dict(payload["experiment"], source=f"{path}: experiment")
    model = build_experiment_model(experiment)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit model {experiment.model!r}: {error}") from None
    model.to(map_location).eval()
    return model, experiment, payload
