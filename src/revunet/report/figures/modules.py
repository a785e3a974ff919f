"""Where each paper table row's peak goes: stacked bars of the live bytes by owning module.

Drawn from ``<table>.csv`` (which phase holds each row's peak) and ``<table>_modules.csv``
(``revunet memory --table``); the owners that are largest anywhere in the table get their own
colour, the rest are summed as "other", so one row's bar adds up to its measured peak.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from revunet.report.figures.plots import TABLE_TITLES, new_figure, not_run

SHOWN_OWNERS = 9  # colours a reader can tell apart; the rest is "other"

MODULES_CAPTION = (
    "Where the peak goes, one figure per paper memory table: for every row, the bytes live at its peak "
    "(in the phase named under the bar) by the module that created them (module paths to two levels, "
    "e.g. encoder.0, vae.up; 'model' is the network's own forward: skips, pooling, concatenation) "
    "and by category (parameters, gradients, optimizer state, inputs), measured by exact tensor "
    "accounting (`revunet memory --table`, the `_modules.csv` files)."
)


def peak_owners(table: pd.DataFrame, modules: pd.DataFrame) -> pd.DataFrame:
    """Rows x owners (MiB) at each row's peak phase, largest owners first, the rest as "other"."""
    phase = dict(zip(table["row"], table["peak_phase"]))
    at_peak = modules[modules["phase"] == modules["row"].map(phase)]
    wide = at_peak.pivot_table(index="row", columns="module", values="mib", aggfunc="sum", fill_value=0.0)
    wide = wide.reindex(list(table["row"])).fillna(0.0)
    order = wide.max().sort_values(ascending=False).index
    shown = wide[order[:SHOWN_OWNERS]].copy()
    rest = wide[order[SHOWN_OWNERS:]].sum(axis=1)
    if (rest > 0).any():
        shown["other"] = rest
    return shown


def memory_modules(title_key: str, table: pd.DataFrame | None, modules: pd.DataFrame | None) -> Any:
    """The stacked-bar figure of one memory table (a "not run" panel without its files)."""
    figure, axes = new_figure(1, 1, (7.0, 4.2))
    ax = axes[0]
    ax.set_title(f"{TABLE_TITLES[title_key]}: peak by owner", fontsize=9)
    if table is None or modules is None:
        not_run(ax, f"{title_key}: not measured")
        return figure
    owners = peak_owners(table, modules)
    x = np.arange(len(owners))
    bottom = np.zeros(len(owners))
    colours = [f"C{i}" for i in range(10)]
    for index, owner in enumerate(owners.columns):
        values = owners[owner].to_numpy()
        ax.bar(x, values, 0.6, bottom=bottom, label=owner, color=colours[index % 10])
        bottom += values
    labels = [f"{row}\n({phase})" for row, phase in zip(table["row"], table["peak_phase"])]
    ax.set_xticks(x)
    ax.set_xticklabels([label.replace(" full", "\nfull") for label in labels], fontsize=7)
    ax.set_ylabel("live at the peak (MiB)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return figure
