"""`revunet preprocess`: crop, centre crop/pad and z-score cases of a case table.

One case per invocation (``--case-id``) lets a workflow run cases in parallel; ``--all``
runs every case in turn, lists every broken one with the two fixes, and writes
``index.csv`` last when none is. Outputs that already record the same inputs and settings
are left alone unless ``--force``. See :mod:`revunet.data.preprocess` for the steps and
files, :mod:`revunet.data.preprocess_all` for ``--store``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _shape(text: str) -> tuple[int, int, int] | None:
    from revunet.data.preprocess import parse_shape

    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _print_outcome(outcome: Any) -> None:
    for text in outcome.warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(outcome.line, flush=True)


def _failure(broken: list[tuple[str, str]], total: int, store: Path, args: argparse.Namespace) -> str:
    """The message of a batch with broken cases: each one, and the two fixes."""
    from revunet.data.case_table import broken_cases_message

    good = total - len(broken)
    header = (
        f"revunet preprocess: {len(broken)} of {total} cases are broken; the {good} good one(s) are kept in "
        f"{store} and will not be redone"
    )
    repair = "replace or repair the file named above (a changed file is preprocessed again)"
    return broken_cases_message(header, broken, repair, args.exclude_key)


def _preprocess(args: argparse.Namespace) -> int:
    from revunet.data.case_table import read_case_table
    from revunet.data.preprocess_all import preprocess_rows, publish, withdraw

    try:
        table = read_case_table(args.cases)
    except (OSError, ValueError) as error:
        raise SystemExit(f"revunet preprocess: {error}") from None
    rows = [{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")]
    out = Path(args.out)
    store = Path(args.store) if args.store else out
    if args.case_id is not None:
        rows = [row for row in rows if row["case_id"] == args.case_id]
        if not rows:
            known = ", ".join(str(c) for c in table["case_id"][:5])
            raise SystemExit(
                f"revunet preprocess: case {args.case_id!r} is not in {args.cases} ({len(table)} cases, e.g. {known})"
            )
    outcome = preprocess_rows(rows, args.shape, store, args.force, report=_print_outcome)
    if outcome.broken and args.case_id is not None:
        raise SystemExit(f"revunet preprocess: {outcome.broken[0][1]}")
    if outcome.broken:
        withdraw(out)
        print(_failure(outcome.broken, len(rows), store, args), file=sys.stderr)
        return 1
    publish([row["case_id"] for row in rows], store, out, index=args.case_id is None)
    skipped = sum(done.skipped for done in outcome.done)
    print(f"preprocessed {len(rows)} cases into {out} ({skipped} were up to date)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet preprocess`` to the command-line parser."""
    parser = commands.add_parser(
        "preprocess",
        help="crop, centre crop/pad and z-score cases into .npz + .json",
        description="Crop each case to the bounding box of voxels non-zero in any modality, centre "
        "crop/pad it to --shape and z-score each modality over its non-zero voxels (background "
        "stays 0). Writes <out>/<case_id>.npz (image float32 (C,X,Y,Z), label uint8) and "
        "<out>/<case_id>.json (everything needed to paste predictions back), atomically.",
    )
    parser.add_argument("--cases", required=True, help="case table (CSV from `revunet cases`)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--case-id", help="the one case to preprocess")
    which.add_argument("--all", action="store_true", help="every case of the table, one after another")
    parser.add_argument(
        "--shape",
        type=_shape,
        default=(160, 192, 160),
        help="target shape after centre crop/pad, e.g. 160,192,160 (the papers', default), "
        "or 'none' to keep the bounding-box crop",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--store",
        help="folder the cases are preprocessed into, one by one (default: --out); when it differs, --out "
        "only gets links to its files once every case succeeded, so a failed run loses no good case",
    )
    parser.add_argument("--force", action="store_true", help="recompute even if the outputs are current")
    parser.add_argument(
        "--exclude-key",
        metavar="KEY",
        help="the config key that leaves cases out (e.g. datasets.brats.paper.exclude_cases), named in the "
        "message about broken cases",
    )
    parser.set_defaults(run=_preprocess)
