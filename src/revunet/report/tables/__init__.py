"""Every table of the three papers rebuilt with the papers' numbers and ours side by side.

The papers' numbers come from ``paper_results.yaml`` (:mod:`revunet.papers`), ours from the
workflow's outputs (read by :mod:`revunet.report.inputs`). An absent input leaves its cells empty
in the CSV and "not run" in the Markdown. Every table is written as CSV (numbers only,
round-trips with pandas) and Markdown (:mod:`revunet.report.markdown`: a title, a caption naming
the data, the scale and where memory comes from, and the table).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.catalog import REPORT_TABLES
from revunet.report.inputs import ReportContext, ReportInputs
from revunet.report.markdown import ReportTable
from revunet.report.tables.measurements import capacity_report_table, complexity_report_table
from revunet.report.tables.pendse import pendse_dice_table, pendse_memory_table
from revunet.report.tables.postprocessing import postprocessing_table
from revunet.report.tables.regions import REGION_TABLES, region_table
from revunet.report.tables.smoke import mark_smoke, smoke_table

_BUILDERS: dict[str, Callable[[ReportContext], ReportTable]] = {
    **{table: partial(region_table, table=table) for table in REGION_TABLES},
    "pendse2020_memory": pendse_memory_table,
    "pendse2020_dice": pendse_dice_table,
    "complexity": complexity_report_table,
    "capacity": capacity_report_table,
    "postprocessing": postprocessing_table,
}
# One builder per name of revunet.catalog.REPORT_TABLES, in that order.
TABLE_BUILDERS: dict[str, Callable[[ReportContext], ReportTable]] = {name: _BUILDERS[name] for name in REPORT_TABLES}


def build_tables(inputs: ReportInputs) -> list[ReportTable]:
    """Every report table from ``inputs`` (read once); a smoke run's marked, and its own table first."""
    context = ReportContext(inputs)
    tables = [build(context) for build in TABLE_BUILDERS.values()]
    if not inputs.smoke:
        return tables
    return [smoke_table(context), *(mark_smoke(table) for table in tables)]


def write_tables(tables: Sequence[ReportTable], out: str | os.PathLike[str]) -> list[Path]:
    """``<name>.csv`` and ``<name>.md`` per table, then ``index.csv`` (file, title, caption), each atomically."""
    out = Path(out)
    written = []
    for table in tables:
        written.append(write_text_atomic(out / f"{table.name}.csv", table.data.to_csv(index=False)))
        written.append(write_text_atomic(out / f"{table.name}.md", table.markdown()))
    index = pd.DataFrame(
        [{"file": f"{t.name}.md", "csv": f"{t.name}.csv", "title": t.title, "caption": t.caption} for t in tables]
    )
    written.append(write_text_atomic(out / "index.csv", index.to_csv(index=False)))
    return written
