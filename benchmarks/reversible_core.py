"""Peak training memory and step time of our reversible sequence against its twin and the peers.

For each depth L, every implementation runs the same L additive couplings
(F, G = GroupNorm -> LeakyReLU -> Conv3d on C/2 channels, see ``peers.py``) on an
input of shape (1, C, S, S, S), and we report:

* peak memory of one steady-state Adam training step, measured for all of them
  with the same accounting, ``revunet.memory.measure_training_step(mode="cpu")``
  (exact live-tensor bytes);
* the same peak read at the allocator level (every CPU allocation and free
  reported to the PyTorch profiler), as a cross-check that sees what the tensor
  tracker cannot, e.g. storages freed by ``storage.resize_(0)`` (MemCNN);
* median wall time of forward + backward + Adam step after a warm-up step;
* the largest relative gradient difference from the twin on identical weights
  (checked on a small input before timing).

Run ``python benchmarks/reversible_core.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported from the repo root

from peers import (
    BUILDERS,
    TRACKER_CAVEATS,
    available_implementations,
    build,
    clone_pairs,
    coupling_pairs,
    gradient_mismatch,
)
from revunet.memory.accounting import MIB, adam, measure_training_step, sum_of_outputs

GRADIENT_TOLERANCE = 1e-4  # relative to the largest gradient entry; float32 reconstruction is ~1e-7
TIME_TARGET = 1.3  # our step time may be at most this multiple of the twin's


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, shape: tuple[int, ...], device: torch.device
) -> None:
    """One step exactly as ``measure_training_step`` runs it (random input, sum loss, Adam)."""
    x = torch.randn(shape, device=device)
    output = model(x)
    loss = sum_of_outputs(output)
    del output
    loss.backward()
    del loss, x
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def allocator_peak_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, shape: tuple[int, ...]) -> int:
    """Peak bytes held by PyTorch's CPU allocator during one steady-state training step.

    ``model`` and ``optimizer`` must have run a step already (Adam state exists, no
    gradients), as in ``measure_training_step``. The profiler reports every CPU
    allocation and free; the peak of their running sum, plus the bytes that
    already existed (parameters, buffers, Adam state), is the step's peak.
    Unlike the tensor tracker this also counts buffers kernels allocate for
    themselves: on CPU, ``slow_conv3d``'s im2col columns (27x a conv input),
    which dominate this figure and are the same for every implementation.
    """
    from torch.profiler import ProfilerActivity, profile

    existing = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in [*model.parameters(), *model.buffers(), *_state_tensors(optimizer)]
    }
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        training_step(model, optimizer, shape, torch.device("cpu"))
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    running = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):  # stable: same-time events keep their order
        running += nbytes
        peak = max(peak, running)
    return sum(existing.values()) + peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler backend's start/stop lines (written by C++ straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def median_step_ms(
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    shape: tuple[int, ...],
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Median step time of each model after a warm-up step; repeats are interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}

    def timed(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        training_step(models[name], optimizers[name], shape, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    for name in models:  # warm-up: Adam state, allocator caches, kernel selection
        timed(name)
    for _ in range(repeats):
        for name in models:
            times[name].append(timed(name))
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark_depth(
    names: list[str],
    channels: int,
    size: int,
    depth: int,
    groups: int,
    repeats: int,
    device: torch.device,
    check_size: int,
    allocator_check: bool,
) -> list[dict[str, object]]:
    """All measurements for one depth; one row per implementation."""
    shape = (1, channels, size, size, size)
    torch.manual_seed(depth)
    reference = coupling_pairs(channels, depth, groups)
    models = {name: build(name, channels, depth, groups, clone_pairs(reference)) for name in names}
    memory_mode = "cuda" if device.type == "cuda" else "cpu"
    rows = []
    for name, model in models.items():
        row: dict[str, object] = {"depth": depth, "implementation": name, "note": TRACKER_CAVEATS.get(name, "")}
        mismatch = gradient_mismatch(name, channels, depth, groups, check_size)
        row["grad_rel_err"] = mismatch
        row["grad_check"] = "ok" if mismatch <= GRADIENT_TOLERANCE else "MISMATCH"
        try:
            report = measure_training_step(model, shape, mode=memory_mode)
        except Exception as error:  # a peer the tracker cannot follow: say so, report nothing
            row.update(peak_mib=math.nan, activations_mib=math.nan, peak_phase="")
            row["note"] = f"tracker failed: {type(error).__name__}: {error}"[:160]
        else:
            row.update(
                peak_mib=report.peak_bytes / MIB,
                activations_mib=report.breakdown["activations"] / MIB,
                peak_phase=report.peak_phase,
            )
            if report.allocator_peak_bytes is not None:
                row["allocator_mib"] = report.allocator_peak_bytes / MIB
        rows.append(row)
    models = {name: model.to(device) for name, model in models.items()}
    optimizers = {name: adam()([p for p in m.parameters() if p.requires_grad]) for name, m in models.items()}
    step_ms = median_step_ms(models, optimizers, shape, repeats, device)
    for row in rows:
        name = str(row["implementation"])
        row["step_ms"] = step_ms[name]
        if allocator_check and device.type == "cpu":  # after timing: the warm state it needs exists
            row["allocator_mib"] = allocator_peak_bytes(models[name], optimizers[name], shape) / MIB
    return rows


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Ours divided by each row, per depth: below 1 means ours uses less / is faster."""
    ours = table[table.implementation == "ours"].set_index("depth")
    table = table.copy()
    table["ours/this_mem"] = [ours.peak_mib[d] / m for d, m in zip(table.depth, table.peak_mib)]
    table["ours/this_time"] = [ours.step_ms[d] / t for d, t in zip(table.depth, table.step_ms)]
    if "allocator_mib" in table:
        table["ours/this_alloc"] = [ours.allocator_mib[d] / m for d, m in zip(table.depth, table.allocator_mib)]
    return table


