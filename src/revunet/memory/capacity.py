"""What fits in a memory budget: the largest input, depth and width of each reversible model and its twin.

Pendse et al. summarise reversibility as "at a fixed memory budget, volumes up to 3x larger,
25 % more depth or 2x the channels of a corresponding non-reversible network". This module
measures the three quantities for each reversible model of the registry and for its
non-reversible twin (``memory_saving=False``: the same parameters, stored by plain autograd),
under the training protocol of the model's memory table (:mod:`revunet.memory.paper_tables`:
its loss, targets, mixed precision and persistent gradients; Adam, batch 1, no validation
pass), with fake tensors so that any size is measured on any machine.

The three searches, each over a grid of valid values:

``volume``
    the largest cubic input S³ (S a multiple of what the network and its VAE branch need) at
    encoder depth 1 and the paper widths; S ≤ 512;
``depth``
    the largest ``encoder_depth`` (coupling blocks per encoder sequence) at a fixed input; ≤ 64;
``width``
    the largest channel multiplier m = k/8 (k = 1..64, so m ≤ 8) applied to every width at a
    fixed input, each width rounded to the nearest multiple of its level's quantum (2: couplings
    split channels in halves, GroupNorm takes ``gcd(groups, width)`` groups and stays valid;
    8 below the top level of Fully-InvRes, whose squeeze multiplies channels by 8).

A fake measurement of a full-size U-Net costs about a second, so the search does not bisect:
peak memory is very nearly affine in the number of voxels, in the depth and in the width, and
:func:`revunet.memory.grid_search.largest_fitting` follows the line through two measurements
to the boundary. Typically 3-4 measurements per search.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from revunet.memory.accounting import MIB, MemoryReport
from revunet.memory.grid_search import CapacityError, largest_fitting
from revunet.memory.paper_tables import TABLES, MemoryRow, measure_row, row_floor

GIB = 2**30
DIMENSIONS = ("volume", "depth", "width")
MAX_SIZE = 512
MAX_DEPTH = 64
WIDTH_STEPS = 8  # the multiplier moves in steps of 1/8
MAX_MULTIPLIER = 8
DEFAULT_BUDGET_GIB = 16.0
DEFAULT_FIXED_SIZE = 128
RATIO_OF = {"volume": "voxels", "depth": "encoder depth", "width": "channel multiplier"}
CLAIM_KEYS = {"volume": "larger_volume", "depth": "more_depth", "width": "more_channels"}


@dataclass(frozen=True)
class CapacityModel:
    """A reversible model configuration whose capacity is searched.

    Args:
        key: short name (``--models``).
        model: registry name (must be reversible: its twin is ``memory_saving=False``).
        config: the paper configuration it stands for.
        table: the :data:`revunet.memory.paper_tables.TABLES` entry whose protocol is used.
        channels: the configuration's widths, top level first (multiplier 1).
        params: other keyword arguments of the model.
        width_quanta: rounding quantum of each level's width when the multiplier changes.
        vae: the model has a VAE branch, built for the input size (``vae_input_size``).
    """

    key: str
    model: str
    config: str
    table: str
    channels: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    width_quanta: tuple[int, ...] = ()
    vae: bool = False

    def __post_init__(self) -> None:
        quanta = self.width_quanta or (2,) * len(self.channels)
        if len(quanta) != len(self.channels):
            raise ValueError(f"{self.key}: width_quanta {quanta} needs one quantum per level of {self.channels}")
        bad = [(w, q) for w, q in zip(self.channels, quanta) if w % q]
        if bad:
            raise ValueError(f"{self.key}: widths must be multiples of their quanta at multiplier 1, got {bad}")
        object.__setattr__(self, "width_quanta", tuple(quanta))

    def widths(self, k: int) -> tuple[int, ...]:
        """The widths at multiplier ``k / WIDTH_STEPS`` (k = WIDTH_STEPS gives ``channels``)."""
        return tuple(
            max(q, math.floor(w * k / (WIDTH_STEPS * q) + 0.5) * q) for w, q in zip(self.channels, self.width_quanta)
        )

    def build_params(self, size: int, depth: int = 1, k: int = WIDTH_STEPS) -> dict[str, Any]:
        """Keyword arguments of the model at one grid point (``memory_saving`` is added by the measurement)."""
        params = {**self.params, "channels": list(self.widths(k)), "encoder_depth": depth}
        if self.vae:
            params["vae_input_size"] = [size, size, size]
        return params

    def size_multiple(self) -> int:
        """What every spatial size must be divisible by: the U-Net's halvings, and one more for a VAE branch."""
        import torch

        from revunet.models import build_model
        from revunet.models.sizing import size_multiple

        params = self.build_params(0)
        if self.vae:
            params["vae_input_size"] = None  # the branch's own condition is added below
        with torch.device("meta"):
            model = build_model(self.model, **params)
        multiple = size_multiple(model)
        return 2 * multiple if self.vae else multiple


