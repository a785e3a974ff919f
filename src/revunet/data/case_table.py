"""The case table: one row per case of a dataset, and its CSV file.

Columns: ``case_id, task, layout``, one column per canonical modality of the task
(:data:`revunet.catalog.TASK_MODALITIES`) and ``label``. Paths are absolute; an unlabelled case
has an empty ``label``. For the Decathlon's 4-D files a modality cell reads
``"<absolute path>#<k>"``: channel ``k`` of the file's last axis.
:func:`revunet.data.layouts.find_cases` builds a table from a dataset folder;
:func:`revunet.data.io.load_case` reads one row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.catalog import TASK_MODALITIES
from revunet.data.labels import LAYOUT_TASKS


class CaseTableError(ValueError):
    """A case-table CSV (or DataFrame) does not have the expected columns or values."""


def case_table_columns(task: str) -> list[str]:
    """The case table's columns for ``task``, in order."""
    if task not in TASK_MODALITIES:
        raise CaseTableError(f"unknown task {task!r}; expected one of {sorted(TASK_MODALITIES)}")
    return ["case_id", "task", "layout", *TASK_MODALITIES[task], "label"]


def _validate_table(table: pd.DataFrame, source: str) -> list[str]:
    """The table's expected columns; CaseTableError naming ``source`` if anything is off."""
    if "task" not in table.columns:
        raise CaseTableError(
            f"{source}: no 'task' column; expected columns {case_table_columns('brats')} or {case_table_columns('iseg')}"
        )
    tasks = sorted(set(table["task"]))
    if not tasks:
        raise CaseTableError(f"{source}: the case table has no rows")
    if len(tasks) > 1 or tasks[0] not in TASK_MODALITIES:
        raise CaseTableError(
            f"{source}: task column holds {tasks}; expected a single task, one of {sorted(TASK_MODALITIES)}"
        )
    expected = case_table_columns(tasks[0])
    missing = [c for c in expected if c not in table.columns]
    unknown = [c for c in table.columns if c not in expected]
    if missing or unknown:
        parts = ([f"missing column(s) {missing}"] if missing else []) + (
            [f"unknown column(s) {unknown}"] if unknown else []
        )
        raise CaseTableError(f"{source}: {'; '.join(parts)}; expected exactly the columns {expected}")
    bad_layouts = sorted(set(table["layout"]) - {name for name, task in LAYOUT_TASKS.items() if task == tasks[0]})
    if bad_layouts:
        raise CaseTableError(
            f"{source}: layout(s) {bad_layouts} are not {tasks[0]} layouts; expected one of {list(LAYOUT_TASKS)}"
        )
    for column in expected[:-1]:
        empty = table.index[table[column].astype(str).str.len() == 0].tolist()
        if empty:
            raise CaseTableError(f"{source}: empty {column!r} in row(s) {empty[:5]}; only 'label' may be empty")
    duplicated = sorted(set(table.loc[table["case_id"].duplicated(), "case_id"]))
    if duplicated:
        raise CaseTableError(f"{source}: duplicate case id(s) {duplicated[:5]}; case ids must be unique")
    return expected


def write_case_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the case table as CSV atomically (a killed job never leaves half a table)."""
    columns = _validate_table(table, f"case table to write to {path}")
    return write_text_atomic(path, table[columns].to_csv(index=False))


def read_case_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a case-table CSV, every cell a string (empty label = unlabelled), columns checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"case table {path} does not exist; write one with `revunet cases`")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = _validate_table(table, f"case table {path}")
    return table[columns].reset_index(drop=True)


# The columns of the record of the cases left out of a case table on purpose.
EXCLUDED_COLUMNS = ["case_id", "excluded_by"]


def write_excluded(case_ids: Sequence[str], excluded_by: str, path: str | os.PathLike[str]) -> Path:
    """Record which cases were left out and by what (a config key or an option), atomically;
    written even when none were, so a reader of the case table can tell."""
    table = pd.DataFrame({"case_id": list(case_ids), "excluded_by": [excluded_by] * len(case_ids)})
    return write_text_atomic(path, table[EXCLUDED_COLUMNS].to_csv(index=False))


def broken_cases_message(
    header: str, broken: Sequence[tuple[str, str]], repair: str, exclude_key: str | None = None
) -> str:
    """One readable message for several unusable cases: what is wrong with each, and the two fixes.

    ``broken`` holds ``(case id, what is wrong, naming the file)``; ``repair`` says how to
    repair one (e.g. "re-download or re-export the file"); ``exclude_key`` is the config key
    that leaves cases out (``datasets.<name>.<preset>.exclude_cases``), or None for the option.
    """
    ids = [case_id for case_id, _ in broken]
    lines = [f"{header}:", *(f"  - {problem}" for _, problem in broken)]
    if exclude_key:
        leave_out = f"add it to {exclude_key} in your config, e.g. exclude_cases: [{', '.join(ids)}]"
    else:
        leave_out = f"leave it out of the case table: revunet cases ... --exclude {' '.join(ids)}"
    lines += [
        "Fix each case in one of two ways:",
        f"  1. repair it: {repair}, then run again;",
        f"  2. or {leave_out}.",
    ]
    return "\n".join(lines)
