"""The per-epoch training log (``log.csv``), the run summary (``summary.json``) and peak memory.

``log.csv`` columns, in order: ``epoch, steps, train_loss``, one ``loss_<term>`` per loss term
the run produced (``dice, cross_entropy, reconstruction, kl``: each term's *unweighted* mean
over the epoch's optimiser steps; ``train_loss`` is the weighted total), ``grad_norm`` (the
mean global L2 norm of the gradient before clipping, over the steps whose gradients were finite), ``val_dice_<REGION>`` per region/class, ``val_mean_dice``, ``ema_dice`` (empty on epochs without validation), then
``lr`` (the scheduled rate of the epoch; a warm-up scales it down over the first steps), ``epoch_seconds`` (training + validation), ``validation_seconds`` (the validation's share: it predicts as inference does, so
windows and flips cost here too; empty on epochs without validation),
``first_step_seconds`` and ``step_seconds`` (the epoch's first optimiser step, which pays for
warm-up and compilation, and the median of the others: the figure the smoke run reports),
``peak_memory_mib``, ``tensor_peak_mib`` (``measure_memory: true``: the peak of the epoch's training
steps, :mod:`revunet.memory.experiment_peak`; empty otherwise) and ``time`` (ISO wall clock at the end of the epoch).

``peak_memory_mib``: on CUDA ``torch.cuda.max_memory_allocated()`` since the process started
(validation included, as Brügger et al. measured; with ``measure_memory`` the peak is reset before
each training step, so it then covers the epoch's last step and validation); on CPU the process's maximum resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which also counts the Python
interpreter, libraries and data. The summary names which one in ``peak_memory_source``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from revunet.atomic import write_text_atomic

LOSS_TERMS = ("dice", "cross_entropy", "reconstruction", "kl")


def log_columns(regions: Sequence[str], terms: Sequence[str]) -> list[str]:
    """The ``log.csv`` header for a run with these validation regions and loss terms."""
    ordered_terms = [term for term in LOSS_TERMS if term in terms]
    return [
        "epoch",
        "steps",
        "train_loss",
        *(f"loss_{term}" for term in ordered_terms),
        "grad_norm",
        *(f"val_dice_{region}" for region in regions),
        "val_mean_dice",
        "ema_dice",
        "lr",
        "epoch_seconds",
        "validation_seconds",
        "first_step_seconds",
        "step_seconds",
        "peak_memory_mib",
        "tensor_peak_mib",
        "time",
    ]


def write_log(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], regions: Sequence[str]) -> Path:
    """Rewrite ``log.csv`` atomically from all rows so far (missing values are empty cells)."""
    terms = {key.removeprefix("loss_") for row in rows for key in row if key.startswith("loss_")}
    columns = log_columns(regions, sorted(terms))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    return write_text_atomic(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_summary(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically (written last: its existence means the run finished)."""
    return write_text_atomic(path, json.dumps(dict(summary), indent=2) + "\n")


def peak_memory_source(device: torch.device) -> str:
    return "cuda_max_memory_allocated" if device.type == "cuda" else "process_max_rss"


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far in MiB (see the module docstring for what is measured where)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return usage / 2**20 if sys.platform == "darwin" else usage / 2**10


def step_timing(step_seconds: list[float]) -> dict[str, float | None]:
    """log.csv's ``first_step_seconds`` and ``step_seconds``: the first step of an epoch pays for
    warm-up (allocator, cuDNN autotuning, ``torch.compile``), so the typical step is the median
    of the others (the first itself in a one-step epoch)."""
    if not step_seconds:
        return {"first_step_seconds": None, "step_seconds": None}
    return {"first_step_seconds": step_seconds[0], "step_seconds": statistics.median(step_seconds[1:] or step_seconds)}
