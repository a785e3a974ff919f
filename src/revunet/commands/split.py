"""`revunet split`: a seeded train / validation / test split of the labelled cases of a case table.

See :mod:`revunet.data.splits` for how the split is drawn and the JSON it writes.
"""

from __future__ import annotations

import argparse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fraction must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--fraction must lie strictly between 0 and 1, got {text!r}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) not in (2, 3) or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(
            f"--counts must be two or three positive integers TRAIN,[VALIDATION,]TEST like 329,40, got {text!r}"
        )
    return counts


def _split(args: argparse.Namespace) -> int:
    from revunet.data.case_table import read_case_table
    from revunet.data.splits import SplitScheme, make_split, split_document, write_split

    try:
        table = read_case_table(args.cases)
    except (OSError, ValueError) as error:
        raise SystemExit(f"revunet split: {error}") from None
    labelled = table["label"].astype(str).str.len() > 0
    unlabelled = sorted(table.loc[~labelled, "case_id"].astype(str))
    case_ids = table.loc[labelled, "case_id"].astype(str).tolist()
    try:
        if args.fraction is not None:
            scheme = SplitScheme(fraction=args.fraction, validation=args.validation)
        else:
            if args.validation is not None:
                raise ValueError("--validation goes with --fraction; with --counts give three counts")
            scheme = SplitScheme(counts=args.counts)
        parts = make_split(case_ids, scheme, args.seed)
    except ValueError as error:
        raise SystemExit(f"revunet split: {args.cases}: {error}") from None
    document = split_document(parts, scheme, args.seed, unlabelled)
    out = write_split(args.out, document)
    if unlabelled:
        print(f"note: {len(unlabelled)} unlabelled case(s) left out of the split (listed under 'excluded_unlabelled')")
    unused = f", {len(parts['unused'])} unused" if parts["unused"] else ""
    selection = "" if parts["validation"] else " (no validation part: the last epoch is the result)"
    print(
        f"{scheme} seed {args.seed}: {len(parts['train'])} train, {len(parts['validation'])} validation, "
        f"{len(parts['test'])} test{unused} of {len(case_ids)} labelled cases{selection} -> {out}"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet split`` to the command-line parser."""
    parser = commands.add_parser(
        "split",
        help="seeded train / validation / test split of the labelled cases",
        description="Split the labelled cases of a case table into a training part, a validation part "
        "(chooses the checkpoint; may be empty) and a test part (reported). Ids are sorted and then permuted "
        "by a seeded numpy Generator, so the split depends only on the set of ids and the seed. Unlabelled "
        "cases are excluded (and listed). Papers: Brügger et al. --fraction 0.8 --validation 0.1 (their 20 %% "
        "validation split halved into selection and a local test part); Pendse et al. --counts 329,40; "
        "iSeg --counts 9,1.",
    )
    parser.add_argument("--cases", required=True, help="case table (CSV from `revunet cases`)")
    scheme = parser.add_mutually_exclusive_group(required=True)
    scheme.add_argument("--fraction", type=_fraction, help="fraction of cases for training, e.g. 0.8")
    scheme.add_argument("--counts", type=_counts, help="TRAIN,[VALIDATION,]TEST case counts, e.g. 329,40")
    parser.add_argument(
        "--validation", type=_fraction, help="with --fraction: fraction of all cases for validation (default: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation (default 0)")
    parser.add_argument("--out", required=True, help="split file to write (JSON, atomically)")
    parser.set_defaults(run=_split)
