"""`revunet evaluate`: Dice, HD95, Hausdorff, sensitivity, specificity and lesion-wise scores of a folder of predictions.

See :mod:`revunet.evaluation.score` for the inputs, the two CSV files it writes and the conventions, and
:mod:`revunet.evaluation.metrics` for the metrics themselves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from revunet.data.case_table import read_case_table
    from revunet.data.splits import read_split
    from revunet.evaluation.postprocess import PostProcessing
    from revunet.evaluation.score import (
        evaluate_predictions,
        read_predictions,
        select_cases,
        summarise,
        summary_text,
        write_evaluation,
    )

    if args.part is not None and args.split is None:
        raise SystemExit("revunet evaluate: --part needs --split (the split file whose part to score)")
    if not args.postprocess and (args.et_min_mm3 != 500.0 or args.min_component_mm3 != 0.0):
        raise SystemExit("revunet evaluate: --et-min-mm3 and --min-component-mm3 need --postprocess")
    experiment = args.experiment or Path(args.predictions).resolve().name
    started = time.perf_counter()
    try:
        cases = read_case_table(args.cases)
        split = read_split(args.split) if args.split else None
        predictions = read_predictions(args.predictions)
        case_ids = select_cases(predictions, split, args.part or "test")
        postprocessing = PostProcessing(args.et_min_mm3, args.min_component_mm3) if args.postprocess else None
        metrics = evaluate_predictions(cases, predictions, case_ids, experiment, postprocessing)
        summary = summarise(metrics)
    except (OSError, ValueError) as error:  # EvaluationError, CaseTableError and unreadable files
        raise SystemExit(f"revunet evaluate: {error}") from None
    write_evaluation(metrics, summary, args.out, args.summary)
    after = f" after post-processing ({postprocessing.describe()})" if postprocessing else ""
    print(f"{experiment}: {len(case_ids)} cases scored{after} in {time.perf_counter() - started:.1f} s")
    print(summary_text(summary))
    print(f"-> {args.out}, {args.summary}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet evaluate`` to the command-line parser."""
    from revunet.catalog import SPLIT_PARTS  # torch-free: building the parser must not import torch

    parser = commands.add_parser(
        "evaluate",
        help="score predictions: Dice, HD95, Hausdorff, sensitivity, specificity per case and region",
        description="Score the label maps listed in PRED_DIR/predictions.csv against the reference labels of "
        "the case table: BraTS regions WT, TC, ET or iSeg classes CSF, GM, WM, with the reference's voxel "
        "spacing (mm). Empty masks follow the BraTS convention (both empty: Dice 1, HD95 0; one empty: Dice 0, "
        "HD95 373.13); HD95 is medpy's (95th percentile of both directions' surface distances pooled). "
        "BraTS regions are also scored lesion-wise (26-connected lesions matched one to one by Dice; TP, FP, FN, "
        "F1, mean matched Dice and HD95, and BraTS 2023's lesion-wise Dice and HD95 with 374 mm per miss). "
        "Writes a long per-case table and a summary (mean, std, median, n), atomically, the summary last.",
    )
    parser.add_argument("--cases", required=True, help="case table (CSV from `revunet cases`)")
    parser.add_argument(
        "--predictions", required=True, help="PRED_DIR written by `revunet infer` (holds predictions.csv)"
    )
    parser.add_argument(
        "--split", help="split file: score only the cases of one of its parts (default: every prediction)"
    )
    parser.add_argument(
        "--part",
        choices=SPLIT_PARTS,
        help="with --split: which part to score (default test, the reported part); each of its cases needs a prediction",
    )
    parser.add_argument(
        "--postprocess",
        action="store_true",
        help="score the predictions after BraTS post-processing: small tumour components removed, then "
        "ET relabelled necrosis when the case's predicted ET is small (iSeg predictions are scored as they are)",
    )
    parser.add_argument(
        "--et-min-mm3",
        type=float,
        default=500.0,
        help="with --postprocess: a predicted ET below this volume (mm³; voxels at 1 mm) becomes necrosis "
        "(default 500; 0 turns the rule off)",
    )
    parser.add_argument(
        "--min-component-mm3",
        type=float,
        default=0.0,
        help="with --postprocess: whole-tumour components below this volume (mm³) are removed (default 0: off)",
    )
    parser.add_argument("--experiment", help="experiment name written in the tables (default: PRED_DIR's folder name)")
    parser.add_argument("--out", required=True, help="per-case metrics CSV to write (case x region)")
    parser.add_argument("--summary", required=True, help="summary CSV to write (region x metric)")
    parser.set_defaults(run=_evaluate)
