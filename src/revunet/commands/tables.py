"""`revunet tables`: every paper table with the papers' numbers and the reproduced ones side by side.

See :mod:`revunet.report.inputs` for the inputs and :mod:`revunet.report.tables` for the tables and the files
written.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _optional_dir(value: str | None) -> Path | None:
    return Path(value) if value else None


def _tables(args: argparse.Namespace) -> int:
    from revunet.report.inputs import ReportInputError, ReportInputs, parse_data_descriptions
    from revunet.report.tables import build_tables, write_tables

    inputs = ReportInputs(
        evaluations=_optional_dir(args.evaluations),
        memory=_optional_dir(args.memory),
        training=_optional_dir(args.training),
        experiments=_optional_dir(args.experiments),
        data_root=_optional_dir(args.cases_dir),
        data_descriptions=parse_data_descriptions(args.data_description or []),
        preset=args.preset,
        smoke=args.smoke,
        compiled_training=_optional_dir(args.compiled_training),
        predicted_memory=_optional_dir(args.predicted_memory),
    )
    if not args.smoke and (args.compiled_training or args.predicted_memory):
        raise SystemExit("revunet tables: --compiled-training and --predicted-memory belong to a smoke run (--smoke)")
    for name in (
        "evaluations",
        "memory",
        "training",
        "experiments",
        "cases_dir",
        "compiled_training",
        "predicted_memory",
    ):
        value = getattr(args, name)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise SystemExit(f"revunet tables: --{name.replace('_', '-')} {value} is not a folder")
    try:
        tables = build_tables(inputs)
    except ReportInputError as error:
        raise SystemExit(f"revunet tables: {error}") from None
    written = write_tables(tables, args.out)
    for table in tables:
        reproduced = [c for c in table.data.columns if c.startswith(("reproduced_", "measured_"))]
        filled = int(table.data[reproduced].notna().to_numpy().sum()) if reproduced else 0
        print(f"{table.name}: {len(table.data)} rows, {filled} reproduced/measured cells filled")
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet tables`` to the command-line parser."""
    parser = commands.add_parser(
        "tables",
        help="paper tables rebuilt: the papers' numbers and ours side by side (CSV + Markdown)",
        description="Rebuild every table of the three papers (Brügger 2019 Table 1, invertible-residual Tables 1-3, "
        "Pendse 2020 Tables 1-2 and its capacity claim) with the papers' numbers next to the reproduced ones. "
        "Experiments link to paper rows by their table/row fields. Inputs that are absent give 'not run' cells "
        "(empty in the CSV); malformed ones are errors naming the file. Writes NAME.csv (every column) and NAME.md "
        "per table; a wide table's Markdown shows views of at most 10 columns, each also written as NAME.VIEW.csv; "
        "the caption of each CSV Snakemake's report shows (a table's views, else the table) as NAME[.VIEW].rst; "
        "and index.csv (file, csv, view, title, caption, report_caption).",
    )
    parser.add_argument("--experiments", help="folder of experiment files EXP.json (results/experiments)")
    parser.add_argument("--evaluations", help="folder with EXP/metrics.csv (results/evaluation)")
    parser.add_argument("--training", help="folder with EXP/log.csv and EXP/summary.json (results/train)")
    parser.add_argument("--memory", help="folder with TABLE.csv, capacity.csv, complexity.csv (results/memory)")
    parser.add_argument(
        "--cases-dir",
        help="folder with DATASET/cases.csv (results/data): tells each experiment's dataset and whether it is "
        "synthetic",
    )
    parser.add_argument(
        "--data-description",
        action="append",
        metavar="[TASK=]TEXT",
        help="what the reproduced numbers were computed on, e.g. 'BraTS 2018'; 'brats=TEXT' or 'iseg=TEXT' for one "
        "task (repeatable); overrides what --cases-dir finds",
    )
    parser.add_argument("--preset", choices=("demo", "paper"), help="scale preset the experiments were run at")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the inputs come from a smoke run: mark every table as one and add smoke.csv/.md (steps, memory)",
    )
    parser.add_argument("--compiled-training", help="smoke run: folder with EXP/log.csv of the compile: true twins")
    parser.add_argument(
        "--predicted-memory", help="smoke run: folder with EXP.json of `revunet memory --experiment` (predicted peaks)"
    )
    parser.add_argument("--out", required=True, help="folder to write the tables into")
    parser.set_defaults(run=_tables)
