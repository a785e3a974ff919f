"""Where a measured peak goes, in words and in rows: the memory tables' explanation column and
their ``_modules`` attribution.

The sentences are generated from the measurement (categories and the modules that created
the live activations, :mod:`revunet.memory.attribution`), so they stay true when a model
changes; nothing here is written by hand per row.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from revunet.memory.accounting import CATEGORIES, MIB, MemoryReport
from revunet.memory.attribution import ROOT, grouped
from revunet.models import build_model

MODULE_COLUMNS = ("row", "module", "phase", "mib")
MODULE_DEPTH = 2  # encoder.0, vae.up, head.conv: the level a paper's design talks about
PHASE_NAMES = {"extra": "validation"}  # the protocol's extra pass is the validation pass

# What an owner is, by its first path component, for the sentences of the explanation column.
ROLES = {
    ROOT: "the network's own forward: skip tensors, pooling, concatenations, interpolation, a memory-saving node it applies",
    "vae": "VAE branch",
    "encoder": "encoder level",
    "decoder": "decoder level",
    "fuse": "skip-fusion convolution",
    "up": "upsampling",
    "down": "downsampling",
    "stem": "stem convolution",
    "head": "segmentation head",
    "loss": "the loss terms",
    "autograd": "autograd's own buffers",
    "optimizer": "the optimizer step's temporaries",
    "validation": "the validation pass's image and outputs",
    "inputs": "the batch",
}


def module_rows(row: str, report: MemoryReport, depth: int = MODULE_DEPTH) -> list[dict[str, Any]]:
    """``row, module, phase, mib`` for every owner at every phase's peak of one measurement."""
    return [
        {"row": row, "module": owner, "phase": PHASE_NAMES.get(phase, phase), "mib": round(nbytes / MIB, 3)}
        for phase, owners in report.modules.items()
        for owner, nbytes in grouped(owners, depth).items()
    ]


def top_modules(report: MemoryReport, count: int = 5, depth: int = MODULE_DEPTH) -> list[tuple[str, int]]:
    """The ``count`` largest activation owners at the peak (categories such as parameters left out)."""
    owners = {k: v for k, v in report.peak_modules.items() if k not in CATEGORIES}
    return list(grouped(owners, depth).items())[:count]


def dominant_modules(report: MemoryReport, count: int = 3) -> str:
    """``vae.up 225 MiB (39 %, VAE branch), ...``: the modules that hold most of the peak."""
    parts = []
    for owner, nbytes in top_modules(report, count):
        role = ROLES.get(owner.split(".")[0], "")
        share = 100 * nbytes / report.peak_bytes
        parts.append(f"{owner} {nbytes / MIB:.0f} MiB ({share:.0f} %{', ' + role if role else ''})")
    return "; ".join(parts)


def first_feature_map(model: str, params: dict[str, Any], patch: tuple[int, int, int]) -> tuple[int, float]:
    """Width and MiB of the model's first convolution's output at ``patch``: the unit of activation memory."""
    with torch.device("meta"):
        net = build_model(model, **params)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
    voxels = patch[0] * patch[1] * patch[2]
    return first.out_channels, first.out_channels * voxels * 4 / MIB


def explain(record: dict[str, Any], unit_map: tuple[int, float], report: MemoryReport) -> str:
    """Where the measured peak goes and, outside ±10 % of the paper, the gap and who dominates it."""
    width, unit = unit_map
    activations = record["activations_mb"]
    fixed = record["parameters_mb"] + record["gradients_mb"] + record["optimizer_state_mb"]
    text = (
        f"peak during {record['peak_phase']}: activations {activations:.0f} MiB "
        f"({activations / unit:.1f} maps of {width} channels at {record['input_shape']}, {unit:.0f} MiB each), "
        f"parameters+gradients+Adam {fixed:.0f} MiB, inputs {record['inputs_mb']:.0f} MiB"
    )
    if record["within_10pct"]:
        return text
    gap = record["paper_mb"] - record["measured_mb"]
    text += f"; the paper reports {abs(gap):.0f} MiB {'more' if gap > 0 else 'less'} ({abs(gap) / unit:.1f} such maps)"
    text += f"; the largest owners of the peak: {dominant_modules(report)}"
    if "legacy_group_norm_mb" in record:
        text += f"; with PyTorch 1.1's GroupNorm it measures {record['legacy_group_norm_mb']:.0f} MiB"
    if gap > 0:
        text += (
            "; allocations that exact tensor accounting cannot see (cuDNN workspaces, the caching "
            "allocator's rounding and fragmentation of the authors' setup) are not modelled"
        )
    return text
