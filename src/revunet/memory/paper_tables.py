"""The papers' memory tables, measured at full size with exact tensor accounting.

Each paper table is a list of rows (model, configuration, input size) and a protocol: what
the authors' memory counter saw. Brügger et al. read ``torch.cuda.max_memory_allocated()``
once per epoch and never reset it, so their figure also covers the full-volume validation
pass that follows the training steps; their code (PyTorch 1.x) zeroed gradients instead of
freeing them, so gradients exist during the forward pass. Pendse et al. trained in mixed
precision. Every measurement is one steady-state training step (Adam's state exists) with
batch size 1, in fake tensors: no data and no compute, so any size runs on any machine.

Besides the protocol figure each row reports the training step alone, the non-reversible
twin of reversible rows (the same parameters stored by plain autograd), and, for Brügger's
table, the figure with PyTorch 1.1's GroupNorm (a batch-norm over a reshaped input followed by
a separate affine multiply-add, which stores one more tensor per norm than today's fused
kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn import functional

from revunet.memory.accounting import CATEGORIES, MIB, MemoryReport, measure_training_step
from revunet.memory.explanations import MODULE_COLUMNS, explain, first_feature_map, module_rows
from revunet.memory.floor import Floor, step_floor
from revunet.memory.tracker import LiveTensorTracker
from revunet.models import build_model, model_spec
from revunet.papers import paper_memory_mib, paper_results, paper_row
from revunet.tasks import Task, get_task
from revunet.training.losses import LOSSES

FULL_VOLUME = (160, 192, 160)


@dataclass(frozen=True)
class MemoryRow:
    """One row of a paper's memory table: which model, configured how, on which input."""

    row: str
    model: str
    params: dict[str, Any]
    patch: tuple[int, int, int]


@dataclass(frozen=True)
class MemoryProtocol:
    """What the paper's memory counter covered."""

    task: str  # a name in revunet.tasks.TASKS: what the input channels and the targets are
    loss: str  # a name in revunet.training.losses.LOSSES
    loss_args: tuple[Any, ...] = ()
    validation_size: tuple[int, int, int] | None = None
    autocast: torch.dtype | None = None
    gradients_persist: bool = True
    legacy_group_norm_column: bool = False
    budget_mib: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class MemoryTable:
    name: str
    rows: tuple[MemoryRow, ...]
    protocol: MemoryProtocol


def _config(model: str, label: str) -> dict[str, Any]:
    return dict(model_spec(model).paper_configs[label])


_PENDSE_BUDGET = 14 * 1024.0

# Keyed in the order of revunet.catalog.MEMORY_TABLES (the names `revunet memory --table` offers).
TABLES: dict[str, MemoryTable] = {
    "bruegger2019": MemoryTable(
        "bruegger2019",
        (
            MemoryRow("Baseline", "nonewnet", {}, (128, 128, 128)),
            MemoryRow("Reversible 1/1 128³", "partially_reversible", {}, (128, 128, 128)),
            *(
                MemoryRow(f"Reversible {d}/1 full", "partially_reversible", {"encoder_depth": d}, FULL_VOLUME)
                for d in (1, 2, 3, 4)
            ),
        ),
        MemoryProtocol(
            "brats",
            "bruegger2019",
            validation_size=FULL_VOLUME,
            legacy_group_norm_column=True,
            notes=(
                "max_memory_allocated() since process start: the training step and the full-volume "
                "validation pass (no_grad, labels on the GPU) both count",
                "paper MB are MiB (the authors' code divides by 1024 twice)",
            ),
        ),
    ),
    "invres_iseg": MemoryTable(
        "invres_iseg",
        tuple(
            MemoryRow(row, model, _config(model, "iSeg"), (64, 64, 64))
            for row, model in (
                ("3D U-Net", "unet3d"),
                ("Partially-InvRes", "invres_partial"),
                ("Fully-InvRes", "invres_full"),
            )
        ),
        MemoryProtocol(
            "iseg",
            "invres2020",
            ("softmax",),
            notes=("widths and depths are ours (the paper gives none)", "paper GB read as GiB", "batch size 1 assumed"),
        ),
    ),
    "invres_brats": MemoryTable(
        "invres_brats",
        tuple(
            MemoryRow(row, model, _config(model, "BraTS"), (128, 128, 128))
            for row, model in (
                ("3D U-Net", "unet3d"),
                ("Partially-InvRes", "invres_partial"),
                ("Fully-InvRes", "invres_full"),
            )
        ),
        MemoryProtocol(
            "brats",
            "invres2020",
            ("sigmoid",),
            notes=("widths and depths are ours (the paper gives none)", "paper GB read as GiB", "batch size 1 assumed"),
        ),
    ),
    "pendse2020": MemoryTable(
        "pendse2020",
        (
            MemoryRow(
                "Baseline", "partially_reversible", _config("partially_reversible", "Pendse Baseline"), (256, 256, 160)
            ),
            MemoryRow(
                "MBConv-Base", "partially_reversible", _config("partially_reversible", "MBConv-Base"), (256, 256, 160)
            ),
            MemoryRow(
                "MBConv-Deeper",
                "partially_reversible",
                _config("partially_reversible", "MBConv-Deeper"),
                (128, 128, 128),
            ),
            MemoryRow(
                "MBConv-Wider", "partially_reversible", _config("partially_reversible", "MBConv-Wider"), (128, 128, 128)
            ),
        ),
        MemoryProtocol(
            "brats",
            "pendse2020",
            autocast=torch.float16,
            budget_mib=_PENDSE_BUDGET,
            notes=(
                "the paper sized all four configurations to a constant 14 GB per GPU (data parallel, batch 1 per GPU)",
                "mixed precision: float16 autocast",
                "encoder and decoder depth 1 assumed",
            ),
        ),
    ),
}


