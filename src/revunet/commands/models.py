"""`revunet models`: every registry model at each paper configuration, with its parameter count."""

from __future__ import annotations

import argparse
import json


def _models(args: argparse.Namespace) -> int:
    import torch

    from revunet.atomic import write_text_atomic
    from revunet.models import available, build_model, model_spec, parameter_count

    names = args.names or available()
    rows = []
    for name in names:
        try:
            spec = model_spec(name)
        except KeyError as error:
            raise SystemExit(str(error.args[0])) from None
        for label, params in spec.paper_configs.items():
            # Built on the meta device: counting 18 M parameters needs no memory.
            with torch.device("meta"):
                model = build_model(name, **params)
            vae = getattr(model, "vae", None)
            vae_count = parameter_count(vae) if vae is not None else 0
            rows.append(
                {
                    "model": name,
                    "configuration": label,
                    "parameters": parameter_count(model),
                    "without_vae": parameter_count(model) - vae_count,
                    "reversible": spec.reversible,
                    "paper": spec.paper,
                    "kwargs": json.dumps(params, sort_keys=True),
                }
            )
    width = max(len(f"{r['model']} [{r['configuration']}]") for r in rows)
    for row in rows:
        label = f"{row['model']} [{row['configuration']}]"
        vae_note = (
            f" ({row['without_vae']:,} without the VAE branch)" if row["without_vae"] != row["parameters"] else ""
        )
        print(f"{label:<{width}}  {row['parameters']:>12,}{vae_note}  {row['kwargs']}")
    print()
    for name in names:
        print(f"{name}: {model_spec(name).summary}. From {model_spec(name).paper}.")
    if args.out:
        import pandas as pd

        write_text_atomic(args.out, pd.DataFrame(rows).to_csv(index=False))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet models`` to the command-line parser."""
    parser = commands.add_parser(
        "models",
        help="list the architectures, their paper configurations and parameter counts",
        description="List every registry model at each configuration its paper reports, with parameter counts.",
    )
    parser.add_argument("names", nargs="*", help="registry names (default: all)")
    parser.add_argument("--out", help="also write the table as CSV (atomically)")
    parser.set_defaults(run=_models)
