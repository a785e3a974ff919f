"""`revunet complexity`: activation memory against depth, naive vs checkpointing vs reversible.

See :mod:`revunet.memory.complexity` for what is measured and how.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _complexity(args: argparse.Namespace) -> int:
    from revunet.atomic import write_text_atomic
    from revunet.memory.complexity import DEFAULT_DEPTHS, complexity_table, plot

    if args.out and not args.out.endswith(".csv"):
        raise SystemExit(f"--out must end in .csv, got {args.out!r}")
    if args.figure and Path(args.figure).suffix not in (".png", ".pdf"):
        raise SystemExit(f"--figure must end in .png or .pdf (both are written), got {args.figure!r}")
    if args.channels % 2 or args.channels <= 0:
        raise SystemExit(
            f"--channels must be a positive even number (couplings split them in halves), got {args.channels}"
        )
    started = time.perf_counter()
    try:
        table = complexity_table(args.depths or list(DEFAULT_DEPTHS), args.channels, args.size, args.groups)
    except ValueError as error:
        raise SystemExit(f"revunet complexity: {error}") from None
    shown = table.pivot(index="depth", columns="method", values="activations_mb")[list(table["method"].unique())]
    print(f"Activation MiB at the peak of one training step (C={args.channels}, input {args.size}^3, fake tensors):")
    print(shown.to_string())
    exponents = table.drop_duplicates("method")[["method", "growth_exponent", "claimed", "claimed_exponent"]]
    print("\nGrowth exponent (log-log slope over L >= 4) against the paper's Table 1:")
    print(exponents.to_string(index=False))
    print(f"{len(table)} measurements in {time.perf_counter() - started:.0f} s")
    if args.out:
        write_text_atomic(Path(args.out), table.to_csv(index=False))
        print(f"wrote {args.out}")
    if args.figure:
        for path in plot(table, args.figure):
            print(f"wrote {path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet complexity`` to the command-line parser."""

    complexity = commands.add_parser(
        "complexity",
        help="activation memory vs depth: naive O(L), checkpointing O(sqrt L), reversible O(1), measured",
        description="Measure the activation memory of one training step of the same chain of additive couplings "
        "stored naively, with checkpoint_sequential over round(sqrt(L)) segments, and reversibly, at each depth; "
        "fit the growth exponent (log-log slope over L >= 4).",
    )
    complexity.add_argument("--depths", type=int, nargs="+", help="default 1 2 4 8 16 32")
    complexity.add_argument("--channels", type=int, default=60, help="coupled channels C (default 60)")
    complexity.add_argument("--size", type=int, default=64, help="edge S of the (1, C, S, S, S) input (default 64)")
    complexity.add_argument("--groups", type=int, default=30, help="GroupNorm groups of F and G (gcd with C/2 is used)")
    complexity.add_argument("--out", help="write the table as .csv (atomically)")
    complexity.add_argument("--figure", help="write the figure as PATH.png and PATH.pdf (atomically)")
    complexity.set_defaults(run=_complexity)
