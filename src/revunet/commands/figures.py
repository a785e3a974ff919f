"""`revunet figures`: training curves, score distributions, memory against the papers, example segmentations.

See :mod:`revunet.report.figures` for the figures, their inputs and captions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _figures(args: argparse.Namespace) -> int:
    from revunet.report.figures import FigureInputs, parse_examples, write_figures
    from revunet.report.inputs import ReportInputError

    try:
        inputs = FigureInputs(
            training=_optional_path(args.training),
            evaluations=_optional_path(args.evaluations),
            memory=_optional_path(args.memory),
            complexity=_optional_path(args.complexity),
            predictions=_optional_path(args.predictions),
            data_root=_optional_path(args.cases_dir),
            experiments=_optional_path(args.experiments),
            examples=parse_examples(args.example or []),
            smoke=args.smoke,
        )
        index = write_figures(inputs, args.out)
    except ReportInputError as error:
        raise SystemExit(f"revunet figures: {error}") from None
    for file, _ in index:
        print(f"wrote {Path(args.out) / file} (+ .pdf)")
    print(f"wrote {Path(args.out) / 'index.csv'}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet figures`` to the command-line parser."""
    parser = commands.add_parser(
        "figures",
        help="report figures (PNG + PDF): training curves, Dice/HD95 distributions, memory, example segmentations",
        description="Draw the report's figures from the workflow's outputs, each as NAME.png and NAME.pdf, and "
        "index.csv (file, caption): training_curves, dice_distribution, hd95_distribution, memory_vs_paper, "
        "memory_vs_depth and example_segmentation_DATASET for each DATA_ROOT/DATASET/cases.csv. Figures whose "
        "inputs are absent say 'not run'; malformed inputs are errors naming the file.",
    )
    parser.add_argument("--experiments", help="folder of experiment files EXP.json (results/experiments)")
    parser.add_argument("--training", help="folder with EXP/log.csv (results/train)")
    parser.add_argument("--evaluations", help="folder with EXP/metrics.csv (results/evaluation)")
    parser.add_argument("--memory", help="folder with TABLE.csv of `revunet memory --table` (results/memory)")
    parser.add_argument("--complexity", help="complexity.csv of `revunet complexity` (default: MEMORY/complexity.csv)")
    parser.add_argument("--predictions", help="folder with EXP/predictions.csv and NIfTI files (results/predictions)")
    parser.add_argument("--cases-dir", help="folder with DATASET/cases.csv (results/data)")
    parser.add_argument(
        "--example",
        action="append",
        metavar="DATASET=EXPERIMENT",
        help="experiment whose first test prediction is shown for DATASET (repeatable; default: the "
        "experiment with the best test mean Dice among those with predictions on that dataset)",
    )
    parser.add_argument("--smoke", action="store_true", help="the inputs come from a smoke run: mark every figure")
    parser.add_argument("--out", required=True, help="folder to write the figures into")
    parser.set_defaults(run=_figures)
