"""The architectures of the three papers, one module each, built from shared blocks.

Use the registry: ``build_model(name, **params)`` and ``available()``; ``model_spec(name)``
gives the paper configurations. Every reversible model takes ``memory_saving``; with
``False`` it is its plain-autograd twin with identical parameters.
"""

from revunet.models.registry import ModelSpec, available, build_model, model_spec, parameter_count
from revunet.models.vae import SegmentationWithVAE

__all__ = ["ModelSpec", "SegmentationWithVAE", "available", "build_model", "model_spec", "parameter_count"]
