"""Tables of measurements that involve no training data: the complexity orders and Pendse et al.'s capacity claim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from revunet.papers import paper_results
from revunet.report.inputs import ReportContext, ReportInputError, capacity_table, complexity_table
from revunet.report.markdown import ReportTable, TableView
from revunet.report.tables.common import optional_memory

# The rows of the paper's complexity table, and the method names `revunet complexity` writes.
COMPLEXITY_METHODS = {"naive": "naive", "checkpointing": "checkpointing", "invertible": "reversible"}
CAPACITY_HEADERS = {
    "model": "Model",
    "config": "Configuration",
    "dimension": "Dimension",
    "ratio_of": "ratio of",
    "reversible_value": "reversible fits",
    "twin_value": "twin fits",
    "claimed_ratio": "claimed ratio",
    "measured_ratio": "measured ratio",
    "meets_claim": "meets claim",
    "search_capped": "search capped",
    "reversible_floor_mib": "reversible floor MiB",
    "reversible_vs_floor": "reversible measured/floor",
    "budget_gib": "budget GiB",
}


def complexity_report_table(context: ReportContext) -> ReportTable:
    """The invertible-residual paper's Table 1 (asserted orders) against the measured growth exponents."""
    claimed_exponents = {"O(L)": 1.0, "O(sqrt L)": 0.5, "O(1)": 0.0}
    measured = complexity_table(context.measurement_path("complexity.csv"))
    records = []
    for entry in paper_results()["complexity"]["rows"]:
        method = COMPLEXITY_METHODS.get(entry["row"])
        record: dict[str, Any] = {
            "method": entry["row"],
            "paper_activations": entry["activations"],
            "paper_compute": entry["compute"],
            "claimed_exponent": claimed_exponents.get(entry["activations"]),
            "measured_exponent": None,
            "depths": "",
            "activations_mib_shallowest": None,
            "activations_mib_deepest": None,
        }
        rows = measured[measured["method"] == method].sort_values("depth") if measured is not None and method else None
        if rows is not None and not rows.empty:
            record["measured_exponent"] = float(rows["growth_exponent"].iloc[0])
            record["depths"] = f"{int(rows['depth'].iloc[0])}-{int(rows['depth'].iloc[-1])}"
            record["activations_mib_shallowest"] = float(rows["activations_mb"].iloc[0])
            record["activations_mib_deepest"] = float(rows["activations_mb"].iloc[-1])
        records.append(record)
    frame = pd.DataFrame(records)
    formats = {
        "claimed_exponent": ".2f",
        "measured_exponent": ".2f",
        "activations_mib_shallowest": ".1f",
        "activations_mib_deepest": ".1f",
    }
    headers = {
        "method": "Method",
        "paper_activations": "activations (paper)",
        "paper_compute": "compute (paper)",
        "claimed_exponent": "claimed exponent",
        "measured_exponent": "measured exponent",
        "depths": "depths L",
        "activations_mib_shallowest": "activations MiB, shallowest",
        "activations_mib_deepest": "activations MiB, deepest",
    }
    missing = {c: "not measured" for c in frame.columns}
    missing["claimed_exponent"] = "–"
    caption = (
        "Activation memory of one training step of a chain of L additive couplings, stored naively, with "
        "checkpoint_sequential over round(√L) segments and reversibly (`revunet complexity`, fake tensors); the "
        "exponent is the log-log slope over L ≥ 4. The recursive scheme is not implemented. No training data is "
        "involved."
    )
    return ReportTable(
        "complexity",
        "Invertible-residual U-Nets, Table 1: asserted orders vs measured growth",
        caption,
        frame,
        formats,
        headers,
        missing,
    )


