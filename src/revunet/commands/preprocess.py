"""`revunet preprocess`: crop, centre crop/pad and z-score cases of a case table.

One case per invocation (``--case-id``) lets a workflow run cases in parallel; ``--all``
runs every case in turn. Outputs that already record the same inputs and settings are
left alone unless ``--force``. See :mod:`revunet.data.preprocess` for the steps and files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from typing import Any


def _shape(text: str) -> tuple[int, int, int] | None:
    from revunet.data.preprocess import parse_shape

    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _one(row: dict[str, Any], args: argparse.Namespace) -> str:
    """Preprocess one case-table row unless its outputs are current; returns a log line."""
    from revunet.data.io import load_case
    from revunet.data.preprocess import (
        describe,
        input_fingerprint,
        is_current,
        preprocess_case,
        save_preprocessed,
    )

    case_id = row["case_id"]
    fingerprint = input_fingerprint(row, args.shape)
    if not args.force and is_current(args.out, case_id, fingerprint):
        return f"{case_id}: up to date in {args.out}, skipped (--force redoes it)"
    case = load_case(row)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = preprocess_case(case, args.shape)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    result = dataclasses.replace(result, meta=dataclasses.replace(result.meta, fingerprint=fingerprint))
    path = save_preprocessed(args.out, result)
    return f"{describe(result)} -> {path}"


def _preprocess(args: argparse.Namespace) -> int:
    from revunet.data.case_table import read_case_table

    try:
        table = read_case_table(args.cases)
    except (OSError, ValueError) as error:
        raise SystemExit(f"revunet preprocess: {error}") from None
    rows = [{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")]
    if args.case_id is not None:
        rows = [row for row in rows if row["case_id"] == args.case_id]
        if not rows:
            known = ", ".join(str(c) for c in table["case_id"][:5])
            raise SystemExit(
                f"revunet preprocess: case {args.case_id!r} is not in {args.cases} ({len(table)} cases, e.g. {known})"
            )
        try:
            print(_one(rows[0], args))
        except (OSError, ValueError) as error:
            raise SystemExit(f"revunet preprocess: {error}") from None
        return 0

    failures = []
    for row in rows:
        try:
            print(_one(row, args), flush=True)
        except (OSError, ValueError) as error:  # one broken case must not stop the others
            failures.append(row["case_id"])
            print(f"revunet preprocess: {error}", file=sys.stderr, flush=True)
    print(f"preprocessed {len(rows) - len(failures)} of {len(rows)} cases into {args.out}")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
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
    parser.add_argument("--force", action="store_true", help="recompute even if the outputs are current")
    parser.set_defaults(run=_preprocess)