CAPACITY_MODELS: dict[str, CapacityModel] = {
    spec.key: spec
    for spec in (
        CapacityModel("bruegger", "partially_reversible", "Reversible 1/1", "bruegger2019", (60, 120, 240, 360, 480)),
        CapacityModel(
            "mbconv-base",
            "partially_reversible",
            "MBConv-Base",
            "pendse2020",
            (30, 60, 120, 180, 240),
            {"block": "mbconv", "expand_ratio": 2},
        ),
        CapacityModel("invres_partial", "invres_partial", "BraTS", "invres_brats", (36, 72, 144, 288), vae=True),
        CapacityModel(
            "invres_full",
            "invres_full",
            "BraTS",
            "invres_brats",
            (36, 72, 144, 288),
            width_quanta=(2, 8, 8, 8),
            vae=True,
        ),
    )
}


def measure_point(
    spec: CapacityModel, memory_saving: bool, size: int, depth: int = 1, k: int = WIDTH_STEPS
) -> MemoryReport:
    """One training step of ``spec`` (or its twin) at input size³, encoder depth and multiplier k/8."""
    row = _point_row(spec, size, depth, k)
    return measure_row(TABLES[spec.table], row, mode="fake", memory_saving=memory_saving, include_validation=False)


def floor_point(spec: CapacityModel, size: int, depth: int = 1, k: int = WIDTH_STEPS) -> int:
    """The floor (:mod:`revunet.memory.floor`) of the reversible model's step at one point, in bytes."""
    return row_floor(TABLES[spec.table], _point_row(spec, size, depth, k), include_validation=False).total


def _point_row(spec: CapacityModel, size: int, depth: int, k: int) -> MemoryRow:
    """The memory-table row of ``spec`` at input size³, encoder depth and multiplier k/8."""
    return MemoryRow(spec.config, spec.model, spec.build_params(size, depth, k), (size, size, size))


def _fixed_and_scaling(report: MemoryReport) -> tuple[float, float]:
    """The peak's parts that do not grow with the input (weights, their gradients, Adam) and that do."""
    fixed = sum(report.breakdown[c] for c in ("parameters", "buffers", "gradients", "optimizer_state"))
    return float(fixed), float(report.peak_bytes - fixed)


def predicted_size_factor(report: MemoryReport, budget_bytes: float) -> float:
    """Edge-length factor at which ``report``'s peak would reach the budget, if only its data part grew with the voxels."""
    fixed, scaling = _fixed_and_scaling(report)
    if scaling <= 0 or budget_bytes <= fixed:
        return 0.0
    return ((budget_bytes - fixed) / scaling) ** (1 / 3)


def predicted_width_factor(report: MemoryReport, budget_bytes: float) -> float:
    """Width multiplier at which the peak would reach the budget: weights grow with m², data with m."""
    fixed, scaling = _fixed_and_scaling(report)
    if fixed <= 0:
        return budget_bytes / scaling if scaling > 0 else 0.0
    return (-scaling + math.sqrt(scaling**2 + 4 * fixed * budget_bytes)) / (2 * fixed)


@dataclass(frozen=True)
class _Search:
    """One dimension's search: grid ``[lo, hi]``, the point (input edge, depth, multiplier) and feature of an
    index, first hints, the value it stands for."""

    point: Callable[[int], tuple[int, ...]]
    lo: int
    hi: int
    feature: Callable[[int], float]
    hints: Callable[[], list[int]]
    value: Callable[[int], float]
    start: str  # the smallest point searched, for the error message


