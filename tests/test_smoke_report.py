"""A smoke run's tables and figures say so, and its own table has seconds per step and the memory peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from revunet.cli import main
from revunet.report.tables.smoke import MEASURED_KEY, MEASURED_SOURCE_KEY, PREDICTED_KEY, SMOKE_NOTE
from test_tables import assert_readable, inputs_of, results, tables_by_name  # noqa: F401  (results is a fixture)


def _smoke_log(folder: Path, name: str, first: float, step: float, measured: float | None = None) -> None:
    """A one-epoch log.csv with step timings, and (with ``measured``) the summary's tensor peak."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    log = pd.read_csv(folder / name / "log.csv") if (folder / name / "log.csv").exists() else None
    row = {"epoch": 1, "steps": 2, "train_loss": 1.0, "grad_norm": 1.0, "val_mean_dice": 0.1, "ema_dice": 0.1}
    row.update({"lr": 1e-4, "epoch_seconds": first + step, "first_step_seconds": first, "step_seconds": step})
    row.update({"validation_seconds": 1.5})
    row.update({"peak_memory_mib": 10.0, "time": "2026-12-03T00:00:00"})
    pd.DataFrame([row] if log is None else [{**log.iloc[0].to_dict(), **row}]).to_csv(
        folder / name / "log.csv", index=False
    )
    if measured is not None:
        summary_path = folder / name / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary.update({MEASURED_KEY: measured, MEASURED_SOURCE_KEY: "live_tensor_tracker", "world_size": 2})
        summary.update({"train_seconds": first + step + 1.5})
        summary_path.write_text(json.dumps(summary))


@pytest.fixture
def smoke(results, tmp_path):  # noqa: F811
    compiled, predicted = tmp_path / "train_compiled", tmp_path / "predicted"
    predicted.mkdir()
    _smoke_log(results["train"], "bruegger_baseline", first=12.0, step=4.0, measured=900.0)
    _smoke_log(compiled, "bruegger_baseline", first=60.0, step=2.0)
    (predicted / "bruegger_baseline.json").write_text(json.dumps({PREDICTED_KEY: 1000.0}))
    return results, compiled, predicted


def test_every_table_of_a_smoke_run_is_marked_and_its_own_table_comes_first(smoke):
    results_, compiled, predicted = smoke
    inputs = inputs_of(results_, smoke=True, compiled_training=compiled, predicted_memory=predicted)
    tables = tables_by_name(inputs)
    assert next(iter(tables)) == "smoke"
    for table in tables.values():
        assert table.title.startswith("SMOKE RUN:") and table.caption.startswith(SMOKE_NOTE), table.name
        assert table.markdown().startswith("**SMOKE RUN:")
    rows = tables["smoke"].data.set_index("experiment")
    baseline = rows.loc["bruegger_baseline"]
    assert (baseline["first_step_s"], baseline["step_s"], baseline["compiled_step_s"]) == (12.0, 4.0, 2.0)
    assert (baseline["train_s"], baseline["validation_s"]) == (17.5, 1.5)
    assert baseline["compiled_speedup"] == pytest.approx(2.0)
    assert baseline["measured_over_predicted"] == pytest.approx(0.9)
    assert (baseline["processes"], baseline["measured_by"]) == (2, "live_tensor_tracker")
    assert pd.isna(rows.loc["invres_iseg_full", "step_s"])  # not trained: "not run" in the Markdown
    assert "| invres_iseg_full |" in tables["smoke"].markdown() and "not run" in tables["smoke"].markdown()
    # every table in views of at most 10 columns; the smoke table's: what ran, how fast, how much memory
    assert_readable(tables.values())
    assert [len(view.columns) for view in tables["smoke"].views] == [9, 6, 5]
    memory = tables["smoke"].markdown().split("**Memory**")[1]
    assert "| bruegger_baseline | 900.0 | live_tensor_tracker | 1000.0 | 0.900 |" in memory
    # a real run's tables carry no mark
    assert not any(t.title.startswith("SMOKE") for t in tables_by_name(inputs_of(results_)).values())


def test_tables_command_writes_the_smoke_table_and_refuses_smoke_inputs_without_smoke(smoke, tmp_path):
    results_, compiled, predicted = smoke
    out = tmp_path / "tables"
    common = ["tables", "--experiments", str(results_["experiments"]), "--training", str(results_["train"])]
    extra = ["--compiled-training", str(compiled), "--predicted-memory", str(predicted), "--out", str(out)]
    assert main([*common, "--smoke", *extra]) == 0
    assert (out / "smoke.md").read_text().startswith("**SMOKE RUN: every experiment at its full size**")
    assert pd.read_csv(out / "index.csv")["file"].iloc[0] == "smoke.md"
    speed = pd.read_csv(out / "smoke.speed.csv").set_index("experiment")
    assert speed.loc["bruegger_baseline", "compiled_step_s"] == 2.0 and len(speed.columns) == 5
    assert (out / "smoke.speed.rst").read_text().startswith("{% raw %}\n**SMOKE RUN: every experiment")
    with pytest.raises(SystemExit, match="belong to a smoke run"):
        main([*common, *extra])
    (predicted / "bruegger_baseline.json").write_text("{not json")
    with pytest.raises(SystemExit, match="bruegger_baseline.json: not valid JSON"):
        main([*common, "--smoke", *extra])


def test_every_figure_of_a_smoke_run_is_marked(results, tmp_path):  # noqa: F811
    from revunet.report.figures import FigureInputs, write_figures

    index = write_figures(
        FigureInputs(training=results["train"], experiments=results["experiments"], smoke=True), tmp_path
    )
    assert index and all(caption.startswith(SMOKE_NOTE) for _, caption in index)
    assert pd.read_csv(tmp_path / "index.csv")["caption"].str.startswith("SMOKE RUN").all()
