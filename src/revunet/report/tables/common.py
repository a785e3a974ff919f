"""What every paper table shares: its caption line, the memory note and the lookups in a measured memory table."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from revunet.experiments.recipe import Experiment
from revunet.papers import paper_results
from revunet.report.inputs import TABLE_TASKS, ReportContext

MEMORY_NOTE = (
    "Measured memory: `revunet memory --table {table}`, exact tensor accounting of one training step "
    "(fake tensors) at the paper's full size and protocol, independent of the data and scale above."
)


def table_caption(
    context: ReportContext, table: str, rows: Iterable[Experiment], memory_note: str, extra: str = ""
) -> str:
    """Data source, scale preset and where memory comes from, in one line."""
    rows = list(rows)
    task = TABLE_TASKS.get(table, "")
    inputs = context.inputs
    override = inputs.data_descriptions.get(task) or inputs.data_descriptions.get("")
    descriptions = [override] if override else sorted({d for d in (context.data_of(e) for e in rows) if d})
    data = "; ".join(descriptions) if descriptions else "nothing yet (every row not run)"
    source = paper_results()[table]
    paper = f"Paper: {source['dataset']}, {source['source'].split('. ')[-1].rstrip('.')}" if "dataset" in source else ""
    scale = f"{inputs.preset} scale" if inputs.preset else "scale preset not stated"
    epochs = sorted({e.epochs for e in rows})
    if epochs:
        span = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else f"{epochs[0]}"
        scale += f", {span} epochs scheduled"
    parts = [f"Reproduced on: {data}. Scale: {scale}.", paper + "." if paper else "", memory_note, extra]
    return " ".join(p for p in parts if p)


def memory_row(memory: pd.DataFrame | None, label: str) -> pd.Series | None:
    """The measured row of paper row ``label``, None if that table or row was not measured."""
    if memory is None:
        return None
    match = memory[memory["row"].astype(str) == label]
    return None if match.empty else match.iloc[0]


def optional_memory(measured: pd.Series | None, column: str, divisor: float) -> float | None:
    """An optional column of a memory-table row (absent, or empty for rows it does not apply to), in the unit."""
    if measured is None or column not in measured or pd.isna(measured[column]):
        return None
    return float(measured[column]) / divisor