def search_model(
    spec: CapacityModel,
    memory_saving: bool,
    budget_gib: float = DEFAULT_BUDGET_GIB,
    fixed_size: int = DEFAULT_FIXED_SIZE,
    dimensions: Sequence[str] = DIMENSIONS,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
    max_multiplier: int = MAX_MULTIPLIER,
) -> dict[str, dict[str, Any]]:
    """The searches for one model variant, sharing the measurement at the fixed input.

    The first prediction of the volume and width searches comes from that one measurement:
    its weights, gradients and Adam state do not depend on the input (the rest grows with
    the voxels) and grow with the square of the width (the rest linearly). The depth search
    starts from depths 1 and 2. Returns, per dimension, the value found, its measured peak,
    the peak of the next grid value (the proof that it does not fit), whether the range's cap
    was reached, and the cost.
    """
    multiple = spec.size_multiple()
    if fixed_size <= 0 or fixed_size % multiple:
        raise ValueError(f"{spec.key}: the fixed input size {fixed_size} is not a positive multiple of {multiple}")
    budget = budget_gib * GIB
    cache: dict[tuple[int, int, int], MemoryReport] = {}

    def at(size: int, depth: int = 1, k: int = WIDTH_STEPS) -> MemoryReport:
        if (size, depth, k) not in cache:
            cache[(size, depth, k)] = measure_point(spec, memory_saving, size, depth, k)
        return cache[(size, depth, k)]

    def peaks(point: Callable[[int], tuple[int, ...]]) -> Callable[[int], int]:
        return lambda index: at(*point(index)).peak_bytes

    searches = _searches(spec, at, multiple, budget, fixed_size, max_size, max_depth, max_multiplier)
    results: dict[str, dict[str, Any]] = {}
    for dimension in dimensions:
        search = searches[dimension]
        started, before = time.perf_counter(), len(cache)
        try:
            found = largest_fitting(peaks(search.point), search.lo, search.hi, budget, search.feature, search.hints())
        except CapacityError as error:
            variant = "reversible" if memory_saving else "twin"
            raise CapacityError(
                f"{spec.key} ({variant}): a budget of {budget_gib:g} GiB is too small for the {dimension} search: "
                f"{error} ({search.start}); raise --budget-gib"
                + ("" if dimension == "volume" else " or lower --fixed-size")
            ) from None
        results[dimension] = {
            "value": search.value(found.index),
            "peak_bytes": found.peak_bytes,
            "next_peak_bytes": found.next_peak_bytes,
            "capped": found.capped,
            "measurements": len(cache) - before,
            "seconds": time.perf_counter() - started,
            "widths": spec.widths(found.index) if dimension == "width" else None,
            "floor_bytes": floor_point(spec, *search.point(found.index)) if memory_saving else None,
        }
    return results


def _searches(
    spec: CapacityModel,
    at: Callable[..., MemoryReport],
    multiple: int,
    budget: float,
    fixed_size: int,
    max_size: int,
    max_depth: int,
    max_multiplier: int,
) -> dict[str, _Search]:
    """The three searches over the grid: input edge / ``multiple``, encoder depth, multiplier * WIDTH_STEPS."""
    base_widths = sum(spec.channels)
    reference = fixed_size // multiple
    return {
        "volume": _Search(
            lambda i: (i * multiple,),
            1,
            max_size // multiple,
            lambda i: float(i * multiple) ** 3,
            lambda: [reference, int(reference * predicted_size_factor(at(fixed_size), budget))],
            lambda i: i * multiple,
            f"{multiple}^3 input",
        ),
        "depth": _Search(
            lambda d: (fixed_size, d),
            1,
            max_depth,
            float,
            lambda: [1, 2],
            lambda d: d,
            f"encoder depth 1 at {fixed_size}^3",
        ),
        "width": _Search(
            lambda k: (fixed_size, 1, k),
            1,
            max_multiplier * WIDTH_STEPS,
            lambda k: sum(spec.widths(k)) / base_widths,  # the multiplier after rounding
            lambda: [WIDTH_STEPS, int(WIDTH_STEPS * predicted_width_factor(at(fixed_size), budget))],
            lambda k: k / WIDTH_STEPS,
            f"multiplier 1/{WIDTH_STEPS} at {fixed_size}^3",
        ),
    }


_SearchArgs = tuple[CapacityModel, bool, float, int, tuple[str, ...], int, int, int]


def _search_job(args: _SearchArgs) -> dict[str, dict[str, Any]]:
    spec, memory_saving, budget_gib, fixed_size, dimensions, max_size, max_depth, max_multiplier = args
    return search_model(spec, memory_saving, budget_gib, fixed_size, dimensions, max_size, max_depth, max_multiplier)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # fake measurements are single-threaded Python; the jobs share the cores


