"""Step-time cost of reversibility: each reversible registry model against its twin.

Brügger et al. report that their reversible U-Net trains about 50 % slower than it would
without recomputation; our target is at most +30 %. For every reversible model of the
registry, this script builds the model and its non-reversible twin (``memory_saving=False``,
the same weights) and times one full training step as the memory tables define it:
forward, the paper's loss, backward and an Adam step, batch 1.

* CPU (always): small widths at 64³ so that a step takes about a second;
* CUDA (when present): also the paper configurations at the paper sizes.

Each figure is the median over ``--repeats`` steps after ``--warmup`` steps, the two
variants interleaved so that drift hits both alike, in one process with
``torch.set_num_threads`` set to the usable cores. Run ``python benchmarks/time_overhead.py --help``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported from the repo root

from reversible_core import (
    cpu_model,
    keep_freed_memory,
    load_average,
    render,
    source_state,
)
from revunet.atomic import write_text_atomic
from revunet.memory.accounting import adam
from revunet.models import build_model
from revunet.training.losses import LOSSES

TIME_TARGET = 1.3  # our reversible step may take at most this multiple of the twin's
PAPER_OVERHEAD = 1.5  # Brügger et al.: "about 50 %" longer training


@dataclass(frozen=True)
class Case:
    """One model configuration at one input size, with the loss of its paper."""

    name: str
    model: str
    params: dict[str, Any]
    size: tuple[int, int, int]
    loss: str
    loss_args: tuple[Any, ...] = ()
    vae: bool = False
    autocast: torch.dtype | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    notes: str = field(default="")

    def build(self, memory_saving: bool) -> nn.Module:
        params = {**self.params, "memory_saving": memory_saving}
        if self.vae:
            params["vae_input_size"] = list(self.size)
        return build_model(self.model, **params)


SMALL = (16, 32, 64, 128)
CPU_CASES = (
    Case(
        "Brügger (small)",
        "partially_reversible",
        {"channels": SMALL, "groups": 8},
        (64, 64, 64),
        "bruegger2019",
        devices=("cpu",),
    ),
    Case(
        "MBConv (small)",
        "partially_reversible",
        {"channels": SMALL, "groups": 8, "block": "mbconv", "expand_ratio": 2},
        (64, 64, 64),
        "pendse2020",
        devices=("cpu",),
    ),
    Case(
        "Partially-InvRes (small)",
        "invres_partial",
        {"channels": SMALL},
        (64, 64, 64),
        "invres2020",
        ("sigmoid",),
        vae=True,
        devices=("cpu",),
    ),
    Case(
        "Fully-InvRes (small)",
        "invres_full",
        {"channels": SMALL},
        (64, 64, 64),
        "invres2020",
        ("sigmoid",),
        vae=True,
        devices=("cpu",),
    ),
)
PAPER_CASES = (
    Case("Brügger 1/1 full volume", "partially_reversible", {}, (160, 192, 160), "bruegger2019", devices=("cuda",)),
    Case(
        "Pendse MBConv-Base",
        "partially_reversible",
        {"channels": (30, 60, 120, 180, 240), "block": "mbconv", "expand_ratio": 2},
        (256, 256, 160),
        "pendse2020",
        autocast=torch.float16,
        devices=("cuda",),
    ),
    Case(
        "Partially-InvRes BraTS",
        "invres_partial",
        {},
        (128, 128, 128),
        "invres2020",
        ("sigmoid",),
        vae=True,
        devices=("cuda",),
    ),
    Case(
        "Fully-InvRes BraTS",
        "invres_full",
        {},
        (128, 128, 128),
        "invres2020",
        ("sigmoid",),
        vae=True,
        devices=("cuda",),
    ),
)


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    image: torch.Tensor,
    target: torch.Tensor,
    autocast: torch.dtype | None,
) -> float:
    """Forward, loss, backward, Adam step: what one iteration of training costs. Returns the loss."""
    with torch.autocast(image.device.type, dtype=autocast, enabled=autocast is not None):
        output = model(image)
        loss = loss_fn(output, target, image)
    del output
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_case(case: Case, device: torch.device, repeats: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """Median step time of the reversible model and of its twin on the same weights and inputs."""
    torch.manual_seed(seed)
    reversible = case.build(memory_saving=True).to(device)
    twin = case.build(memory_saving=False).to(device)
    twin.load_state_dict(reversible.state_dict())
    models = {"reversible": reversible, "twin": twin}
    optimizers = {name: adam()(list(model.parameters())) for name, model in models.items()}
    loss_fn = LOSSES[case.loss](*case.loss_args)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    image = torch.randn((1, 4, *case.size), generator=generator).to(device)
    target = (torch.rand((1, 3, *case.size), generator=generator) > 0.5).float().to(device)
    times: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}

    def timed(name: str, step: int) -> float:
        torch.manual_seed(seed + step)  # the VAE's sampling draws the same noise for both variants
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses[name].append(training_step(models[name], optimizers[name], loss_fn, image, target, case.autocast))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    for step in range(warmup):
        for name in models:
            timed(name, step)
    for step in range(warmup, warmup + repeats):
        for name in models:
            times[name].append(timed(name, step))
    rev_ms, twin_ms = (statistics.median(times[name]) for name in ("reversible", "twin"))
    # Same weights, same input, same optimizer: the two must train identically (up to rounding).
    first_loss_gap = abs(losses["reversible"][0] - losses["twin"][0])
    return {
        "case": case.name,
        "model": case.model,
        "input": "x".join(map(str, case.size)),
        "device": str(device),
        "reversible_ms": round(rev_ms, 1),
        "twin_ms": round(twin_ms, 1),
        "ratio": round(rev_ms / twin_ms, 3),
        f"<= {TIME_TARGET}": rev_ms / twin_ms <= TIME_TARGET,
        "rev_spread_ms": round(max(times["reversible"]) - min(times["reversible"]), 1),
        "twin_spread_ms": round(max(times["twin"]) - min(times["twin"]), 1),
        "first_loss_gap": float(f"{first_loss_gap:.2g}"),
    }


def usable_cores() -> int:
    """Cores this process may run on: the thread count of the timed steps."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    parser.add_argument("--cases", nargs="+", help="only the cases whose name contains one of these words")
    parser.add_argument("--no-cuda", action="store_true", help="skip the paper-size cases even when CUDA is present")
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's default mmap/trim behaviour (noisier CPU timings)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (needs tabulate)")
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(usable_cores())
    runs: list[tuple[Case, torch.device]] = [(case, torch.device("cpu")) for case in CPU_CASES]
    if torch.cuda.is_available() and not args.no_cuda:
        runs += [(case, torch.device("cuda")) for case in PAPER_CASES]
    if args.cases:
        runs = [(c, d) for c, d in runs if any(word.lower() in c.name.lower() for word in args.cases)]
    if not args.system_malloc:
        keep_freed_memory()  # see reversible_core.keep_freed_memory: steadier CPU step times
    print(
        f"{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; CUDA: {torch.cuda.is_available()}"
    )
    print(f"load average before: {load_average()}; {source_state()}")
    rows = []
    started = time.perf_counter()
    for case, device in runs:
        case_start = time.perf_counter()
        rows.append(time_case(case, device, args.repeats, args.warmup))
        print(f"{case.name} on {device}: {time.perf_counter() - case_start:.0f} s (load {load_average()})", flush=True)
    table = pd.DataFrame(rows)
    print()
    print(render(table, args.markdown))
    met = table[f"<= {TIME_TARGET}"].all()
    print(
        f"\nreversible/twin step time: {table['ratio'].min():.2f}-{table['ratio'].max():.2f}; "
        f"target <= {TIME_TARGET} met for {int(table[f'<= {TIME_TARGET}'].sum())} of {len(table)} "
        f"({'all' if met else 'NOT all'}); "
        f"the papers report about {PAPER_OVERHEAD}"
    )
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False))
        print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
