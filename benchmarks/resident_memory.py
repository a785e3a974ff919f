"""Peak resident-set growth of one real CPU training step: the memory saving on real tensors.

The memory tables count tensor bytes exactly (``revunet memory``). This script checks them
against the operating system: each case runs in a fresh process that builds the model, takes a
warm-up step (Adam's state then exists), resets the kernel's high-water mark of the resident
set (``/proc/self/clear_refs``), takes one more step, forward, the paper's loss, backward and
Adam, and reports how far the resident set rose above where it started. glibc is told to
serve every block above 64 KiB with ``mmap`` and to return it on free
(``MALLOC_MMAP_THRESHOLD_``), so the resident set follows the live tensors rather than a
malloc cache. The figure also holds what tensor accounting cannot see (im2col buffers of CPU
convolutions, allocator slack), so it is a little above the accounted peak.

``python benchmarks/resident_memory.py --out benchmarks/results/resident-memory.csv`` measures
Brügger et al.'s reversible U-Net and its non-reversible baseline at 128³ and the reversible
network's twin; ``--size`` changes the cube. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported from the repo root

from reversible_core import cpu_model, render, source_state

MIB = 2**20
# (name, registry model, parameters): Brügger et al.'s Table 1 rows at one input size.
CASES = (
    ("Baseline (NO_NEW30)", "nonewnet", {}),
    ("Reversible 1/1", "partially_reversible", {}),
    ("Reversible 1/1, non-reversible twin", "partially_reversible", {"memory_saving": False}),
)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(model_name: str, params: dict, size: int) -> dict:
    """In a fresh process: the resident-set rise of one step, and the accounted peak of the same step."""
    import gc

    import torch

    from revunet.memory.accounting import measure_training_step
    from revunet.models import build_model
    from revunet.tasks import get_task
    from revunet.training.losses import LOSSES

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    torch.manual_seed(0)
    task = get_task("brats")
    model = build_model(model_name, **params)
    loss_fn = LOSSES["bruegger2019"]()
    image = torch.randn(1, task.in_channels, size, size, size)
    labels = torch.randint(0, 5, (1, size, size, size), dtype=torch.uint8)
    targets = task.targets(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        loss = loss_fn(model(image), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: Adam's moments exist from here on, as in every later step
    gc.collect()
    start = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    step()
    rise = (_status_kib("VmHWM") - start) * 1024
    accounted = measure_training_step(
        model, image.shape, mode="fake", loss_fn=loss_fn, target_shape=targets.shape, target_dtype=targets.dtype
    )
    before_step = sum(accounted.breakdown[c] for c in ("parameters", "buffers", "optimizer_state"))
    return {"rss_rise_mib": rise / MIB, "accounted_rise_mib": (accounted.peak_bytes - before_step) / MIB}


def measure(size: int) -> pd.DataFrame:
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for name, model_name, params in CASES:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import resident_memory as r; "
            "print(json.dumps(r.child(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))))"
        )
        args = [sys.executable, "-c", code, str(Path(__file__).parent), model_name, json.dumps(params), str(size)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"case": name, "input": f"{size}³", **{k: round(v, 1) for k, v in result.items()}})
        print(f"  {name}: {rows[-1]}", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    baseline = table.loc[0, "rss_rise_mib"]
    table["rss_vs_baseline"] = (table["rss_rise_mib"] / baseline).round(3)
    table["rss_over_accounted"] = (table["rss_rise_mib"] / table["accounted_rise_mib"]).round(3)
    return table


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="edge of the cubic input (default 128)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (needs tabulate)")
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("resident_memory.py needs Linux (/proc/self/clear_refs resets the peak resident set)")
    print(f"{source_state()}; {cpu_model()}", file=sys.stderr)
    table = measure(args.size)
    print(render(table, args.markdown))
    if args.out:
        from revunet.atomic import write_text_atomic

        write_text_atomic(args.out, table.to_csv(index=False))


if __name__ == "__main__":
    main()
