"""Preprocessing every case of a case table so that a broken case costs only itself.

Each case is written on its own into a *store* folder, atomically (``<case>.npz``, then
``<case>.json``: see :func:`revunet.data.preprocess.save_preprocessed`), and a case whose JSON
records the same fingerprint (its case-table row, the size and modification time of each raw
file, the target shape, the format version: :func:`revunet.data.preprocess.input_fingerprint`)
is skipped. Only when every case succeeded is the output folder *published*: one hard link
per case file (a copy where the file system has no hard links), then ``index.csv``, written
last. A workflow whose job output is that folder may delete it when the job fails; the store
keeps the good cases, so the rerun redoes nothing and only links them again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.data.io import load_case
from revunet.data.preprocess import (
    Shape3,
    describe,
    input_fingerprint,
    is_current,
    meta_path,
    npz_path,
    preprocess_case,
    save_preprocessed,
)

INDEX_NAME = "index.csv"
INDEX_COLUMNS = ["case_id", "npz", "json"]


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case: a log line, whether it was skipped, and its warnings."""

    case_id: str
    line: str
    skipped: bool
    warnings: tuple[str, ...] = ()


@dataclass
class BatchOutcome:
    """Every case of a batch: those done (or skipped) and those broken, with what is wrong."""

    done: list[CaseOutcome] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)


def preprocess_row(row: Mapping[str, Any], shape: Shape3 | None, store: Path, force: bool = False) -> CaseOutcome:
    """Preprocess one case-table row into ``store`` unless its files there are current.

    Raises the :class:`revunet.data.io.CaseError` (or ValueError) of a broken case; writes
    nothing for it then.
    """
    case_id = str(row["case_id"])
    fingerprint = input_fingerprint(row, shape)
    if not force and is_current(store, case_id, fingerprint):
        return CaseOutcome(case_id, f"{case_id}: up to date in {store}, skipped (--force redoes it)", True)
    case = load_case(row)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = preprocess_case(case, shape)
    result = dataclasses.replace(result, meta=dataclasses.replace(result.meta, fingerprint=fingerprint))
    path = save_preprocessed(store, result)
    return CaseOutcome(case_id, f"{describe(result)} -> {path}", False, tuple(str(w.message) for w in caught))


def preprocess_rows(
    rows: Iterable[Mapping[str, Any]], shape: Shape3 | None, store: Path, force: bool = False, report: Any = None
) -> BatchOutcome:
    """Every row in turn; a broken case is recorded and the next one still runs.

    ``report`` (optional) is called with each :class:`CaseOutcome` as it completes.
    """
    outcome = BatchOutcome()
    for row in rows:
        case_id = str(row["case_id"])
        try:
            done = preprocess_row(row, shape, store, force)
        except (OSError, ValueError) as error:  # CaseError and its subclasses are ValueErrors
            text = str(error)
            outcome.broken.append((case_id, text if text.startswith(f"case {case_id}") else f"case {case_id}: {text}"))
            continue
        outcome.done.append(done)
        if report is not None:
            report(done)
    return outcome


def _link(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` (a hard link, else a copy keeping its times)."""
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here (another file system, some network shares)
        shutil.copy2(source, temporary)
    os.replace(temporary, target)


def withdraw(out: Path) -> None:
    """Remove ``out/index.csv``: its presence says the last run over the whole table succeeded."""
    (out / INDEX_NAME).unlink(missing_ok=True)


def publish(case_ids: Sequence[str], store: Path, out: Path, index: bool = True) -> Path:
    """Put the store's files of ``case_ids`` into ``out`` (nothing to do when they are one folder),
    then write ``out/index.csv`` listing them; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_id in case_ids:
        files = (npz_path(store, case_id), meta_path(store, case_id))
        if store.resolve() != out.resolve():
            for source in files:
                _link(source, out / source.name)
        rows.append({"case_id": case_id, "npz": files[0].name, "json": files[1].name})
    if index:
        write_text_atomic(out / INDEX_NAME, pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(index=False))
    return out
