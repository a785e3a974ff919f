"""`revunet memory`: peak memory of one training step of any model at any input size.

See :mod:`revunet.memory.accounting` for how the peak is measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revunet.catalog import MEMORY_TABLES

# torch is imported inside the commands: building the parser must stay fast.
AUTOCAST_DTYPES = ("bfloat16", "float16")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be integers like 1,4,128,128,128; got {text!r}") from None
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"--input-shape needs positive batch, channels and sizes; got {text!r}")
    return shape


def _volume(text: str) -> tuple[int, ...]:
    shape = _shape(f"1,1,{text}")[2:]
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"--volume-shape must be three sizes like 160,192,160; got {text!r}")
    return shape


def _factory(spec: str) -> Callable[..., Any]:
    """Resolve ``package.module:callable`` to the callable that builds the model."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--model must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"--model {spec!r}: cannot import module {module_name!r} ({error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SystemExit(f"--model {spec!r}: module {module_name!r} has no callable {attribute!r}")
    return factory


def _paper_table(args: argparse.Namespace) -> int:
    from revunet.atomic import write_text_atomic
    from revunet.memory.paper_tables import measure_table

    if args.model or args.input_shape:
        raise SystemExit("--table measures the paper's own configurations; drop --model/--input-shape")
    if args.out and not args.out.endswith(".csv"):
        raise SystemExit(f"--out with --table must end in .csv, got {args.out!r}")
    table, modules = measure_table(args.table, mode=args.mode)
    shown = ["row", "input_shape", "paper_mb", "measured_mb", "ratio", "floor_mb", "measured_vs_floor", "peak_phase"]
    shown += [c for c in ("legacy_group_norm_mb", "twin_mb", "fits_budget") if c in table]
    print(f"{args.table} ({args.mode}; MiB):")
    print(table[shown].to_string(index=False))
    print("largest owners at each row's peak (MiB; --out F.csv also writes every phase to F_modules.csv):")
    for record in table.itertuples():
        at_peak = modules[(modules["row"] == record.row) & (modules["phase"] == record.peak_phase)]
        top = ", ".join(f"{m.module} {m.mib:.0f}" for m in at_peak.head(6).itertuples())
        print(f"  {record.row}: {top}")
    if args.out:
        write_text_atomic(Path(args.out), table.to_csv(index=False))
        write_text_atomic(Path(_modules_path(args.out)), modules.to_csv(index=False))
    return 0


def _modules_path(out: str) -> str:
    """``F.csv`` -> ``F_modules.csv``: where a table's attribution by module goes."""
    stem, dot, extension = out.rpartition(".")
    return f"{stem}_modules{dot}{extension}"


def _experiment(args: argparse.Namespace) -> int:
    """``--experiment``: the predicted peak of the experiment's training step, as its job runs it."""
    from revunet.atomic import write_text_atomic
    from revunet.experiments.recipe import read_experiment
    from revunet.memory.experiment_peak import predict_training_peak

    if args.model or args.input_shape or args.table:
        raise SystemExit("--experiment measures the experiment's own configuration; drop --model/--input-shape/--table")
    if args.out and not args.out.endswith(".json"):
        raise SystemExit(f"--out with --experiment must end in .json, got {args.out!r}")
    try:
        experiment = read_experiment(args.experiment)
        report = predict_training_peak(experiment, args.volume_shape, mode=args.mode, device_type=args.for_device)
    except (OSError, ValueError) as error:
        raise SystemExit(f"revunet memory: {args.experiment}: {error}") from None
    row = {"experiment": experiment.name, "for_device": args.for_device, "amp": experiment.amp, **report.as_dict()}
    print(f"{experiment.name} at {row['input_shape']} ({args.mode}, for {args.for_device}): {report.summary()}")
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(row, indent=2) + "\n")
    return 0


def _memory(args: argparse.Namespace) -> int:
    import torch

    from revunet.atomic import write_text_atomic
    from revunet.memory.accounting import measure_training_step

    if args.experiment:
        return _experiment(args)
    if args.table:
        return _paper_table(args)
    if not args.model or not args.input_shape:
        raise SystemExit("revunet memory needs --table NAME, or --model and --input-shape")

    try:
        kwargs: dict[str, Any] = json.loads(args.kwargs)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--kwargs must be a JSON object, e.g. '{{\"depth\": 4}}': {error}") from None
    if not isinstance(kwargs, dict):
        raise SystemExit(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    factory = _factory(args.model)
    # On the meta device nothing is allocated: a fake measurement of any size stays free.
    with torch.device("meta") if args.mode == "fake" else torch.device("cpu"):
        try:
            model = factory(**kwargs)
        except TypeError as error:
            raise SystemExit(f"--model {args.model} rejected --kwargs {kwargs}: {error}") from None
    report = measure_training_step(
        model,
        args.input_shape,
        mode=args.mode,
        autocast_dtype=getattr(torch, args.autocast) if args.autocast else None,
    )
    row = {"model": args.model, "kwargs": json.dumps(kwargs, sort_keys=True), **report.as_dict()}
    print(f"{args.model} {kwargs} at {'x'.join(map(str, args.input_shape))} ({args.mode}): {report.summary()}")
    owners = ", ".join(f"{owner} {nbytes / 2**20:.1f}" for owner, nbytes in list(report.peak_modules.items())[:8])
    print(f"live at the peak by owner (MiB): {owners}")
    if args.out:
        out = Path(args.out)
        if out.suffix == ".json":
            write_text_atomic(out, json.dumps(row, indent=2) + "\n")
        elif out.suffix == ".csv":
            import pandas as pd

            write_text_atomic(out, pd.DataFrame([row]).to_csv(index=False))
        else:
            raise SystemExit(f"--out must end in .json or .csv, got {args.out!r}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet memory`` to the command-line parser."""
    memory = commands.add_parser(
        "memory",
        help="peak memory of one training step (forward, loss, backward, Adam step)",
        description="Measure the peak memory of one steady-state training step with exact "
        "tensor accounting: 'fake' needs no memory at any size, 'cpu' runs real tensors, "
        "'cuda' also reads torch.cuda.max_memory_allocated().",
    )
    memory.add_argument(
        "--table",
        choices=MEMORY_TABLES,
        help="measure every row of a paper's memory table under its protocol (paper vs measured)",
    )
    memory.add_argument(
        "--experiment",
        metavar="SPEC",
        help="predict the training step of this experiment file as its job runs it (model, batch, patch, loss, AMP)",
    )
    memory.add_argument(
        "--volume-shape",
        type=_volume,
        help="with --experiment on whole volumes: the preprocessed volume shape, e.g. 160,192,160",
    )
    memory.add_argument(
        "--for-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="with --experiment: the job's device, which decides AMP's dtype (bfloat16 on CPU, float16 on CUDA)",
    )
    memory.add_argument("--model", help="model factory as 'package.module:callable'")
    memory.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    memory.add_argument("--input-shape", type=_shape, help="e.g. 1,4,160,192,160")
    memory.add_argument("--mode", choices=("fake", "cpu", "cuda"), default="fake")
    memory.add_argument("--autocast", choices=AUTOCAST_DTYPES, help="mixed precision dtype")
    memory.add_argument("--out", help="write the result as .json or .csv (atomically)")
    memory.set_defaults(run=_memory)
