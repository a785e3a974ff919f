"""`revunet train`: train one experiment into a run folder (resumable; see :mod:`revunet.training.loop`)."""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from revunet.experiments.recipe import read_experiment
    from revunet.training.errors import TrainError
    from revunet.training.interruption import INTERRUPTED_EXIT, TrainingInterrupted
    from revunet.training.loop import train

    try:
        experiment = read_experiment(args.experiment)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"revunet train: {error}") from None
    if args.predicted is not None:
        _check_fits(args.predicted, args.device)
    try:
        train(
            experiment,
            args.preprocessed,
            args.split,
            args.out,
            args.device,
            args.progress,
            args.restart,
            args.time_limit,
        )
    except TrainError as error:
        raise SystemExit(f"revunet train: {error}") from None
    except TrainingInterrupted as stop:
        print(f"revunet train: {stop} (exit status {INTERRUPTED_EXIT}: Snakemake retries the job)", flush=True)
        return INTERRUPTED_EXIT
    return 0


def _check_fits(predicted: str, device: str) -> None:
    """Refuse, in one line and before anything is allocated, a job this node's memory cannot hold."""
    import os

    from revunet.devices import DeviceError, resolve_device
    from revunet.memory.fit import check_fits

    try:
        target = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        plan = check_fits(predicted, target.type, local_processes, target.index or 0)
    except (DeviceError, OSError, ValueError) as error:  # DoesNotFit is a ValueError
        raise SystemExit(f"revunet train: {error}") from None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(
            f"memory: {plan.per_process / 2**30:.1f} GiB budgeted per process ({plan.predicted / 2**30:.1f} GiB "
            f"predicted), {plan.available / 2**30:.1f} GiB available in {plan.where}",
            flush=True,
        )


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet train`` to the command-line parser."""
    parser = commands.add_parser(
        "train",
        help="train one experiment (resumes from RUN_DIR/last.pt)",
        description="Train the experiment's model with its recipe on the split's training cases, validating on "
        "its validation cases, predicted as `revunet infer` predicts (window, overlap, flips; Dice per region); "
        "the test cases are never read. Writes RUN_DIR/experiment.json, last.pt (after every epoch), best.pt "
        "(best moving average of the validation mean Dice; the last epoch when the split has no validation "
        "part), log.csv and, when done, "
        "summary.json. Rerunning the same command resumes an interrupted run exactly (when the experiment and "
        "the inputs are unchanged; otherwise it starts over and says why) and does nothing for a finished one. "
        "SIGTERM, SIGUSR1 or the time limit stop it at a step boundary with last.pt written and exit status 75. "
        "Several processes: torchrun --nproc_per_node N -m revunet.cli train ... (gloo on CPU, nccl on CUDA).",
    )
    parser.add_argument("--experiment", required=True, metavar="SPEC", help="experiment file (YAML or JSON)")
    parser.add_argument(
        "--preprocessed", required=True, metavar="PRE_DIR", help="folder written by `revunet preprocess`"
    )
    parser.add_argument("--split", required=True, metavar="SPLIT_JSON", help="split file written by `revunet split`")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    parser.add_argument(
        "--device", default="auto", help="auto (default: CUDA when available), cpu, cuda (GPU LOCAL_RANK) or cuda:N"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only when stderr is a terminal)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard RUN_DIR's training outputs and train from scratch"
    )
    parser.add_argument(
        "--time-limit",
        default="auto",
        metavar="MINUTES",
        help="stop cleanly (checkpoint, exit 75) before this many minutes have passed; auto (default): the time "
        "left of the SLURM job this runs in (none outside SLURM); none: no limit",
    )
    parser.add_argument(
        "--predicted",
        metavar="JSON",
        help="the predicted training peak (`revunet memory --experiment --out`): refuse to start, in one line, "
        "when this node's memory (or the GPU's) cannot hold the job's processes",
    )
    parser.set_defaults(run=_train)
