"""`revunet export`: a folder of predictions in a BraTS challenge's naming and label convention.

See :mod:`revunet.evaluation.export` for the conventions and the checks.
"""

from __future__ import annotations

import argparse

# The conventions `--convention` accepts (kept here so that building the parser imports nothing heavy).
CONVENTION_CHOICES = ("brats2021", "brats2023")


def _export(args: argparse.Namespace) -> int:
    from revunet.evaluation.export import CONVENTIONS, export_predictions
    from revunet.evaluation.postprocess import PostProcessing

    try:
        postprocessing = PostProcessing(args.et_min_mm3, args.min_component_mm3) if args.postprocess else None
        written = export_predictions(args.cases, args.predictions, args.convention, args.out, postprocessing)
    except (OSError, ValueError) as error:  # ExportError, EvaluationError, CaseTableError, unreadable files
        raise SystemExit(f"revunet export: {error}") from None
    how = f", after post-processing ({postprocessing.describe()})" if postprocessing else ""
    print(f"{len(written)} prediction(s) written to {args.out} ({CONVENTIONS[args.convention].description}{how})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet export`` to the command-line parser."""
    parser = commands.add_parser(
        "export",
        help="write predictions in a BraTS challenge's file names and labels, for submission",
        description="Copy the predictions listed in PRED_DIR/predictions.csv into OUT in a challenge convention: "
        "brats2021 (BraTS 2018-2021: labels 0, 1, 2, 4; <case>.nii.gz) or brats2023 (BraTS 2023+: labels 0, 1, 2, 3; "
        "BraTS-GLI-XXXXX-YYY.nii.gz, from ids of that form or BraTS2021_XXXXX). Every prediction must be on its "
        "case's original image grid and hold only its dataset's label values; nothing is written otherwise.",
    )
    parser.add_argument("--cases", required=True, help="case table (CSV from `revunet cases`)")
    parser.add_argument(
        "--predictions", required=True, help="PRED_DIR written by `revunet infer` (holds predictions.csv)"
    )
    parser.add_argument("--convention", required=True, choices=CONVENTION_CHOICES, help="the challenge's convention")
    parser.add_argument("--out", required=True, help="folder to write the challenge's files into")
    parser.add_argument(
        "--postprocess", action="store_true", help="apply the BraTS post-processing first (see `revunet evaluate`)"
    )
    parser.add_argument("--et-min-mm3", type=float, default=500.0, help="with --postprocess: ET→NCR threshold (mm³)")
    parser.add_argument(
        "--min-component-mm3", type=float, default=0.0, help="with --postprocess: smallest tumour component kept (mm³)"
    )
    parser.set_defaults(run=_export)
