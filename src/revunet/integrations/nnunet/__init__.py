"""revunet's reversible networks as nnU-Net v2 architectures (the optional extra ``nnunet``).

A plans file names a network by its import path; nnU-Net's ``get_network_from_plans`` builds it
with ``input_channels``, ``num_classes``, ``deep_supervision`` and the plans' ``arch_kwargs``:

* ``revunet.integrations.nnunet.ReversibleResEncUNet``: nnU-Net's residual-encoder U-Net with
  each stage's shape-keeping blocks as one reversible sequence (the same plans kwargs);
* ``revunet.integrations.nnunet.PartiallyReversibleNNUNet``: the papers' partially reversible
  U-Net on the plans' topology.

``revunet nnunet-plans`` writes a plans file that uses them, sized by exact memory accounting;
``revunet nnunet-dataset`` (:mod:`~revunet.integrations.nnunet.raw`, no nnU-Net needed) writes a
BraTS dataset in nnU-Net's raw format. The networks are imported on first use, so that the
converter works without the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_NETWORKS = {
    "ReversibleResEncUNet": "revunet.integrations.nnunet.resenc",
    "PartiallyReversibleNNUNet": "revunet.integrations.nnunet.partially_reversible",
}
INSTALL = 'install the extra with `pip install -c constraints.txt -e ".[nnunet]"`'

__all__ = sorted(_NETWORKS)


def __getattr__(name: str) -> Any:
    """The network classes, imported when first named (they need nnU-Net's network library)."""
    if name not in _NETWORKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_NETWORKS[name])
    except ImportError as missing:
        raise ImportError(f"{name} needs nnU-Net v2 ({missing.name} is not installed); {INSTALL}") from missing
    return getattr(module, name)
