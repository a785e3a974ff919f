"""Read the papers' reported numbers (``paper_results.yaml``, shipped inside the package)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

MEMORY_UNIT_MIB = {"MiB": 1.0, "GiB": 1024.0}


@cache
def paper_results() -> dict[str, Any]:
    """Every paper table, keyed by table name (``bruegger2019``, ``invres_iseg``, …)."""
    text = resources.files("revunet.papers").joinpath("paper_results.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def paper_row_labels(table: str) -> list[str]:
    """The row labels of one paper table, in the paper's order."""
    return [entry["row"] for entry in paper_results()[table]["rows"]]


def paper_row(table: str, row: str) -> dict[str, Any]:
    """One row of one paper table; a clear error names the table's rows when ``row`` is unknown."""
    tables = paper_results()
    if table not in tables:
        raise KeyError(f"no paper table {table!r}; known: {', '.join(tables)}")
    for entry in tables[table]["rows"]:
        if entry["row"] == row:
            return entry
    raise KeyError(f"paper table {table!r} has no row {row!r}; rows: {[r['row'] for r in tables[table]['rows']]}")


def paper_memory_mib(table: str, row: str) -> float:
    """The paper's memory figure for a row, in MiB."""
    unit = paper_results()[table]["memory_unit"]
    return float(paper_row(table, row)["memory"]) * MEMORY_UNIT_MIB[unit]