def capacity_report_table(context: ReportContext) -> ReportTable:
    """Pendse et al.'s claim (3x volume, 1.25x depth, 2x channels at a fixed budget) against measured ratios."""
    from revunet.memory.capacity import CLAIM_KEYS  # lazy: the capacity search imports torch

    claims = paper_results()["pendse2020"]["claims"]
    path = context.measurement_path("capacity.csv")
    measured = capacity_table(path)
    if measured is not None:
        records = [_capacity_record(row, claims, CLAIM_KEYS, path) for _, row in measured.iterrows()]
    else:
        records = [_unmeasured_capacity(dimension, float(claims[key])) for dimension, key in CLAIM_KEYS.items()]
    frame = pd.DataFrame(records, columns=list(CAPACITY_HEADERS))
    formats = {
        "reversible_value": "g",
        "twin_value": "g",
        "claimed_ratio": "g",
        "measured_ratio": ".2f",
        "reversible_floor_mib": ".0f",
        "reversible_vs_floor": ".2f",
        "budget_gib": "g",
    }
    missing = {c: "not measured" for c in frame.columns}
    missing.update({"model": "–", "config": "–", "ratio_of": "–"})
    caption = (
        "Largest cubic input (ratio of voxels), encoder depth and channel multiplier whose training step fits the "
        "budget, reversible model vs its non-reversible twin (`revunet capacity`, fake tensors, batch 1, Adam); "
        "claimed ratios from Pendse et al.'s abstract. A capped search means the true ratio may be larger. "
        "What bounds the reversible models (the floor view and the memory tables' `_modules` attribution): their "
        "peak is in backward, "
        "at the top level, full-resolution maps (the top decoder coupling's recomputation with its gradients, the "
        "stored top encoder output feeding the skip, the gradient at the head's input, the top upsampling and skip "
        "sums), which grow with the voxels and the width as the twin's stored activations do; depth adds only "
        "parameters, gradients and Adam state. 3x the volume would need those maps to be a third of the twin's "
        "activations at equal size, 2x the channels the same at half the cost per channel. "
        "No training data is involved."
    )
    budgets = frame["budget_gib"]
    constant = budgets.notna().all() and budgets.nunique() == 1
    if constant:  # one budget for every row: said once, in the caption, not in a column
        caption += f" Budget: {float(budgets.iloc[0]):g} GiB for every row."
    views = _capacity_views(with_budget=not constant)
    title = "Pendse et al.'s capacity claim vs measured ratios"
    return ReportTable(
        "capacity",
        title,
        caption,
        frame,
        formats,
        dict(CAPACITY_HEADERS),
        missing,
        views,
        ("budget_gib",) if constant else (),
    )


def _capacity_views(with_budget: bool) -> list[TableView]:
    """The claims against the measured ratios; the searches' results (with the budget, unless one for all)."""
    keys = ("model", "config", "dimension")
    budget = ("budget_gib",) if with_budget else ()
    return [
        TableView(
            "claims",
            "Each claimed ratio next to the measured one, reversible over twin.",
            (*keys, "ratio_of", "claimed_ratio", "measured_ratio", "meets_claim", "search_capped"),
        ),
        TableView(
            "searches",
            "What each search found: the largest value whose training step fits, for the reversible model and "
            "its twin.",
            (*keys, "ratio_of", "reversible_value", "twin_value", "search_capped", *budget),
        ),
        TableView(
            "floor",
            "The reversible model's peak at the value found over its floor: near 1, the architecture, not the "
            "implementation, bounds the capacity.",
            (*keys, "ratio_of", "reversible_value", "reversible_floor_mib", "reversible_vs_floor"),
        ),
    ]


def _capacity_record(
    row: pd.Series, claims: dict[str, Any], claim_keys: dict[str, str], path: Path | None
) -> dict[str, Any]:
    """One measured dimension of ``capacity.csv`` against the paper's claimed ratio."""
    dimension = str(row["dimension"])
    if dimension not in claim_keys:
        raise ReportInputError(f"{path}: unknown dimension {dimension!r}; expected one of {list(claim_keys)}")
    claim = float(claims[claim_keys[dimension]])
    capped = bool(row["reversible_capped"]) or bool(row["twin_capped"])
    return {
        "model": row["key"],
        "config": row["config"],
        "dimension": dimension,
        "ratio_of": row["ratio_of"],
        "reversible_value": row["reversible_value"],
        "twin_value": row["twin_value"],
        "claimed_ratio": claim,
        "measured_ratio": float(row["ratio"]),
        "meets_claim": bool(float(row["ratio"]) >= claim),
        "search_capped": capped,
        "reversible_floor_mib": optional_memory(row, "reversible_floor_mib", 1.0),
        "reversible_vs_floor": optional_memory(row, "reversible_vs_floor", 1.0),
        "budget_gib": float(row["budget_gib"]),
    }


def _unmeasured_capacity(dimension: str, claim: float) -> dict[str, Any]:
    """A dimension not measured yet: the paper's claim and empty measured cells."""
    record: dict[str, Any] = dict.fromkeys(CAPACITY_HEADERS, None)
    record.update({"model": "", "config": "", "dimension": dimension, "ratio_of": "", "claimed_ratio": claim})
    return record
