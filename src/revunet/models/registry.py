"""The model registry: every architecture of the three papers by name, with its paper configurations.

``build_model(name, **params)`` builds one; ``available()`` lists the names;
``model_spec(name)`` tells which paper it comes from and the keyword arguments of each
configuration the papers report (what ``revunet models`` prints and the memory tables use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from revunet.models.invres_full import FullyInvertibleUNet
from revunet.models.invres_partial import invres_partial
from revunet.models.nonewnet import NoNewNet
from revunet.models.partially_reversible import PartiallyReversibleUNet
from revunet.models.unet3d import UNet3D

BRUEGGER = "Brügger et al. 2019, A Partially Reversible U-Net (MICCAI)"
PENDSE = "Pendse et al. 2020, Reversible Mobile Inverted Bottlenecks (BraTS 2020)"
INVRES = "Partially/Fully Invertible Residual U-Nets with VAE (iSeg 2019, BraTS 2020)"

ISEG_HEAD = {"in_channels": 2, "out_channels": 4, "output": "softmax"}
PENDSE_NARROW = [30, 60, 120, 180, 240]


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model and the configurations its paper reports."""

    name: str
    build: Callable[..., nn.Module]
    paper: str
    summary: str
    reversible: bool
    paper_configs: dict[str, dict[str, Any]] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "nonewnet",
            NoNewNet,
            BRUEGGER,
            "No-New-Net style baseline NO_NEW30 (GroupNorm, additive skips)",
            reversible=False,
            paper_configs={"Baseline": {}},
        ),
        ModelSpec(
            "partially_reversible",
            PartiallyReversibleUNet,
            f"{BRUEGGER}; {PENDSE}",
            "U-Net whose levels are reversible sequences (residual or MBConv couplings)",
            reversible=True,
            paper_configs={
                **{f"Reversible {depth}/1": {"encoder_depth": depth} for depth in (1, 2, 3, 4)},
                "Pendse Baseline": {"channels": [60, 120, 180, 240, 480]},
                "MBConv-Base": {"channels": PENDSE_NARROW, "block": "mbconv", "expand_ratio": 2},
                "MBConv-Deeper": {"channels": [*PENDSE_NARROW, 480], "block": "mbconv", "expand_ratio": 2},
                "MBConv-Wider": {"channels": PENDSE_NARROW, "block": "mbconv", "expand_ratio": 8},
            },
        ),
        ModelSpec(
            "unet3d",
            UNet3D,
            INVRES,
            "3-D U-Net baseline (InstanceNorm, LeakyReLU, concatenated skips)",
            reversible=False,
            paper_configs={"iSeg": dict(ISEG_HEAD), "BraTS": {}},
        ),
        ModelSpec(
            "invres_partial",
            invres_partial,
            INVRES,
            "Partially-InvRes: invertible levels, max-pool down, interpolation up, VAE branch",
            reversible=True,
            paper_configs={
                "iSeg": {**ISEG_HEAD, "vae_input_size": [64, 64, 64]},
                "BraTS": {"vae_input_size": [128, 128, 128]},
            },
        ),
        ModelSpec(
            "invres_full",
            FullyInvertibleUNet,
            INVRES,
            "Fully-InvRes: learnable invertible squeeze down/up, channel-split skips, VAE branch",
            reversible=True,
            paper_configs={
                "iSeg": {**ISEG_HEAD, "vae_input_size": [64, 64, 64]},
                "BraTS": {"vae_input_size": [128, 128, 128]},
            },
        ),
    )
}


def available() -> list[str]:
    """Registry names, in the order of the papers."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; a clear error lists the names when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}") from None


def build_model(name: str, **params: Any) -> nn.Module:
    """Build the registry model ``name`` with keyword arguments ``params``.

    A keyword the architecture does not take is an error naming the model and the keyword.
    """
    spec = model_spec(name)
    if "memory_saving" in params and not spec.reversible:
        raise TypeError(f"model {name!r} is not reversible: it has no memory_saving switch (it is its own twin)")
    try:
        return spec.build(**params)
    except TypeError as error:
        raise TypeError(f"model {name!r} rejected parameters {sorted(params)}: {error}") from None


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
