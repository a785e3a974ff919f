"""Building the model an experiment describes (for training from scratch and for reading checkpoints)."""

from __future__ import annotations

from torch import nn

from revunet.experiments.recipe import Experiment
from revunet.models.registry import build_model


def build_experiment_model(experiment: Experiment) -> nn.Module:
    """The registry model an experiment describes (untrained)."""
    return build_model(experiment.model, **experiment.model_params)
