"""`revunet experiment`: write one experiment's recipe file, or the workflow's resolved config.

The workflow calls it twice over: once per experiment with ``--spec`` (the recipe the plan
resolved, so a changed recipe reruns only that experiment), and once with ``--config`` to
record the configuration the run used. Users can call it with ``--config config.yaml --name
NAME`` to see exactly what an experiment trains at a preset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

PREFIX = "revunet experiment"


def _load(text: str, what: str) -> Any:
    """A document given inline as JSON, or as a JSON/YAML file (read by :mod:`revunet.documents`)."""
    from revunet.documents import DocumentError, read_document

    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{PREFIX}: {what} is not valid JSON: {error}") from None
    path = Path(text)
    if not path.is_file():
        raise SystemExit(f"{PREFIX}: {what} {text!r} is neither inline JSON nor an existing file")
    try:
        return read_document(path)
    except DocumentError as error:
        raise SystemExit(f"{PREFIX}: {error}") from None


def _experiment(args: argparse.Namespace) -> int:
    from revunet.atomic import write_text_atomic
    from revunet.experiments.plan import ConfigError, plan_workflow
    from revunet.experiments.recipe import Experiment, write_experiment

    if args.spec is not None:
        if args.name or args.preset or args.data_root or args.list:
            raise SystemExit(f"{PREFIX}: --name/--preset/--data-root/--list go with --config, not --spec")
        try:
            experiment = Experiment.from_dict(_load(args.spec, "--spec"), source="--spec")
        except ValueError as error:
            raise SystemExit(f"{PREFIX}: {error}") from None
        return _emit(experiment, args.out, write_experiment)

    config = _load(args.config, "--config")
    if not isinstance(config, dict):
        raise SystemExit(f"{PREFIX}: --config must be a mapping of config keys, got {type(config).__name__}")
    if args.preset:
        config["preset"] = args.preset
    if args.data_root:
        config["data_root"] = args.data_root
    if args.name:
        config["select"] = [args.name]
    try:
        plan = plan_workflow(config)
    except ConfigError as error:
        raise SystemExit(f"{PREFIX}: {error}") from None
    if args.list:
        _print_protocol(plan)
        return 0
    if args.name:
        return _emit(plan.experiments[args.name].experiment, args.out, write_experiment)
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if args.out is None:
        print(text, end="")
    else:
        write_text_atomic(args.out, text)
        print(f"config with {len(plan.experiments)} experiment(s) at preset {plan.preset} -> {args.out}")
    return 0


def _print_protocol(plan: Any) -> None:
    """One line per experiment: canvas beside training input, split, selection, inference."""
    import pandas as pd

    rows = [plan.protocol(name) for name in plan.experiment_names()]
    print(f"preset {plan.preset}: every experiment's data, canvas and protocol")
    print(pd.DataFrame(rows).to_string(index=False))


def _emit(experiment: Any, out: str | None, write: Any) -> int:
    if out is None:
        print(json.dumps(experiment.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        write(out, experiment)
        print(f"experiment {experiment.name} -> {out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet experiment`` to the command-line parser."""
    parser = commands.add_parser(
        "experiment",
        help="write an experiment's recipe (from a spec or the workflow config) or the resolved config",
        description="With --spec: check an experiment (JSON/YAML, inline or a file) and write it. "
        "With --config and --name: resolve that experiment from the workflow config at its preset "
        "(recipe, then the experiment's keys, then the preset's defaults, then its preset block) and "
        "write it. With --config alone: check the whole config and write it back (what the run used). "
        "With --list: a table of every experiment's canvas, training input, split roles and inference. "
        "Without --out the result is printed. Writes are atomic.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="an experiment as JSON/YAML text or a file")
    source.add_argument("--config", help="the workflow config (config.yaml, or JSON text)")
    parser.add_argument("--name", help="with --config: the experiment to write")
    parser.add_argument("--preset", choices=("demo", "paper"), help="with --config: override its preset")
    parser.add_argument("--data-root", help="with --config: override its data_root")
    parser.add_argument("--out", help="file to write (JSON for an experiment, YAML for a config)")
    parser.add_argument(
        "--list",
        action="store_true",
        help="with --config: print every (or the --name) experiment's dataset, preprocessing canvas beside its "
        "training input, split, which part selects the checkpoint, and how it predicts",
    )
    parser.set_defaults(run=_experiment)