def capacity_table(
    specs: Sequence[CapacityModel] | None = None,
    budget_gib: float = DEFAULT_BUDGET_GIB,
    fixed_size: int = DEFAULT_FIXED_SIZE,
    dimensions: Sequence[str] = DIMENSIONS,
    jobs: int | None = None,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
    max_multiplier: int = MAX_MULTIPLIER,
) -> pd.DataFrame:
    """One row per model and dimension: reversible value, twin value, their ratio and Pendse et al.'s claim.

    ``jobs`` processes search in parallel (default: the usable cores, at most the number of
    model variants); 1 runs in this process.
    """
    from revunet.papers import paper_results

    specs = list(CAPACITY_MODELS.values()) if specs is None else list(specs)
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimensions {unknown}; choose from {DIMENSIONS}")
    if budget_gib <= 0:
        raise ValueError(f"the budget must be positive, got {budget_gib} GiB")
    claims = paper_results()["pendse2020"]["claims"]
    # Longest first, so that the last job to finish is a short one: reversible variants (their
    # depth search ends with a measurement at the cap), then by the number of modules.
    ordered = sorted(specs, key=_module_count, reverse=True)
    tasks = [
        (spec, saving, budget_gib, fixed_size, tuple(dimensions), max_size, max_depth, max_multiplier)
        for saving in (True, False)
        for spec in ordered
    ]
    found = _run_jobs(tasks, min(len(tasks), jobs or usable_cores()))
    by_variant = {(task[0].key, task[1]): result for task, result in zip(tasks, found)}
    rows = []
    for spec in specs:
        reversible, twin = by_variant[(spec.key, True)], by_variant[(spec.key, False)]
        for dimension in dimensions:
            claim = float(claims[CLAIM_KEYS[dimension]])
            rows.append(_row(spec, dimension, reversible[dimension], twin[dimension], claim, fixed_size, budget_gib))
    return pd.DataFrame(rows)


def _run_jobs(tasks: list[_SearchArgs], jobs: int) -> list[dict[str, dict[str, Any]]]:
    """The searches of ``tasks``, in order: here for one job, in a process pool otherwise."""
    if jobs <= 1:
        return [_search_job(task) for task in tasks]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
        return list(pool.map(_search_job, tasks))


def _row(
    spec: CapacityModel,
    dimension: str,
    rev: dict[str, Any],
    tw: dict[str, Any],
    claim: float,
    fixed_size: int,
    budget_gib: float,
) -> dict[str, Any]:
    """The table row of one model and dimension from its reversible and twin search results."""
    ratio = rev["value"] / tw["value"]
    if dimension == "volume":
        ratio = ratio**3
    # A capped reversible value makes the ratio a lower bound, a capped twin an upper one.
    if ratio >= claim:
        meets: bool | None = None if tw["capped"] else True
    else:
        meets = None if rev["capped"] else False
    return {
        "model": spec.model,
        "config": spec.config,
        "key": spec.key,
        "dimension": dimension,
        "fixed_input": "" if dimension == "volume" else f"{fixed_size}^3",
        "reversible_value": rev["value"],
        "twin_value": tw["value"],
        "ratio": round(ratio, 3),
        "ratio_of": RATIO_OF[dimension],
        "paper_claim": claim,
        "meets_claim": meets,
        "budget_gib": budget_gib,
        "reversible_peak_mib": round(rev["peak_bytes"] / MIB, 1),
        "reversible_floor_mib": round(rev["floor_bytes"] / MIB, 1),
        "reversible_vs_floor": round(rev["peak_bytes"] / rev["floor_bytes"], 3),
        "twin_peak_mib": round(tw["peak_bytes"] / MIB, 1),
        "reversible_next_peak_mib": _mib_or_none(rev["next_peak_bytes"]),
        "twin_next_peak_mib": _mib_or_none(tw["next_peak_bytes"]),
        "reversible_capped": rev["capped"],
        "twin_capped": tw["capped"],
        "reversible_widths": _widths(rev["widths"]),
        "twin_widths": _widths(tw["widths"]),
        "protocol": spec.table,
        "measurements": rev["measurements"] + tw["measurements"],
    }


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _module_count(spec: CapacityModel) -> int:
    import torch

    from revunet.models import build_model

    params = spec.build_params(0)
    params.pop("vae_input_size", None)
    with torch.device("meta"):
        return sum(1 for _ in build_model(spec.model, **params).modules())


def _mib_or_none(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _widths(widths: tuple[int, ...] | None) -> str:
    return "" if widths is None else "-".join(str(w) for w in widths)


def with_vae_dropped(spec: CapacityModel) -> CapacityModel:
    """The same configuration without its VAE branch (e.g. to size the segmentation network alone)."""
    return dataclasses.replace(spec, vae=False, params={**spec.params, "vae_input_size": None})
