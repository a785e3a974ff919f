"""`revunet cases`: list the cases of a real dataset folder in a case table (CSV).

See :mod:`revunet.data.layouts` for the folder layouts it recognises and :mod:`revunet.data.case_table` for the
table's columns.
"""

from __future__ import annotations

import argparse
import sys

from revunet.commands._arguments import positive_int

LAYOUT_HELP = "auto, brats2018, brats2020, brats2021, brats2023, msd, iseg"


def _cases(args: argparse.Namespace) -> int:
    from revunet.data.case_table import broken_cases_message, write_case_table, write_excluded
    from revunet.data.io import load_case
    from revunet.data.layouts import LayoutError, find_cases

    exclude = list(dict.fromkeys(args.exclude))
    source = args.exclude_key or "revunet cases --exclude"
    try:
        table = find_cases(args.path, layout=args.layout, exclude=exclude, exclude_key=source)
    except (LayoutError, OSError) as error:
        raise SystemExit(f"revunet cases: {error}") from None
    if args.first is not None:
        table = table.sort_values("case_id", kind="stable").head(args.first).reset_index(drop=True)
    out = write_case_table(table, args.out)
    if args.excluded_list:
        write_excluded(exclude, source, args.excluded_list)
    labelled = int((table["label"] != "").sum())
    layout = table["layout"].iloc[0]
    print(
        f"{layout}: {len(table)} cases ({labelled} labelled, {len(table) - labelled} unlabelled) in {args.path} -> {out}"
    )
    if exclude:
        print(f"left out {len(exclude)} case(s) ({source}): {', '.join(exclude)}")
    if not args.check:
        return 0
    # Every case is read on its own: one broken case is reported and the others are still checked.
    failures = []
    for _, row in table.iterrows():
        try:
            load_case(row)
        except ValueError as error:  # CaseError and its subclasses
            failures.append((str(row["case_id"]), str(error)))
    print(f"checked {len(table)} cases: {len(table) - len(failures)} readable, {len(failures)} broken")
    if failures:
        header = f"revunet cases: {len(failures)} of {len(table)} cases are broken"
        message = broken_cases_message(header, failures, "replace or repair the file named above", args.exclude_key)
        print(message, file=sys.stderr)
        return 1
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet cases`` to the command-line parser."""
    cases = commands.add_parser(
        "cases",
        help="list the cases of a BraTS/Decathlon/iSeg folder in a case table",
        description="Recognise the layout of a dataset folder (BraTS 2018/2020/2021/2023, Decathlon "
        "Task01, iSeg 2017/2019) and write its case table: one row per case with absolute paths "
        "to each modality and the label (empty for unlabelled cases).",
    )
    cases.add_argument("path", help="the dataset folder (e.g. MICCAI_BraTS2020_TrainingData)")
    # Names are checked by find_cases; spelled out here so that building the parser imports no data code.
    cases.add_argument("--layout", default="auto", help=f"one of {LAYOUT_HELP} (default: auto, detect it)")
    cases.add_argument("--out", required=True, help="case table to write (CSV, written atomically)")
    cases.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="ID",
        help="leave these cases out of the table (never read); an id that names no case is an error",
    )
    cases.add_argument(
        "--exclude-key",
        metavar="KEY",
        help="where the --exclude ids come from (e.g. datasets.brats.paper.exclude_cases), for messages and the record",
    )
    cases.add_argument(
        "--excluded-list",
        metavar="CSV",
        help="also record the left-out cases here (case_id, excluded_by), written even when there are none",
    )
    cases.add_argument(
        "--first",
        type=positive_int,
        metavar="N",
        help="keep only the first N cases in id order (the smoke run on real data: a handful of cases)",
    )
    cases.add_argument(
        "--check",
        action="store_true",
        help="also read every case and report broken ones (slow: reads every volume); exit 1 if any",
    )
    cases.set_defaults(run=_cases)
