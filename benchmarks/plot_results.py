"""Draw the measured benchmark results as the figures of the documentation.

Every CSV in ``benchmarks/results/`` holds the numbers of one figure, exactly as the benchmark
that measured them printed them (docs/benchmarks/ names the command of each); this script draws
each into ``docs/images/benchmarks/<name>.png``. The output is deterministic: fixed size and
resolution, matplotlib's default style whatever the local matplotlibrc says, no timestamp or
software version in the PNG's metadata, so a rerun on unchanged CSVs changes no committed file.
Run from anywhere:

    python benchmarks/plot_results.py [--results benchmarks/results] [--out docs/images/benchmarks]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

from matplotlib import style
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO / "docs" / "images" / "benchmarks"
DPI = 100
METADATA: dict[str, str | None] = {"Software": None}  # no matplotlib version in the file

Row = dict[str, str]
Plotter = Callable[[Figure, list[Row]], None]

IMPLEMENTATIONS = ("ours", "twin", "checkpoint", "revtorch", "memcnn", "revlib")
COLOURS = dict(zip(IMPLEMENTATIONS, ("tab:red", "tab:gray", "tab:brown", "tab:blue", "tab:purple", "tab:green")))
SEED_COLOURS = ("tab:blue", "tab:orange", "tab:green")
DEPTHS = (1, 2, 4, 8, 16)


def read_rows(path: Path) -> list[Row]:
    """The rows of a results CSV as dictionaries keyed by its header."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def column(rows: Iterable[Row], key: str) -> list[float]:
    return [float(row[key]) for row in rows]


def where(rows: Iterable[Row], **match: str) -> list[Row]:
    """The rows whose fields equal every ``match`` value."""
    return [row for row in rows if all(row[key] == value for key, value in match.items())]


def plain_log_axis(axis: Axes, which: str, ticks: Sequence[float]) -> None:
    """A log axis labelled with plain numbers at ``ticks`` (depths, MiB, milliseconds)."""
    target = axis.xaxis if which == "x" else axis.yaxis
    (axis.set_xscale if which == "x" else axis.set_yscale)("log")
    target.set_major_locator(FixedLocator(list(ticks)))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_locator(NullLocator())


def plot_reversible_memory(figure: Figure, rows: list[Row]) -> None:
    """Peak memory of one training step per implementation against depth: tracked and allocator."""
    tracked, allocator = figure.subplots(1, 2)
    for name in IMPLEMENTATIONS:
        mine = where(rows, implementation=name)
        depths = column(mine, "depth")
        over = name == "memcnn"
        label = f"{name} (over-counts)" if over else name
        on_top = 3 if name == "ours" else 2  # ours ties the twin at L=1: drawn last, stays visible
        look = {"color": COLOURS[name], "zorder": on_top}
        tracked.plot(depths, column(mine, "peak_mib"), "o--" if over else "o-", label=label, **look)
        allocator.plot(depths, column(mine, "allocator_mib"), "o-", label=name, **look)
    tracked.set_title("tracked live tensors (same accounting for all)")
    allocator.set_title("CPU allocator (incl. 54 MiB conv workspace)")
    for axis, ticks in ((tracked, (20, 30, 50, 100, 200)), (allocator, (70, 100, 150, 200, 300))):
        plain_log_axis(axis, "x", DEPTHS)
        plain_log_axis(axis, "y", ticks)
        axis.set_xlabel("depth L (couplings)")
        axis.set_ylabel("peak MiB (log scale)")
    tracked.legend(loc="upper left")
    figure.suptitle("reversible_core.py: peak memory of one Adam step, C=32, S=32 (2-core AMD EPYC, CPU)")


