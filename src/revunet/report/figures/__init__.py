"""The report's figures: training curves, score distributions, memory against the papers, examples.

Each figure is drawn on a matplotlib ``Figure`` with the Agg canvas (no display, no pyplot
state shared between figures) and written as PNG and PDF through
:func:`revunet.atomic.write_bytes_atomic`, so a killed job never leaves half a figure. Inputs
are read with the readers of :mod:`revunet.report.inputs` (same formats, same errors naming the
file at fault). A figure whose inputs do not exist yet is still written, with a panel saying
"not run", so that the set of files is the same for every run of the workflow.

Figures (``<name>.png`` and ``<name>.pdf``, drawn by :mod:`.plots` and :mod:`.examples`) and their
captions (:data:`CAPTIONS`, also written to ``index.csv`` with columns ``file, caption``):

- ``training_curves``: one panel per experiment, training loss and validation mean Dice / EMA;
- ``dice_distribution``, ``hd95_distribution``: per-case scores per region and architecture, one
  panel per paper table;
- ``memory_vs_paper``: paper vs measured peak memory of each row, one panel per paper table;
- ``memory_vs_depth``: Brügger et al.'s encoder depths 1-4 (paper, measured, non-reversible twin)
  and the activation memory of a coupling chain against its length (``revunet complexity``);
- ``memory_modules_<table>``: per paper memory table, each row's peak as stacked bars by owning module
  (``<table>_modules.csv``);
- ``example_segmentation_<dataset>``: an axial slice of each modality of the first test case
  with reference (solid) and predicted (dashed) contours, one figure per dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from revunet.atomic import write_text_atomic
from revunet.catalog import EXAMPLE_FIGURE, MEMORY_TABLES, MODULES_FIGURE
from revunet.experiments.recipe import Experiment
from revunet.report.figures.examples import EXAMPLE_CAPTION, example_figure
from revunet.report.figures.modules import MODULES_CAPTION, memory_modules
from revunet.report.figures.plots import (
    memory_tables,
    memory_vs_depth,
    memory_vs_paper,
    save_figure,
    score_distribution,
    score_frames,
    training_curves,
)
from revunet.report.inputs import (
    ReportContext,
    ReportInputError,
    ReportInputs,
    complexity_table,
    experiment_order,
)
from revunet.report.inputs import memory_modules as modules_table
from revunet.report.tables.smoke import SMOKE_NOTE

CAPTIONS = {
    "training_curves": "Training curves, one panel per experiment: training loss (left axis) and validation mean "
    "Dice with its exponential moving average used for early stopping (right axis) against the epoch.",
    "dice_distribution": "Per-case Dice (%) on the test cases, per region and architecture (box: quartiles, "
    "points: cases), one panel per paper table.",
    "hd95_distribution": "Per-case HD95 (mm, 95th percentile of the pooled symmetric surface distances) on the "
    "test cases, per region and architecture, one panel per paper table.",
    "memory_vs_paper": "Peak training memory of every paper table row: the paper's figure next to ours, measured by "
    "exact tensor accounting at the paper's full size and protocol (`revunet memory --table`); hatched bars are the "
    "non-reversible twin (same parameters, plain autograd).",
    "memory_vs_depth": "Memory against depth. Left: Brügger et al.'s full-volume rows with 1-4 reversible blocks per "
    "encoder level, paper vs measured vs the non-reversible twin. Right: activation memory of a chain of L couplings "
    "stored naively, with checkpointing and reversibly (`revunet complexity`), log-log.",
    EXAMPLE_FIGURE: EXAMPLE_CAPTION,
    **{f"{MODULES_FIGURE}_{table}": MODULES_CAPTION for table in MEMORY_TABLES},
}


@dataclass(frozen=True)
class FigureInputs:
    """Where the figures' inputs live (any may be None: its figures then say "not run")."""

    training: Path | None = None
    evaluations: Path | None = None
    memory: Path | None = None
    complexity: Path | None = None
    predictions: Path | None = None
    data_root: Path | None = None
    experiments: Path | None = None
    examples: Mapping[str, str] = field(default_factory=dict)  # dataset -> experiment shown
    smoke: bool = False  # a smoke run: every figure and caption marked (revunet.report.tables.smoke)


def parse_examples(values: Sequence[str]) -> dict[str, str]:
    """``--example DATASET=EXPERIMENT`` values as a mapping; an error names a malformed one."""
    examples = {}
    for value in values:
        dataset, sep, experiment = value.partition("=")
        if not sep or not dataset.strip() or not experiment.strip():
            raise ReportInputError(f"--example must read DATASET=EXPERIMENT, got {value!r}")
        examples[dataset.strip()] = experiment.strip()
    return examples


def write_figures(inputs: FigureInputs, out: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Draw and write every figure into ``out``, then ``index.csv``; returns (file, caption) per figure."""
    out = Path(out)
    folders = ReportInputs(
        evaluations=inputs.evaluations,
        memory=inputs.memory,
        training=inputs.training,
        experiments=inputs.experiments,
        data_root=inputs.data_root,
    )
    context = ReportContext(folders)  # a row label the papers do not have is an error here too
    experiments = experiment_order(context.experiments)
    unknown = sorted(set(inputs.examples) - {d.name for d in context.datasets})
    if unknown:
        raise ReportInputError(
            f"--example names dataset(s) {unknown} without DATA_ROOT/<dataset>/cases.csv; "
            f"found {[d.name for d in context.datasets]}"
        )
    index: list[tuple[str, str]] = []
    banner = SMOKE_NOTE if inputs.smoke else None
    for name, figure in _fixed_figures(inputs, context, experiments):
        save_figure(figure, out, name, banner)
        index.append((f"{name}.png", CAPTIONS[name]))
    for dataset in context.datasets:
        name = f"{EXAMPLE_FIGURE}_{dataset.name}"
        chosen = inputs.examples.get(dataset.name)
        figure, caption = example_figure(dataset, experiments, inputs.predictions, chosen, context)
        save_figure(figure, out, name, banner)
        index.append((f"{name}.png", caption))
    if banner:
        index = [(file, f"{banner} {caption}") for file, caption in index]
    write_text_atomic(out / "index.csv", pd.DataFrame(index, columns=["file", "caption"]).to_csv(index=False))
    return index


def _fixed_figures(
    inputs: FigureInputs, context: ReportContext, experiments: Sequence[Experiment]
) -> Iterator[tuple[str, Any]]:
    """(name, figure) of every figure besides the examples, each input read when its figure is drawn."""
    yield "training_curves", training_curves(experiments, inputs.training)
    groups = score_frames(experiments, context)
    yield "dice_distribution", score_distribution(groups, "dice", 100.0, "Dice (%)")
    yield "hd95_distribution", score_distribution(groups, "hd95", 1.0, "HD95 (mm)")
    tables = memory_tables(inputs.memory)
    yield "memory_vs_paper", memory_vs_paper(tables)
    complexity = complexity_table(inputs.complexity or (inputs.memory / "complexity.csv" if inputs.memory else None))
    yield "memory_vs_depth", memory_vs_depth(tables.get("bruegger2019"), complexity)
    for table in MEMORY_TABLES:
        yield f"{MODULES_FIGURE}_{table}", memory_modules(table, tables.get(table), modules_table(inputs.memory, table))
