"""`revunet infer`: predict the cases of a split with a trained checkpoint, as NIfTI label files.

See :mod:`revunet.evaluation.predict` for how volumes are predicted and written.
"""

from __future__ import annotations

import argparse


def _window(text: str) -> tuple[int, int, int] | str | None:
    from revunet.data.preprocess import parse_shape
    from revunet.experiments.recipe import FROM_EXPERIMENT

    if text == FROM_EXPERIMENT:  # the default: argparse passes string defaults through the type
        return text
    try:
        return parse_shape(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--window must be three positive sizes like 128,128,128 or 'none' (whole volumes), got {text!r}"
        ) from None


def _overlap(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value % 2:
        raise argparse.ArgumentTypeError(f"--overlap must be an even number of voxels >= 0, got {text!r}")
    return value


def _infer(args: argparse.Namespace) -> int:
    from revunet.evaluation.predict import infer_cases

    try:
        path = infer_cases(
            checkpoint=args.checkpoint,
            cases=args.cases,
            preprocessed=args.preprocessed,
            split=args.split,
            out=args.out,
            part=args.part,
            device=args.device,
            flips=args.tta,
            window=args.window,
            overlap=args.overlap,
            log=lambda line: print(line, flush=True),
        )
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"revunet infer: {error}") from None
    print(f"predictions listed in {path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet infer`` to the command-line parser."""
    # Constants from torch-free modules: building the parser must not import torch.
    from revunet.catalog import SPLIT_PARTS
    from revunet.experiments.recipe import FROM_EXPERIMENT

    parser = commands.add_parser(
        "infer",
        help="predict the test (or other) cases with a checkpoint, as NIfTI label maps",
        description="Predict the preprocessed cases of a split with a trained checkpoint. Each prediction is "
        "pasted back into the original image grid and written as PRED_DIR/<case_id>.nii.gz (uint8, the "
        "original affine, the dataset's own label values: BraTS 0/1/2/4 by the overwrite order WT->2, TC->1, "
        "ET->4, or its layout's renumbering; iSeg 0/10/150/250); PRED_DIR/predictions.csv (case_id, "
        "prediction = file name inside PRED_DIR, seconds) is written last. Sliding windows are blended with "
        "a Hann weight; test-time flips average the probabilities of all 8 axis-flip combinations.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `revunet train` (best.pt)")
    parser.add_argument("--cases", required=True, help="case table (CSV from `revunet cases`)")
    parser.add_argument("--preprocessed", required=True, help="folder written by `revunet preprocess`")
    parser.add_argument(
        "--split",
        help="split file written by `revunet split` (default: none, every case of the case table, labelled "
        "or not: a challenge's unlabelled validation or test folder)",
    )
    parser.add_argument(
        "--part",
        choices=SPLIT_PARTS,
        default="test",
        help="with --split, which cases: its test part (default; the reported one), validation, train, or all",
    )
    parser.add_argument("--out", required=True, help="folder for the predictions")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over the 8 axis flips (default: the experiment's test_time_flips)",
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=FROM_EXPERIMENT,
        help="sliding-window size X,Y,Z, or 'none' for whole volumes (default: the experiment's sliding_window)",
    )
    parser.add_argument(
        "--overlap",
        type=_overlap,
        default=None,
        help="window overlap in voxels, even (default: the experiment's window_overlap)",
    )
    parser.set_defaults(run=_infer)