def targets(table: pd.DataFrame) -> pd.DataFrame:
    """Per depth: do ours' memory <= every peer's and ours' time <= 1.3x the twin's hold?

    Peers are every implementation but ours and the twin. The tracked comparison
    leaves out peers the tracker cannot follow (:data:`peers.TRACKER_CAVEATS`);
    the allocator comparison includes them all.
    """
    rows = []
    for depth, group in table.groupby("depth"):
        by_name = group.set_index("implementation")
        all_peers = by_name.drop(index=[n for n in ("ours", "twin") if n in by_name.index])
        row: dict[str, object] = {"depth": depth, "ours_mib": by_name.peak_mib["ours"]}
        if "twin" in by_name.index:
            row["ours/twin_mem"] = by_name.peak_mib["ours"] / by_name.peak_mib["twin"]
            row["ours/twin_time"] = by_name.step_ms["ours"] / by_name.step_ms["twin"]
            row[f"time<={TIME_TARGET}x_twin"] = row["ours/twin_time"] <= TIME_TARGET
        tracked_peers = all_peers.drop(index=[n for n in TRACKER_CAVEATS if n in all_peers.index])
        for column, label, peers in (("peak_mib", "tracked", tracked_peers), ("allocator_mib", "alloc", all_peers)):
            if column not in by_name or peers.empty:
                continue
            best = peers[column].idxmin()
            row[f"best_peer_{label}"] = f"{best} {peers[column][best]:.1f}"
            row[f"mem<=peers_{label}"] = bool((by_name[column]["ours"] <= peers[column]).all())
        rows.append(row)
    return pd.DataFrame(rows)


