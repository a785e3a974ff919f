"""Activation memory against depth, measured: naive O(L), checkpointing O(√L), invertible O(1)?

Table 1 of the invertible-residual paper asserts how the activation memory of a chain of L
blocks grows when it is stored naively, with gradient checkpointing and invertibly. This
module measures it for one chain of additive couplings (F, G = GroupNorm -> LeakyReLU ->
Conv3d 3x3x3 on C/2 channels, :func:`revunet.models.blocks.residual_coupling_sequence`)
stored three ways, with exactly the same parameters:

``naive``
    ``memory_saving=False``: plain autograd keeps every block's intermediate tensors;
``checkpointing``
    the same blocks under ``torch.utils.checkpoint.checkpoint_sequential`` with round(√L)
    segments (non-reentrant): only segment inputs are kept, and one segment is recomputed at
    a time in backward. PyTorch runs the last segment without checkpointing, so L = 1, 2
    (one segment) equal the naive chain;
``reversible``
    ``memory_saving=True``: the chain's output only, every input rebuilt in backward.

The figure is the activation part of the peak of one training step (Adam, sum of outputs
as the loss), measured in fake mode (exact tensor accounting, no memory used), and the growth
exponent is the least-squares slope of log(activations) against log(L) over L >= 4.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from revunet.atomic import write_bytes_atomic
from revunet.memory.accounting import MIB, measure_training_step
from revunet.models.blocks import residual_coupling_sequence

METHODS = ("naive", "checkpointing", "reversible")
CLAIMED = {"naive": ("O(L)", 1.0), "checkpointing": ("O(sqrt L)", 0.5), "reversible": ("O(1)", 0.0)}
DEFAULT_DEPTHS = (1, 2, 4, 8, 16, 32)
FIT_FROM_DEPTH = 4  # below this the constant terms dominate every method


class CheckpointedSequence(nn.Module):
    """A chain of blocks run under ``checkpoint_sequential`` with a given number of segments."""

    def __init__(self, blocks: Iterable[nn.Module], segments: int) -> None:
        super().__init__()
        if segments < 1:
            raise ValueError(f"checkpointing needs at least one segment, got {segments}")
        self.blocks = nn.ModuleList(blocks)
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_sequential(self.blocks, self.segments, x, use_reentrant=False)


def sqrt_segments(depth: int) -> int:
    """round(√L) segments: the choice that makes checkpointing's memory grow as √L."""
    return max(1, round(math.sqrt(depth)))


def build_chain(method: str, depth: int, channels: int, groups: int) -> nn.Module:
    """The coupling chain of ``depth`` blocks stored as ``method`` says (built on the meta device)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    with torch.device("meta"):
        chain = residual_coupling_sequence(channels, depth, groups, memory_saving=method == "reversible")
    if method == "checkpointing":
        return CheckpointedSequence(chain.blocks, sqrt_segments(depth))
    return chain


def growth_exponent(depths: Sequence[int], values: Sequence[float], from_depth: int = FIT_FROM_DEPTH) -> float:
    """Least-squares slope of log(value) against log(depth) over depths >= ``from_depth``."""
    points = [(math.log(d), math.log(v)) for d, v in zip(depths, values) if d >= from_depth and v > 0]
    if len(points) < 2:
        raise ValueError(f"a growth exponent needs at least two depths >= {from_depth}, got {list(depths)}")
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def complexity_table(
    depths: Sequence[int] = DEFAULT_DEPTHS,
    channels: int = 60,
    size: int = 64,
    groups: int = 30,
    methods: Sequence[str] = METHODS,
    mode: str = "fake",
) -> pd.DataFrame:
    """Peak and activation memory of one training step per depth and method, with each method's growth exponent."""
    depths = sorted({int(d) for d in depths})
    if not depths or depths[0] < 1:
        raise ValueError(f"depths must be positive integers, got {list(depths)}")
    rows = []
    for method in methods:
        for depth in depths:
            report = measure_training_step(
                build_chain(method, depth, channels, groups), (1, channels, size, size, size), mode=mode
            )
            rows.append(
                {
                    "depth": depth,
                    "method": method,
                    "segments": sqrt_segments(depth) if method == "checkpointing" else None,
                    "peak_mb": round(report.peak_bytes / MIB, 3),
                    "activations_mb": round(report.breakdown["activations"] / MIB, 3),
                    "peak_phase": report.peak_phase,
                }
            )
    table = pd.DataFrame(rows)
    table["segments"] = table["segments"].astype("Int64")  # empty where the method has no segments
    exponents = {
        method: growth_exponent(list(group["depth"]), list(group["activations_mb"]))
        for method, group in table.groupby("method", sort=False)
    }
    table["growth_exponent"] = table["method"].map(lambda m: round(exponents[m], 3))
    table["claimed"] = table["method"].map(lambda m: CLAIMED[m][0])
    table["claimed_exponent"] = table["method"].map(lambda m: CLAIMED[m][1])
    table["channels"], table["input"] = channels, f"{size}^3"
    return table


def plot(table: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    """Activation MiB against depth on log-log axes, with reference slopes 1, 0.5 and 0; writes PNG and PDF.

    Each reference line starts at its method's value at the first fitted depth, so a method
    following its claimed order runs parallel to its line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    target = Path(path)
    if target.suffix not in (".png", ".pdf"):
        raise ValueError(f"the figure path must end in .png or .pdf, got {str(path)!r}")
    figure = Figure(figsize=(5.5, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {"naive": "tab:red", "checkpointing": "tab:orange", "reversible": "tab:blue"}
    for method, group in table.sort_values("depth", kind="stable").groupby("method", sort=False):
        depths, values = group["depth"].to_numpy(float), group["activations_mb"].to_numpy(float)
        slope = group["growth_exponent"].iloc[0]
        axes.plot(depths, values, "o-", color=colours.get(method), label=f"{method} (fitted slope {slope:.2f})")
        claimed, exponent = CLAIMED[method]
        start = np.searchsorted(depths, FIT_FROM_DEPTH)
        if start < len(depths):
            anchor_depth, anchor = depths[start], values[start]
            reference = anchor * (depths[start:] / anchor_depth) ** exponent
            axes.plot(depths[start:], reference, "--", color="grey", linewidth=0.9)
            axes.annotate(
                f"slope {exponent:g}: {claimed}",
                (depths[-1], reference[-1]),
                textcoords="offset points",
                xytext=(4, 0),
                fontsize=7,
                color="grey",
                va="center",
            )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.tick_params(axis="y", which="both", labelsize=7)
    axes.set_xlabel("depth L (coupling blocks)")
    axes.set_ylabel("activation memory at the peak (MiB)")
    channels, size = table["channels"].iloc[0], table["input"].iloc[0]
    axes.set_title(f"One training step, C={channels}, input {size}", fontsize=9)
    axes.legend(fontsize=7, loc="upper left")
    axes.set_xlim(right=float(table["depth"].max()) * 2.2)
    figure.tight_layout()
    written = []
    for suffix in (".png", ".pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix[1:], dpi=150)
        written.append(write_bytes_atomic(target.with_suffix(suffix), buffer.getvalue()))
    return written
