"""Every table of the three papers rebuilt with the papers' numbers and ours side by side.

The papers' numbers come from ``paper_results.yaml`` (:mod:`revunet.papers`), ours from the
workflow's outputs (read by :mod:`revunet.report.inputs`). An absent input leaves its cells empty
in the CSV and "not run" in the Markdown. Every table is written as CSV (every column, numbers
only, round-trips with pandas) and Markdown (:mod:`revunet.report.markdown`: a title, a caption
naming the data, the scale and where memory comes from, and the table, or its views: the columns
a reader compares, at most 10 each). A table with views (:data:`revunet.catalog.REPORT_TABLE_VIEWS`)
also gets one CSV per view, which Snakemake's report shows instead of the full one; each CSV the
report shows has its caption beside it in reStructuredText, the same text as the Markdown's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.catalog import REPORT_TABLE_VIEWS, REPORT_TABLES
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
    if inputs.smoke:
        tables = [smoke_table(context), *(mark_smoke(table) for table in tables)]
    for table in tables:  # the workflow names every file before the tables exist
        views = tuple(view.name for view in table.views)
        if views != REPORT_TABLE_VIEWS.get(table.name, ()):
            raise ValueError(
                f"table {table.name}: views {views}, but revunet.catalog names {REPORT_TABLE_VIEWS.get(table.name, ())}"
            )
    return tables


# index.csv: one row per CSV written (a table's, then its views'), with the Markdown that shows it.
INDEX_COLUMNS = ("file", "csv", "view", "title", "caption", "report_caption")


def write_tables(tables: Sequence[ReportTable], out: str | os.PathLike[str]) -> list[Path]:
    """Per table ``<name>.csv`` (every column) and ``<name>.md``; per view ``<name>.<view>.csv``; the caption
    of each CSV that Snakemake's report shows (the views', else the full one) as ``<same name>.rst``; then
    ``index.csv`` (file, csv, view, title, caption, report_caption); each written atomically."""
    out = Path(out)
    written = []
    rows = []
    for table in tables:
        written.append(write_text_atomic(out / f"{table.name}.csv", table.data.to_csv(index=False)))
        written.append(write_text_atomic(out / f"{table.name}.md", table.markdown()))
        shown = "" if table.views else f"{table.name}.rst"
        if shown:
            written.append(write_text_atomic(out / shown, table.report_caption()))
        rows.append(_index_row(table, f"{table.name}.csv", "", table.title, table.caption, shown))
        for view in table.views:
            stem = f"{table.name}.{view.name}"
            written.append(write_text_atomic(out / f"{stem}.csv", table.data[list(view.columns)].to_csv(index=False)))
            written.append(write_text_atomic(out / f"{stem}.rst", table.report_caption(view)))
            title, caption = table.view_title(view), table.view_caption(view)
            rows.append(_index_row(table, f"{stem}.csv", view.name, title, caption, f"{stem}.rst"))
    written.append(
        write_text_atomic(out / "index.csv", pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).to_csv(index=False))
    )
    return written


def _index_row(table: ReportTable, csv: str, view: str, title: str, caption: str, rst: str) -> dict[str, str]:
    """One row of ``index.csv``: the Markdown, a CSV (the full table's or a view's) and its report caption."""
    return dict(zip(INDEX_COLUMNS, (f"{table.name}.md", csv, view, title, caption, rst), strict=True))