def render(table: pd.DataFrame, markdown: bool) -> str:
    """Three significant digits, as plain text or markdown."""
    if markdown:
        return table.to_markdown(index=False, floatfmt=".3g")
    return table.to_string(index=False, float_format="{:.3g}".format)


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse, like a GPU caching allocator; True if it took.

    On CPU ``slow_conv3d`` allocates an im2col buffer 27x the size of its input
    on every call (54 MiB at C/2=16, S=32). glibc serves blocks that large with
    ``mmap`` and unmaps them on free, so each call page-faults the buffer in
    again: with the default settings most of a step was kernel page-fault time,
    and step times varied by 10-20 % with the allocation pattern. Disabling
    ``mmap`` and heap trimming (``mallopt``) removes that noise for every
    implementation alike; the memory figures count requested bytes and are not
    affected.
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's <malloc.h>
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def source_state() -> str:
    """The commit measured and whether src/ differs from it: the figures belong to that code."""
    import subprocess

    import revunet

    root = Path(__file__).resolve().parent.parent
    imported = Path(revunet.__file__).resolve()
    if not imported.is_relative_to(root / "src"):
        return f"source: revunet imported from {imported.parent} (not this checkout's src/)"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    if not changed:
        return f"source: commit {commit}, src/ clean"
    return f"source: commit {commit} with uncommitted changes to {', '.join(line[3:] for line in changed)}"


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> str:
    """1-minute load average against the core count: other work running skews the timings."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=32, help="C (default 32)")
    parser.add_argument("--size", type=int, default=32, help="spatial size S of the (1, C, S, S, S) input (default 32)")
    parser.add_argument("--groups", type=int, default=8, help="GroupNorm groups on C/2 channels (default 8)")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="default 1 2 4 8 16")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation (default 5)")
    parser.add_argument("--device", default="cpu", help="device for timing (memory: cpu tracker, or cuda mode)")
    parser.add_argument(
        "--implementations", nargs="+", default=list(BUILDERS), choices=list(BUILDERS), help="default: all"
    )
    parser.add_argument("--check-size", type=int, default=8, help="spatial size of the gradient check (default 8)")
    parser.add_argument(
        "--no-allocator-check", action="store_true", help="skip the profiler-based allocator peak (CPU only)"
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's default mmap/trim behaviour (noisier CPU timings, see keep_freed_memory)",
    )
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (needs tabulate)")
    parser.add_argument("--out", type=Path, help="also write the full table to this CSV file")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # MemCNN's storage().resize_
    device = torch.device(args.device)
    names = available_implementations(args.implementations)
    if "ours" not in names:
        raise SystemExit("the benchmark compares against 'ours'; include it in --implementations")
    print(
        f"{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
        f"input (1, {args.channels}, {args.size}, {args.size}, {args.size}), groups {args.groups}"
    )
    malloc = "glibc default"
    if device.type == "cpu" and not args.system_malloc:
        malloc = "malloc keeps freed memory (mallopt)" if keep_freed_memory() else "could not change malloc"
    print(f"{malloc}; load average before: {load_average()}")
    print(source_state())
    rows = []
    started = time.perf_counter()
    for depth in args.depths:
        depth_start = time.perf_counter()
        rows += benchmark_depth(
            names,
            channels=args.channels,
            size=args.size,
            depth=depth,
            groups=args.groups,
            repeats=args.repeats,
            device=device,
            check_size=args.check_size,
            allocator_check=not args.no_allocator_check,
        )
        print(
            f"depth {depth} done in {time.perf_counter() - depth_start:.0f} s (load average {load_average()})",
            flush=True,
        )
    table = add_ratios(pd.DataFrame(rows))
    columns = [
        "depth",
        "implementation",
        "peak_mib",
        "allocator_mib",
        "activations_mib",
        "peak_phase",
        "step_ms",
        "ours/this_mem",
        "ours/this_alloc",
        "ours/this_time",
        "grad_check",
        "grad_rel_err",
        "note",
    ]
    table = table[[c for c in columns if c in table]]
    print()
    print(render(table, args.markdown))
    print()
    print(render(targets(table), args.markdown))
    for name, caveat in TRACKER_CAVEATS.items():
        if name in names:
            print(
                f"note: {name}: {caveat}: the tensor tracker counts a storage until it is garbage-collected "
                "and does not see it shrink to 0 bytes, so this peak is an upper bound; its allocator_mib "
                "is right. It is left out of mem<=peers_tracked."
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