def plot_reversible_time(figure: Figure, rows: list[Row]) -> None:
    """Median step time per implementation, and ours' time relative to each other implementation."""
    times, ratios = figure.subplots(1, 2)
    for name in IMPLEMENTATIONS:
        mine = where(rows, implementation=name)
        depths = column(mine, "depth")
        times.plot(depths, column(mine, "step_ms"), "o-", color=COLOURS[name], label=name)
        if name != "ours":
            ratios.plot(depths, column(mine, "ours_over_this_time"), "o-", color=COLOURS[name], label=name)
    plain_log_axis(times, "x", DEPTHS)
    plain_log_axis(times, "y", (100, 200, 500, 1000, 2000))
    times.set_ylabel("median step ms (log scale)")
    times.set_title("forward + backward + Adam step")
    times.legend(loc="upper left")
    plain_log_axis(ratios, "x", DEPTHS)
    ratios.axhline(1.0, color="black", linewidth=0.8)
    ratios.axhline(1.3, color="tab:red", linestyle=":", label="target for twin: 1.3")
    ratios.set_ylim(0.7, 1.45)
    ratios.set_ylabel("ours' step time / this implementation's")
    ratios.set_title("above 1: ours is slower")
    ratios.legend(loc="lower right", ncol=2)
    for axis in (times, ratios):
        axis.set_xlabel("depth L (couplings)")
    figure.suptitle("reversible_core.py: step time, C=32, S=32 (2-core AMD EPYC, 2 threads)")


def plot_reconstruction(figure: Figure, rows: list[Row]) -> None:
    """Relative error of inverse(forward(x)) in float32 and float64, and the size of the output."""
    errors, sizes = figure.subplots(1, 2)
    for init, colour in (("default", "tab:blue"), ("conv x3", "tab:orange")):
        mine = where(rows, init=init)
        depths = column(mine, "depth")
        errors.plot(depths, column(mine, "f32_rel_err"), "o-", color=colour, label=f"{init}, float32")
        errors.plot(depths, column(mine, "f64_rel_err"), "s--", color=colour, label=f"{init}, float64")
        sizes.plot(depths, column(mine, "f32_max_abs_y"), "o-", color=colour, label=init)
    ticks = (1, 2, 4, 8, 16, 32, 64)
    plain_log_axis(errors, "x", ticks)
    errors.set_yscale("log")
    errors.set_ylabel("max |inverse(forward(x)) - x| / max |x|")
    errors.set_title("reconstruction error (log scale)")
    errors.legend(loc="center right")
    plain_log_axis(sizes, "x", ticks)
    sizes.set_ylabel("max |y| (float32)")
    sizes.set_title("size of what the inverse subtracts")
    sizes.legend(loc="upper left")
    for axis in (errors, sizes):
        axis.set_xlabel("depth L (couplings)")
    figure.suptitle("reconstruction_error.py: residual_coupling_sequence(16, L, 4), input (2, 16, 16, 16, 16)")


def plot_time_overhead(figure: Figure, rows: list[Row]) -> None:
    """Step times of each reversible model and its twin, and their ratio against the targets."""
    times, ratios = figure.subplots(1, 2)
    names = [row["case"].replace(" (small)", "") for row in rows]
    positions = list(range(len(rows)))
    for offset, key, colour, label in (
        (-0.2, "reversible_ms", "tab:red", "reversible"),
        (0.2, "twin_ms", "tab:gray", "twin"),
    ):
        bars = times.bar([p + offset for p in positions], column(rows, key), 0.4, color=colour, label=label)
        times.bar_label(bars, fmt="%g", fontsize=7)
    times.set_ylabel("median step ms")
    times.set_title("one training step, batch 1, 64³, widths 16-128")
    times.legend(loc="upper right")
    bars = ratios.bar(positions, column(rows, "ratio"), 0.6, color="tab:red")
    ratios.bar_label(bars, fmt="%g", fontsize=8)
    ratios.axhline(1.3, color="tab:red", linestyle=":", label="our target: 1.3")
    ratios.axhline(1.5, color="black", linestyle="--", label='papers: "about 50 %"')
    ratios.set_ylim(min([0.9, *column(rows, "ratio")]) - 0.05, max([1.6, *column(rows, "ratio")]) + 0.05)
    ratios.set_ylabel("reversible / twin step time")
    ratios.set_title("cost of recomputation")
    ratios.legend(loc="upper right")
    for axis in (times, ratios):
        axis.set_xticks(positions, names, rotation=15)
    figure.suptitle("time_overhead.py: reversible vs twin (2 CPU cores, 2 threads)")


