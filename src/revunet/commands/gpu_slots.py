"""`revunet gpu-slots`: run a job on GPUs of its own, taken from the machine's slot pool.

Snakemake's ``gpu`` resource only counts GPUs; every local training and inference job starts
through this command so that each one gets its own devices (``CUDA_VISIBLE_DEVICES``) instead of
all of them sharing GPU 0. The job's command replaces this process (same pid), so signals and the
exit status pass straight through. Imports nothing heavy: it runs before every such job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from revunet.commands._arguments import non_negative_int


def _gpu_slots(args: argparse.Namespace) -> int:
    from revunet.gpu_slots import SlotError, run_on_slots

    # argparse keeps the `--` before a REMAINDER on some Python versions and drops it on others.
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("gpu-slots: no command given (usage: revunet gpu-slots --gpus N -- COMMAND [ARGS...])", file=sys.stderr)
        return 2
    try:
        run_on_slots(command, args.gpus, args.pool, args.wait_seconds, args.processes)
    except SlotError as error:
        print(error, file=sys.stderr)
        return error.status
    except OSError as error:  # the pool folder or a lock file cannot be made or opened
        print(f"gpu-slots: GPU slot pool: {error}", file=sys.stderr)
        return 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet gpu-slots`` to the command-line parser."""
    slots = commands.add_parser(
        "gpu-slots",
        help="run a command on GPUs of its own from this machine's slot pool (sets CUDA_VISIBLE_DEVICES)",
        description="Take --gpus free device ids from a machine-wide pool of lock files, set "
        "CUDA_VISIBLE_DEVICES to them and exec COMMAND; the slots are freed when it ends. Device ids: "
        "$REVUNET_GPUS, else $CUDA_VISIBLE_DEVICES, else nvidia-smi's. COMMAND runs unchanged under SLURM, "
        "with --gpus 0, or where there are no GPUs.",
        usage="revunet gpu-slots --gpus N [--processes P] [--pool DIR] [--wait-seconds S] -- COMMAND [ARGS...]",
    )
    slots.add_argument("--gpus", type=non_negative_int, required=True, help="how many GPUs the command needs")
    slots.add_argument(
        "--processes",
        type=non_negative_int,
        default=0,
        help="the command starts this many processes, one per GPU (torchrun): refused on fewer GPUs (default: 0, no check)",
    )
    slots.add_argument(
        "--pool",
        type=Path,
        default=None,
        help="the folder of lock files (default: $REVUNET_GPU_POOL, else $TMPDIR/revunet-gpu-slots-<uid>)",
    )
    slots.add_argument(
        "--wait-seconds", type=float, default=None, help="give up after waiting this long for free GPUs (default: wait)"
    )
    slots.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    slots.set_defaults(run=_gpu_slots)
