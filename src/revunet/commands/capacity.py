"""`revunet capacity`: the largest input, depth and width that fit a memory budget, reversible vs twin.

See :mod:`revunet.memory.capacity` for the models, the protocol and the search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from revunet.commands._arguments import positive_float, positive_int

if TYPE_CHECKING:  # torch and pandas are imported inside the command: building the parser must stay fast
    import pandas as pd

    from revunet.memory.capacity import CapacityModel


def _capacity(args: argparse.Namespace) -> int:
    from revunet.atomic import write_text_atomic
    from revunet.memory.capacity import capacity_table
    from revunet.memory.grid_search import CapacityError

    dimensions, specs = _checked_choices(args)
    started = time.perf_counter()
    try:
        table = capacity_table(
            specs,
            budget_gib=args.budget_gib,
            fixed_size=args.fixed_size,
            dimensions=dimensions,
            jobs=args.jobs,
            max_size=args.max_size,
            max_depth=args.max_depth,
            max_multiplier=args.max_multiplier,
        )
    except (CapacityError, ValueError) as error:
        raise SystemExit(f"revunet capacity: {error}") from None
    elapsed = time.perf_counter() - started
    vae = "VAE branches dropped" if args.no_vae else "VAE branches built for each input size"
    print(
        f"Capacity under {args.budget_gib:g} GiB (fake tensors, one training step, batch 1, Adam; "
        f"depth and width at {args.fixed_size}^3; {vae}). Ratio = reversible / twin; claim: Pendse et al."
    )
    print(_summary(table).to_string(index=False))
    print(f"{int(table['measurements'].sum())} measurements in {elapsed:.0f} s")
    if args.out:
        write_text_atomic(Path(args.out), table.to_csv(index=False))
        print(f"wrote {args.out}")
    return 0


def _checked_choices(args: argparse.Namespace) -> tuple[list[str], list[CapacityModel]]:
    """The dimensions and models asked for, after filling in the defaults and checking the choices."""
    from revunet.memory.capacity import (
        CAPACITY_MODELS,
        DEFAULT_BUDGET_GIB,
        DEFAULT_FIXED_SIZE,
        DIMENSIONS,
        MAX_DEPTH,
        MAX_MULTIPLIER,
        MAX_SIZE,
        with_vae_dropped,
    )

    # Defaults live in revunet.memory.capacity (which imports torch); the parser only names them.
    for name, default in (
        ("budget_gib", DEFAULT_BUDGET_GIB),
        ("fixed_size", DEFAULT_FIXED_SIZE),
        ("max_size", MAX_SIZE),
        ("max_depth", MAX_DEPTH),
        ("max_multiplier", MAX_MULTIPLIER),
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.out and not args.out.endswith(".csv"):
        raise SystemExit(f"--out must end in .csv, got {args.out!r}")
    unknown = sorted(set(args.models or ()) - set(CAPACITY_MODELS))
    if unknown:
        raise SystemExit(f"revunet capacity: unknown --models {unknown}; choose from {', '.join(CAPACITY_MODELS)}")
    unknown = sorted(set(args.dimensions or ()) - set(DIMENSIONS))
    if unknown:
        raise SystemExit(f"revunet capacity: unknown --dimensions {unknown}; choose from {', '.join(DIMENSIONS)}")
    specs = [CAPACITY_MODELS[key] for key in args.models or CAPACITY_MODELS]
    if args.no_vae:
        specs = [with_vae_dropped(spec) if spec.vae else spec for spec in specs]
    return args.dimensions or list(DIMENSIONS), specs


def _format_value(dimension: str, value: float, capped: bool) -> str:
    """How a found value reads in the printed table (``>=`` marks a range cap reached)."""
    text = {"volume": f"{int(value)}^3", "depth": f"{int(value)}", "width": f"x{value:g}"}[dimension]
    return f">={text}" if capped else text


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """The printed view of the capacity table: one line per model and dimension."""
    import pandas as pd

    values = zip(table.dimension, table.reversible_value, table.reversible_capped, table.twin_value, table.twin_capped)
    shown = [(_format_value(d, rv, rc), _format_value(d, tv, tc)) for d, rv, rc, tv, tc in values]
    return pd.DataFrame(
        {
            "model": table["key"],
            "dimension": table["dimension"],
            "reversible": [reversible for reversible, _ in shown],
            "twin": [twin for _, twin in shown],
            "ratio": [
                _bounded(r, rc, tc) for r, rc, tc in zip(table.ratio, table.reversible_capped, table.twin_capped)
            ],
            "of": table["ratio_of"],
            "claim": table["paper_claim"],
            "meets": ["?" if pd.isna(m) else ("yes" if m else "no") for m in table["meets_claim"]],
            "rev_MiB": table["reversible_peak_mib"],
            "twin_MiB": table["twin_peak_mib"],
        }
    )


def _bounded(ratio: float, reversible_capped: bool, twin_capped: bool) -> str:
    if reversible_capped and not twin_capped:
        return f">={ratio:g}"
    if twin_capped and not reversible_capped:
        return f"<={ratio:g}"
    return "?" if reversible_capped else f"{ratio:g}"  # both capped: the ratio of the caps says nothing


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet capacity`` to the command-line parser (without importing torch)."""
    capacity = commands.add_parser(
        "capacity",
        help="largest input, depth and width under a memory budget: reversible models vs their twins",
        description="For each reversible model and its non-reversible twin, search the largest cubic input, "
        "encoder depth and channel multiplier whose training step fits the budget (fake tensors: any budget, "
        "any machine), and compare the ratios with Pendse et al.'s claim (3x volume, 1.25x depth, 2x channels).",
    )
    capacity.add_argument("--budget-gib", type=positive_float, help="memory budget in GiB (default 16)")
    capacity.add_argument(
        "--models", nargs="+", metavar="MODEL", help="bruegger, mbconv-base, invres_partial, invres_full (default: all)"
    )
    capacity.add_argument("--dimensions", nargs="+", metavar="DIM", help="volume, depth, width (default: all)")
    capacity.add_argument(
        "--fixed-size", type=positive_int, help="input edge of the depth and width searches (default 128)"
    )
    capacity.add_argument("--max-size", type=positive_int, help="largest input edge searched (default 512)")
    capacity.add_argument("--max-depth", type=positive_int, help="largest encoder depth searched (default 64)")
    capacity.add_argument("--max-multiplier", type=positive_int, help="largest width multiplier searched (default 8)")
    capacity.add_argument("--no-vae", action="store_true", help="measure invres models without their VAE branch")
    capacity.add_argument("--jobs", type=positive_int, help="parallel processes (default: usable cores)")
    capacity.add_argument("--out", help="write the full table as .csv (atomically)")
    capacity.set_defaults(run=_capacity)