def plot_resident_memory(figure: Figure, rows: list[Row]) -> None:
    """The resident set's rise in one training step per case, before and after, beside the accounted bytes."""
    axis = figure.subplots(1, 1)
    cases = list(dict.fromkeys(row["case"] for row in rows))
    codes = list(dict.fromkeys(row["code"] for row in rows))
    width = 0.8 / len(codes)
    for number, (code, colour) in enumerate(zip(codes, ("tab:gray", "tab:blue"))):
        picked = [where(rows, code=code, case=case)[0] for case in cases]
        positions = [i + (number - (len(codes) - 1) / 2) * width for i in range(len(cases))]
        bars = axis.bar(positions, column(picked, "rss_rise_mib"), width, color=colour, label=f"resident rise, {code}")
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
        axis.scatter(positions, column(picked, "accounted_rise_mib"), color="black", marker="_", s=300, zorder=3)
    axis.scatter([], [], color="black", marker="_", s=300, label="accounted tensor bytes")
    axis.set_xticks(range(len(cases)), cases, rotation=8)
    axis.set_ylabel("MiB above the resident set before the step")
    axis.legend(loc="upper left")
    figure.suptitle("resident_memory.py: one real CPU training step of Brügger et al.'s networks at 128³")


QUALITY_GROUPS = (
    ("old (whole volumes)", "reversible"),
    ("old (whole volumes)", "twin"),
    ("demo (crops)", "reversible"),
    ("demo (crops)", "twin"),
)


def quality_panel(axis: Axes, rows: list[Row], region: str) -> None:
    """One region's Dice: each seed's best.pt (filled) and last.pt (hollow) per recipe and model."""
    axis.axhline(float(where(rows, model="classifier")[0][region]), color="black", linestyle="--")
    for group, (recipe, model) in enumerate(QUALITY_GROUPS):
        for seed, colour in enumerate(SEED_COLOURS):
            x = group + 0.2 * (seed - 1)
            for checkpoint, face in (("best.pt", colour), ("last.pt", "none")):
                for row in where(rows, recipe=recipe, model=model, seed=str(seed), checkpoint=checkpoint):
                    axis.plot([x], [float(row[region])], "o", color=colour, markerfacecolor=face, markersize=6)
    axis.set_xticks(range(len(QUALITY_GROUPS)), [f"{recipe.split()[0]}\n{model}" for recipe, model in QUALITY_GROUPS])
    axis.set_title(region if region != "mean" else "mean of WT, TC, ET")
    axis.set_ylabel("Dice on the 4 held-out cases")


def plot_quality_seeds(figure: Figure, rows: list[Row]) -> None:
    """Dice per region of the old whole-volume recipe and the demo recipe, three seeds, both models."""
    axes = figure.subplots(2, 2).ravel()
    for axis, region in zip(axes, ("WT", "TC", "ET", "mean")):
        quality_panel(axis, rows, region)
    handles = [axes[0].plot([], [], "o", color=c, label=f"seed {s}")[0] for s, c in enumerate(SEED_COLOURS)]
    handles.append(
        axes[0].plot([], [], "o", color="black", markerfacecolor="none", label="last.pt where it differs")[0]
    )
    handles.append(axes[0].plot([], [], "--", color="black", label="voxel classifier (the bar)")[0])
    figure.legend(handles=handles, loc="outside lower center", ncol=5)
    figure.suptitle("quality_bar.py: filled = best.pt; old = rounds 1-2 (160 whole-volume steps), demo = round 3")


def plot_quality_validation(figure: Figure, rows: list[Row]) -> None:
    """Validation mean Dice every 5 epochs of the demo recipe, three seeds, reversible and twin."""
    axis = figure.subplots()
    for model, marker in (("reversible", "o-"), ("twin", "s--")):
        for seed, colour in enumerate(SEED_COLOURS):
            mine = where(rows, model=model, seed=str(seed))
            axis.plot(
                column(mine, "epoch"),
                column(mine, "val_mean_dice"),
                marker,
                color=colour,
                label=f"{model}, seed {seed}",
            )
    axis.axhline(0.734, color="black", linestyle=":", label="voxel classifier 0.734")
    axis.axvline(35, color="gray", linewidth=0.8)
    axis.text(35.5, 0.03, "lr x0.2 from here", color="gray", transform=axis.get_xaxis_transform())
    axis.set_xticks(range(5, 50, 5))
    axis.set_xlabel("epoch (8 optimiser steps each)")
    axis.set_ylabel("validation mean Dice (4 held-out volumes)")
    axis.legend(loc="lower center", bbox_to_anchor=(0.42, 0.0), ncol=2)
    figure.suptitle("quality_bar.py, demo recipe: validation curves (one CPU thread, about 130 CPU-s per run)")