class LegacyGroupNorm(nn.GroupNorm):
    """GroupNorm computed as PyTorch 1.1 did: batch-norm on a reshaped view, then multiply and add.

    Same values; autograd stores the normalised tensor for the affine multiply, one tensor
    more per norm than the fused kernel of PyTorch >= 1.3. Used only to reproduce the memory
    counters of papers trained with those versions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        normalised = functional.batch_norm(
            x.reshape(1, n * self.num_groups, -1), None, None, training=True, eps=self.eps
        ).view_as(x)
        shape = (1, c) + (1,) * (x.dim() - 2)
        return normalised.mul(self.weight.view(shape)).add(self.bias.view(shape))


def with_legacy_group_norm(model: nn.Module) -> nn.Module:
    """Replace every GroupNorm of ``model`` in place by :class:`LegacyGroupNorm` (parameters kept)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.GroupNorm:
                legacy = LegacyGroupNorm.__new__(LegacyGroupNorm)
                legacy.__dict__ = child.__dict__  # same parameters, same configuration
                setattr(module, name, legacy)
    return model


def _validation_pass(size: tuple[int, int, int], task: Task) -> Callable[[nn.Module, LiveTensorTracker], None]:
    """A full-volume inference with its labels on the device, as Brügger et al.'s validation ran."""

    def run(net: nn.Module, tracker: LiveTensorTracker) -> None:
        net.eval()
        with torch.no_grad():
            image = torch.randn(1, task.in_channels, *size)
            labels = torch.rand(1, task.out_channels, *size)
            output = net(image)
            logits = output.logits if hasattr(output, "logits") else output
            probabilities = torch.sigmoid(logits) if task.output == "sigmoid" else torch.softmax(logits, dim=1)
            del image, labels, output, logits, probabilities
        net.train()

    return run


def measure_row(
    table: MemoryTable,
    row: MemoryRow,
    mode: str = "fake",
    memory_saving: bool = True,
    legacy_group_norm: bool = False,
    include_validation: bool = True,
) -> MemoryReport:
    """Peak memory of one row under its table's protocol."""
    model, step = _row_step(table, row, memory_saving, legacy_group_norm, include_validation)
    return measure_training_step(
        model,
        mode=mode,
        gradients_persist=table.protocol.gradients_persist,
        extra=step.pop("validation"),
        **step,
    )


def row_floor(table: MemoryTable, row: MemoryRow, include_validation: bool = True) -> Floor:
    """The memory floor of one row's training step (and validation pass): :mod:`revunet.memory.floor`."""
    model, step = _row_step(table, row, True, False, include_validation)
    return step_floor(model, gradients_persist=table.protocol.gradients_persist, **step)


