"""`revunet processes`: how many processes a data-parallel job starts on the machine it runs on.

The smoke run's launcher for a multi-GPU experiment (``torchrun --nproc_per_node=$(revunet
processes ...)``): one process per GPU, up to the experiment's GPU count, where CUDA is there;
elsewhere a fixed number of CPU processes, which join the process group over gloo, so the
distributed path (sharded data, DDP, rank 0 writing) runs on a laptop too. Decided on the node
that runs the job, not where Snakemake plans it. With ``--predicted`` (the job's predicted peak),
the CPU processes are lowered to as many as this node's memory holds (:mod:`revunet.memory.fit`),
at least one: `revunet train --predicted` refuses a job whose one process does not fit.
"""

from __future__ import annotations

import argparse
import sys

from revunet.commands._arguments import positive_int


def process_count(gpus: int, without_gpu: int) -> int:
    """``min(gpus, visible CUDA devices)`` where there is one, else ``without_gpu``."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return min(gpus, visible) if visible else without_gpu


def _processes(args: argparse.Namespace) -> int:
    count = process_count(args.gpus, args.without_gpu)
    if args.predicted is not None and count == args.without_gpu and not _has_gpu():
        from revunet.memory.fit import budget

        try:
            fitting = max(1, budget(args.predicted, "cpu").processes(count))
        except (OSError, ValueError) as error:
            raise SystemExit(f"revunet processes: {error}") from None
        if fitting < count:
            print(f"revunet processes: {fitting} of {count} CPU processes fit this node's memory", file=sys.stderr)
        count = fitting
    print(count)
    return 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet processes`` to the command-line parser."""
    processes = commands.add_parser(
        "processes",
        help="print the process count of a data-parallel job on this machine (GPUs, or a CPU fallback)",
        description="Print how many processes torchrun should start here: one per visible GPU up to "
        "--gpus, or --without-gpu CPU processes (gloo) where CUDA is not available.",
    )
    processes.add_argument("--gpus", type=positive_int, required=True, help="the experiment's GPU count")
    processes.add_argument("--without-gpu", type=positive_int, required=True, help="processes where there is no GPU")
    processes.add_argument(
        "--predicted",
        metavar="JSON",
        help="the job's predicted peak (`revunet memory --experiment --out`): CPU processes lowered to what fits",
    )
    processes.set_defaults(run=_processes)