def _voxels(step: str) -> float:
    """Patch voxels of an ``AxBxC/N`` cell (0 for ``none``: nothing fits)."""
    if step == "none":
        return 0.0
    return float(np.prod([int(v) for v in step.split("/")[0].split("x")]))


def plot_nnunet_resenc(figure: Figure, rows: list[Row]) -> None:
    """nnU-Net's ResEnc presets: peaks at the planned step beside published VRAM; patches within 11 GiB."""
    peaks, patches = figure.subplots(1, 2)
    presets = [r["preset"] for r in rows]
    x = np.arange(len(rows))
    peaks.bar(x - 0.2, column(rows, "original_gib"), 0.4, label="nnU-Net's ResEnc (accounted)")
    peaks.bar(x + 0.2, column(rows, "reversible_gib"), 0.4, label="reversible counterpart, same patch and batch")
    published = [v * 1e9 / 2**30 for v in column(rows, "published_vram_gb")]
    peaks.scatter(x - 0.2, published, marker="_", s=600, color="black", label="published VRAM (nnU-Net docs)")
    peaks.axhline(11, color="grey", linestyle=":", label="11 GiB")
    peaks.set_xticks(x, [f"{r['preset']}\n{r['patch']}, batch {r['batch']}" for r in rows])
    peaks.set_ylabel("training step peak (GiB)")
    peaks.legend(loc="upper left")
    original = [_voxels(r["original_at_11gib"]) / 1e6 for r in rows]
    reversible = [_voxels(r["reversible_at_11gib"]) / 1e6 for r in rows]
    patches.bar(x - 0.2, original, 0.4, label="nnU-Net's ResEnc")
    patches.bar(x + 0.2, reversible, 0.4, label="reversible counterpart")
    patches.set_xticks(x, presets)
    patches.set_ylabel("patch within 11 GiB (million voxels)")
    patches.legend(loc="upper left")


PLOTTERS: dict[str, tuple[Plotter, tuple[float, float]]] = {
    "reversible-core-memory": (plot_reversible_memory, (11.0, 4.6)),
    "reversible-core-time": (plot_reversible_time, (11.0, 4.6)),
    "reconstruction-error": (plot_reconstruction, (11.0, 4.6)),
    "time-overhead": (plot_time_overhead, (11.0, 4.6)),
    "resident-memory": (plot_resident_memory, (10.0, 5.0)),
    "quality-bar-seeds": (plot_quality_seeds, (10.0, 7.5)),
    "quality-bar-validation": (plot_quality_validation, (9.0, 5.0)),
    "nnunet-resenc": (plot_nnunet_resenc, (11.0, 4.6)),
}


def draw(source: Path, out_dir: Path) -> Path:
    """Draw one results CSV into ``out_dir/<its name>.png``; a CSV without a plotter is an error."""
    if source.stem not in PLOTTERS:
        raise ValueError(f"{source.name}: no figure is defined for it (known: {', '.join(sorted(PLOTTERS))})")
    plotter, size = PLOTTERS[source.stem]
    small_text_and_grid = matplotlib.rc_context(
        {"font.size": 9.0, "axes.titlesize": 10.0, "legend.fontsize": 8.0, "axes.grid": True, "grid.alpha": 0.3}
    )
    with style.context("default"), small_text_and_grid:
        figure = Figure(figsize=size, dpi=DPI, layout="constrained")
        plotter(figure, read_rows(source))
        target = out_dir / f"{source.stem}.png"
        figure.savefig(target, dpi=DPI, metadata=METADATA)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the CSVs (default benchmarks/results)")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder of the PNGs (default docs/images/benchmarks)")
    args = parser.parse_args(argv)
    sources = sorted(args.results.glob("*.csv"))
    if not sources:
        parser.error(f"no CSV in {args.results}")
    args.out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        print(f"{source.name} -> {draw(source, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