def _row_step(
    table: MemoryTable, row: MemoryRow, memory_saving: bool, legacy_group_norm: bool, include_validation: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The row's model (on the meta device) and the training step's arguments under the table's protocol."""
    protocol = table.protocol
    params = dict(row.params)
    if model_spec(row.model).reversible:
        params["memory_saving"] = memory_saving
    with torch.device("meta"):
        model = build_model(row.model, **params)
    if legacy_group_norm:
        with_legacy_group_norm(model)
    task = get_task(protocol.task)
    # The targets the loss gets from a batch of one label map: their shape and dtype (meta: no memory).
    target = task.targets(torch.zeros((1, *row.patch), dtype=torch.uint8, device="meta"))
    validation = None
    if include_validation and protocol.validation_size is not None:
        validation = _validation_pass(protocol.validation_size, task)
    return model, {
        "input_shape": (1, task.in_channels, *row.patch),
        "loss_fn": LOSSES[protocol.loss](*protocol.loss_args),
        "target_shape": target.shape,
        "target_dtype": target.dtype,
        "autocast_dtype": protocol.autocast,
        "loss_needs_input": True,
        "validation": validation,
    }


def _floor_columns(table: MemoryTable, row: MemoryRow, report: MemoryReport) -> dict[str, Any]:
    """The row's floor, the measured peak over it, and what the floor's largest operation is."""
    floor = row_floor(table, row)
    return {
        "floor_mb": _mib(floor.total),
        "measured_vs_floor": round(report.peak_bytes / floor.total, 3),
        "floor_largest": floor.largest_op_name,
    }


def _mib(value: float) -> float:
    return round(value / MIB, 1)


def memory_table(name: str, mode: str = "fake") -> pd.DataFrame:
    """Measure every row of paper table ``name``; one DataFrame row per paper row."""
    return measure_table(name, mode)[0]


def measure_table(name: str, mode: str = "fake") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table (one row per paper row) and its attribution (``row, module, phase, mib``).

    The attribution lists, for every phase of every row, the bytes live at that phase's peak
    per owner (module paths collapsed to two components, see :mod:`revunet.memory.attribution`);
    the rows of the peak phase add up to ``measured_mb``.
    """
    if name not in TABLES:
        raise KeyError(f"unknown memory table {name!r}; known: {', '.join(TABLES)}")
    table = TABLES[name]
    protocol = table.protocol
    paper = paper_results()[name]
    records = []
    attributed: list[dict[str, Any]] = []
    for row in table.rows:
        report = measure_row(table, row, mode)
        attributed += module_rows(row.row, report)
        paper_mib = paper_memory_mib(name, row.row)
        record: dict[str, Any] = {
            "table": name,
            "row": row.row,
            "model": row.model,
            "kwargs": row.params,
            "input_shape": "x".join(str(s) for s in row.patch),
            "paper_value": paper_row(name, row.row)["memory"],
            "paper_unit": paper["memory_unit"],
            "paper_mb": round(paper_mib, 1),
            "measured_mb": _mib(report.peak_bytes),
            "ratio": round(report.peak_bytes / MIB / paper_mib, 3),
            "peak_phase": "validation" if report.peak_phase == "extra" else report.peak_phase,
        }
        record.update(_floor_columns(table, row, report))
        for category in CATEGORIES:
            record[f"{category}_mb"] = _mib(report.breakdown.get(category, 0))
        if report.allocator_peak_bytes is not None:
            record["allocator_mb"] = _mib(report.allocator_peak_bytes)
            record["allocator_vs_tracked"] = round(report.allocator_peak_bytes / report.peak_bytes, 3)
        if protocol.validation_size is not None:
            record["training_step_mb"] = _mib(report.peak_without("extra"))
            record["validation_mb"] = _mib(report.phase_peaks.get("extra", 0))
        if protocol.legacy_group_norm_column:
            legacy = measure_row(table, row, mode, legacy_group_norm=True).peak_bytes
            record["legacy_group_norm_mb"] = _mib(legacy)
            record["legacy_ratio"] = round(legacy / MIB / paper_mib, 3)
        if model_spec(row.model).reversible:
            twin = measure_row(table, row, mode, memory_saving=False)
            record["twin_mb"] = _mib(twin.peak_bytes)
            record["twin_activations_mb"] = _mib(twin.breakdown["activations"])
        if protocol.budget_mib is not None:
            record["budget_mb"] = protocol.budget_mib
            record["fits_budget"] = bool(report.peak_bytes / MIB <= protocol.budget_mib)
        record["within_10pct"] = bool(abs(record["ratio"] - 1) <= 0.10)
        record["protocol"] = "; ".join(protocol.notes)
        record["explanation"] = explain(record, first_feature_map(row.model, row.params, row.patch), report)
        records.append(record)
    frame = pd.DataFrame(records)
    frame["kwargs"] = frame["kwargs"].map(lambda p: ", ".join(f"{k}={v}" for k, v in p.items()) or "defaults")
    return frame, pd.DataFrame(attributed, columns=list(MODULE_COLUMNS))
