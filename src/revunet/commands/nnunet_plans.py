"""`revunet nnunet-plans`: an nnU-Net plans file that trains a reversible network, sized by exact memory.

See :mod:`revunet.integrations.nnunet.plans` for the measurement and the search, and
docs/nnunet.md for the workflow around it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from revunet.commands._arguments import positive_float

NETWORK_CHOICES = ("resenc", "partially-reversible")


def _out_path(args: argparse.Namespace, plans: Path) -> Path:
    """Where the new plans go: ``--out`` (a file, or a folder for the default name) or beside the plans."""
    name = f"{plans.stem}_revunet{args.budget_gib:g}G.json"
    if args.out is None:
        return plans.with_name(name)
    out = Path(args.out)
    return out / name if out.is_dir() or args.out.endswith("/") else out


def _nnunet_plans(args: argparse.Namespace) -> int:
    from revunet.integrations.nnunet import INSTALL

    try:
        from revunet.integrations.nnunet.plans import PlansError, read_json, size_plans
    except ImportError as missing:
        raise SystemExit(f"revunet nnunet-plans: {missing.name} is not installed; {INSTALL}") from None
    from revunet.atomic import write_text_atomic

    plans_path = Path(args.plans)
    dataset_path = Path(args.dataset_json) if args.dataset_json else plans_path.with_name("dataset.json")
    out = _out_path(args, plans_path)
    try:
        plans = read_json(plans_path, "plans")
        dataset = read_json(dataset_path, "dataset.json")
        budget = int(args.budget_gib * 2**30)
        new_plans, sized = size_plans(plans, dataset, budget, args.network, args.configurations or None)
    except (PlansError, KeyError) as error:
        raise SystemExit(f"revunet nnunet-plans: {error}") from None
    if not sized:
        raise SystemExit(f"revunet nnunet-plans: {plans_path} has no residual-encoder configuration to convert")
    new_plans["plans_name"] = out.stem
    write_text_atomic(out, json.dumps(new_plans, indent=4) + "\n")
    _print_rows([s.row() for s in sized], args.budget_gib)
    print(f"wrote {out}; train with: nnUNetv2_train DATASET CONFIGURATION FOLD -p {out.stem}")
    return 0


def _print_rows(rows: list[dict[str, object]], budget_gib: float) -> None:
    """Per configuration: both networks' peaks at the plans' step, then the step each fits in the budget."""
    import pandas as pd

    headers = {
        "configuration": "configuration",
        "patch": "plans' patch",
        "original_mib": "original MiB",
        "reversible_mib": "reversible MiB",
        "original_in_budget": f"original in {budget_gib:g} GiB",
        "reversible_in_budget": f"reversible in {budget_gib:g} GiB",
        "reversible_in_budget_mib": "MiB",
        "patch_gained": "patch gained",
    }
    print(pd.DataFrame(rows).rename(columns=headers).to_string(index=False))


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet nnunet-plans`` to the command-line parser (nnU-Net is imported only when it runs)."""
    parser = commands.add_parser(
        "nnunet-plans",
        help="write nnU-Net plans that train a reversible network, patch and batch sized to a memory budget",
        description="Read an nnU-Net v2 residual-encoder plans file (e.g. nnUNetResEncUNetLPlans.json) and write a "
        "new plans identifier whose configurations build revunet's reversible network, with the largest patch (then "
        "batch) whose training step fits the budget, measured exactly with fake tensors. Prints, per configuration, "
        "the original and the reversible network's peak at the plans' patch and the patch gained.",
    )
    parser.add_argument("--plans", required=True, help="the plans file (in nnUNet_preprocessed/DatasetXXX_Name/)")
    parser.add_argument("--dataset-json", help="the dataset's dataset.json (default: the one beside the plans)")
    parser.add_argument("--budget-gib", type=positive_float, required=True, help="memory budget of a step, GiB")
    parser.add_argument("--out", help="the new plans file, or a folder for the default name (default: beside --plans)")
    parser.add_argument("--network", choices=NETWORK_CHOICES, default="resenc", help="the reversible network")
    parser.add_argument("--configurations", nargs="*", help="configurations to convert (default: every one possible)")
    parser.set_defaults(run=_nnunet_plans)
