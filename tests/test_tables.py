"""revunet tables: the papers' numbers exactly, ours computed from the workflow's files, gaps marked "not run".

The fixtures write the workflow's files as the interface notes define them (experiments, metrics,
training logs, memory tables, case tables with tiny NIfTI volumes); ``test_figures.py`` reuses them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.catalog import REPORT_TABLE_VIEWS
from revunet.cli import main
from revunet.data.case_table import write_case_table
from revunet.experiments.recipe import Experiment, write_experiment
from revunet.papers import paper_results
from revunet.report.inputs import ReportInputError, ReportInputs, parse_data_descriptions
from revunet.report.markdown import MAX_VIEW_COLUMNS, ReportTable, TableView, rst_text
from revunet.report.tables import build_tables, write_tables

BRATS_CASES = ("BraTS20_Training_001", "BraTS20_Training_002")
ISEG_CASES = ("subject-1",)
METRICS = ("dice", "hd95", "hausdorff", "sensitivity", "specificity")


def write_experiments(folder: Path, experiments: list[dict]) -> None:
    for spec in experiments:
        write_experiment(folder / f"{spec['name']}.json", Experiment.from_dict(spec))


def write_metrics(folder: Path, name: str, cases: tuple[str, ...], regions: tuple[str, ...], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "experiment": name,
            "case_id": case,
            "region": region,
            "dice": rng.uniform(0.5, 0.95),
            "hd95": rng.uniform(1, 20),
            "hausdorff": rng.uniform(5, 40),
            "sensitivity": 0.9,
            "specificity": 0.99,
        }
        for case in cases
        for region in regions
    ]
    frame = pd.DataFrame(rows)
    (folder / name).mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name / "metrics.csv", index=False)
    return frame


def write_training(folder: Path, name: str, epochs: int, validate_every: int = 1) -> pd.DataFrame:
    rows = []
    for epoch in range(1, epochs + 1):
        validated = epoch % validate_every == 0
        dice = 0.3 + 0.04 * epoch if validated else None
        rows.append(
            {
                "epoch": epoch,
                "steps": 4 * epoch,
                "train_loss": 1.0 / epoch,
                "loss_dice": 1.0 / epoch,
                "val_dice_WT": dice,
                "val_dice_TC": dice,
                "val_dice_ET": dice,
                "val_mean_dice": dice,
                "ema_dice": dice and dice * 0.9,
                "lr": 1e-4,
                "epoch_seconds": 1.0,
                "peak_memory_mib": 10.0,
                "time": "2025-01-01T00:00:00",
            }
        )
    log = pd.DataFrame(rows)
    (folder / name).mkdir(parents=True, exist_ok=True)
    log.to_csv(folder / name / "log.csv", index=False)
    best = log.dropna(subset=["val_mean_dice"]).iloc[-2]  # pretend the best epoch is the last-but-one validation
    summary = {
        "experiment": name,
        "epochs_completed": epochs,
        "best_epoch": int(best["epoch"]),
        "best_val_mean_dice": float(best["val_mean_dice"]),
        "best_ema_dice": float(best["ema_dice"]),
        "stopped": "max_epochs",
        "train_seconds": 10.0,
        "peak_memory_mib": 10.0,
        "parameters": 100,
        "device": "cpu",
        "world_size": 1,
    }
    (folder / name / "summary.json").write_text(json.dumps(summary))
    return log


def write_memory_table(folder: Path, table: str) -> pd.DataFrame:
    """A memory table in `revunet memory --table` columns, measured = 0.9 x paper, twins on reversible rows."""
    paper = paper_results()[table]
    factor = 1.0 if paper["memory_unit"] == "MiB" else 1024.0
    rows = []
    for i, entry in enumerate(paper["rows"]):
        paper_mb = float(entry["memory"]) * factor
        row = {
            "table": table,
            "row": entry["row"],
            "model": "m",
            "input_shape": "128x128x128",
            "paper_value": entry["memory"],
            "paper_unit": paper["memory_unit"],
            "paper_mb": paper_mb,
            "measured_mb": round(0.9 * paper_mb, 1),
            "ratio": 0.9,
            "activations_mb": 1.0,
            "twin_mb": None if i == 0 else round(1.5 * paper_mb, 1),
        }
        if table == "pendse2020":
            row.update(budget_mb=14336.0, fits_budget=True)
        rows.append(row)
    frame = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{table}.csv", index=False)
    return frame


def write_volume(path: Path, data: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path)


def write_brats_dataset(root: Path, synthetic: bool = True) -> pd.DataFrame:
    """Two tiny BraTS-2020-layout cases (a head with a nested tumour); a synth manifest if ``synthetic``."""
    raw = root / "raw"
    rows = []
    grid = np.indices((20, 20, 12))
    head = ((grid[0] - 10) ** 2 + (grid[1] - 10) ** 2 + ((grid[2] - 6) * 1.5) ** 2) < 70
    for k, case in enumerate(BRATS_CASES):
        distance = (grid[0] - 9 - k) ** 2 + (grid[1] - 10) ** 2 + (grid[2] - 7) ** 2
        label = np.where(distance < 12, 2, 0) + np.where(distance < 6, -1, 0) + np.where(distance < 2, 3, 0)
        row = {"case_id": case, "task": "brats", "layout": "brats2020"}
        for m, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            image = head * (100.0 + 10 * m) + (label > 0) * 50.0
            row[modality] = write_volume(raw / case / f"{case}_{modality}.nii.gz", image.astype(np.float32))
        row["label"] = write_volume(raw / case / f"{case}_seg.nii.gz", label.astype(np.uint8))
        rows.append(row)
    if synthetic:
        (raw / "synth_manifest.json").write_text(json.dumps({"settings": {"generator": "revunet.data.synth"}}))
    cases = pd.DataFrame(rows)
    write_case_table(cases, root / "cases.csv")
    return cases


def write_iseg_dataset(root: Path) -> pd.DataFrame:
    """One tiny iSeg case (T1, T2; labels on disk 0/10/150/250), real-data style (no manifest)."""
    grid = np.indices((16, 16, 10))
    radius = np.sqrt((grid[0] - 8) ** 2 + (grid[1] - 8) ** 2 + (grid[2] - 5) ** 2)
    label = np.select([radius < 2.5, radius < 4.5, radius < 6.5], [250, 150, 10], 0).astype(np.uint8)
    case = ISEG_CASES[0]
    row = {
        "case_id": case,
        "task": "iseg",
        "layout": "iseg",
        "t1": write_volume(root / "raw" / f"{case}-T1.nii.gz", (label > 0) * 100.0 + label * 0.1),
        "t2": write_volume(root / "raw" / f"{case}-T2.nii.gz", (label > 0) * 80.0 - label * 0.1 + 30.0 * (label > 0)),
        "label": write_volume(root / "raw" / f"{case}-label.nii.gz", label),
    }
    cases = pd.DataFrame([row])
    write_case_table(cases, root / "cases.csv")
    return cases


def write_predictions(folder: Path, name: str, cases: pd.DataFrame) -> None:
    """The reference label itself as the prediction (disk values, relative paths), as `revunet infer` lists them."""
    rows = []
    for _, case in cases.iterrows():
        target = folder / name / f"{case['case_id']}.nii.gz"
        image = nib.load(case["label"])
        write_volume(target, np.asarray(image.dataobj).astype(np.uint8))
        rows.append({"case_id": case["case_id"], "prediction": target.name, "seconds": 0.1})
    pd.DataFrame(rows).to_csv(folder / name / "predictions.csv", index=False)


def write_complexity(path: Path) -> pd.DataFrame:
    """A `revunet complexity` table: activations grow as L, as sqrt(L) and not at all."""
    rows = []
    for method, claimed, exponent in (
        ("naive", "O(L)", 1.0),
        ("checkpointing", "O(sqrt L)", 0.5),
        ("reversible", "O(1)", 0.0),
    ):
        for depth in (1, 2, 4, 8, 16):
            rows.append(
                {
                    "depth": depth,
                    "method": method,
                    "segments": None,
                    "peak_mb": 10.0 + 5 * depth**exponent,
                    "activations_mb": 5.0 * depth**exponent,
                    "peak_phase": "forward",
                    "growth_exponent": exponent - 0.01,
                    "claimed": claimed,
                    "claimed_exponent": exponent,
                    "channels": 60,
                    "input": "64^3",
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


EXPERIMENTS = [
    {
        "name": "bruegger_baseline",
        "task": "brats",
        "model": "nonewnet",
        "table": "bruegger2019",
        "row": "Baseline",
        "paper": "bruegger2019",
        "epochs": 3,
    },
    {
        "name": "bruegger_rev_1_1_full",
        "task": "brats",
        "model": "partially_reversible",
        "table": "bruegger2019",
        "row": "Reversible 1/1 full",
        "epochs": 3,
    },
    {
        "name": "invres_iseg_full",
        "task": "iseg",
        "model": "invres_full",
        "table": "invres_iseg",
        "row": "Fully-InvRes",
        "epochs": 3,
    },
    {
        "name": "pendse_baseline",
        "task": "brats",
        "model": "partially_reversible",
        "table": "pendse2020",
        "row": "Baseline",
        "epochs": 30,
        "snapshot_epochs": [3],
    },
]


@pytest.fixture
def results(tmp_path: Path) -> dict[str, Path]:
    """A results/ tree: four experiments, three evaluated, one trained, memory of two tables, two datasets."""
    paths = {key: tmp_path / key for key in ("experiments", "evaluation", "train", "memory", "data", "predictions")}
    for path in paths.values():
        path.mkdir()
    write_experiments(paths["experiments"], EXPERIMENTS)
    write_metrics(paths["evaluation"], "bruegger_baseline", BRATS_CASES, ("WT", "TC", "ET"), seed=1)
    write_metrics(paths["evaluation"], "invres_iseg_full", ISEG_CASES, ("CSF", "GM", "WM"), seed=2)
    write_metrics(paths["evaluation"], "pendse_baseline", BRATS_CASES, ("WT", "TC", "ET"), seed=3)
    write_metrics(paths["evaluation"], "pendse_baseline/epoch_0003", BRATS_CASES, ("WT", "TC", "ET"), seed=4)
    write_training(paths["train"], "pendse_baseline", epochs=30, validate_every=2)
    write_training(paths["train"], "bruegger_baseline", epochs=3)
    write_memory_table(paths["memory"], "bruegger2019")
    write_memory_table(paths["memory"], "pendse2020")
    brats = write_brats_dataset(paths["data"] / "brats")
    iseg = write_iseg_dataset(paths["data"] / "iseg")
    write_predictions(paths["predictions"], "bruegger_baseline", brats)
    write_predictions(paths["predictions"], "invres_iseg_full", iseg)
    return paths


def inputs_of(paths: dict[str, Path], **changes) -> ReportInputs:
    values = dict(
        evaluations=paths["evaluation"],
        memory=paths["memory"],
        training=paths["train"],
        experiments=paths["experiments"],
        data_root=paths["data"],
        preset="demo",
    )
    values.update(changes)
    return ReportInputs(**values)


def tables_by_name(inputs: ReportInputs) -> dict:
    return {table.name: table for table in build_tables(inputs)}


def test_bruegger_table_has_paper_numbers_exactly_and_our_means(results):
    table = tables_by_name(inputs_of(results))["bruegger2019"]
    frame = table.data.set_index("row")
    paper = paper_results()["bruegger2019"]
    assert list(frame.index) == [entry["row"] for entry in paper["rows"]]
    for entry in paper["rows"]:
        assert frame.loc[entry["row"], "paper_memory_mib"] == entry["memory"]
        for region in ("ET", "WT", "TC"):
            assert frame.loc[entry["row"], f"paper_dice_{region}"] == entry["dice"][region]
            assert frame.loc[entry["row"], f"paper_hd95_{region}"] == entry["hd95"][region]
    metrics = pd.read_csv(results["evaluation"] / "bruegger_baseline" / "metrics.csv")
    for region in ("ET", "WT", "TC"):
        expected = round(metrics.loc[metrics.region == region, "dice"].mean() * 100, 2)
        assert frame.loc["Baseline", f"reproduced_dice_{region}"] == pytest.approx(expected, abs=1e-9)
        assert frame.loc["Baseline", f"reproduced_hd95_{region}"] == pytest.approx(
            round(metrics.loc[metrics.region == region, "hd95"].mean(), 2)
        )
    assert frame.loc["Baseline", "n_cases"] == 2
    assert frame.loc["Baseline", "measured_memory_mib"] == pytest.approx(0.9 * 6646, abs=0.1)
    assert pd.isna(frame.loc["Baseline", "twin_memory_mib"])  # not reversible: no twin
    assert frame.loc["Reversible 2/1 full", "twin_memory_mib"] == pytest.approx(1.5 * 9529, abs=0.1)
    # A linked experiment that has not been evaluated, and rows with no experiment at all, are not run.
    assert math.isnan(frame.loc["Reversible 1/1 full", "reproduced_dice_ET"])
    assert frame.loc["Reversible 1/1 full", "experiment"] == "bruegger_rev_1_1_full"
    assert math.isnan(frame.loc["Reversible 4/1 full", "reproduced_hd95_TC"])
    # Paper and reproduced columns of each metric and region stand side by side.
    columns = list(table.data.columns)
    assert columns.index("reproduced_dice_ET") == columns.index("paper_dice_ET") + 1


def test_brats_tables_add_lesion_wise_columns_beyond_the_papers(results):
    metrics_path = results["evaluation"] / "bruegger_baseline" / "metrics.csv"
    metrics = pd.read_csv(metrics_path)
    metrics["lesion_score_dice"] = np.linspace(0.2, 0.9, len(metrics))
    metrics["lesion_score_hd95"] = np.linspace(3.0, 374.0, len(metrics))
    metrics.to_csv(metrics_path, index=False)
    tables = tables_by_name(inputs_of(results))
    frame = tables["bruegger2019"].data.set_index("row")
    for region in ("ET", "WT", "TC"):
        rows = metrics.region == region
        assert frame.loc["Baseline", f"reproduced_lesion_score_dice_{region}"] == pytest.approx(
            round(metrics.loc[rows, "lesion_score_dice"].mean() * 100, 2)
        )
        assert frame.loc["Baseline", f"reproduced_lesion_score_hd95_{region}"] == pytest.approx(
            round(metrics.loc[rows, "lesion_score_hd95"].mean(), 2)
        )
    # The papers' whole-volume columns come first; the lesion-wise ones follow, headed as ours only.
    columns = list(tables["bruegger2019"].data.columns)
    assert columns.index("reproduced_lesion_score_dice_ET") > columns.index("reproduced_hd95_TC")
    assert not any(c.startswith("paper_lesion") for c in columns)
    markdown = tables["bruegger2019"].markdown()
    lesion_wise = markdown[markdown.index("**Lesion-wise**") :]
    assert "beyond the papers" in lesion_wise.splitlines()[2] and "| lesion-wise Dice ET ours |" in lesion_wise
    assert "lesion" not in markdown[: markdown.index("**Lesion-wise**")].split("**Memory**")[1]
    assert "beyond the papers" in tables["bruegger2019"].caption
    # An evaluation without lesion-wise columns (older metrics.csv) leaves them empty; iSeg has none.
    assert tables["invres_brats"].data["reproduced_lesion_score_dice_ET"].isna().all()
    assert not any("lesion" in c for c in tables["invres_iseg"].data.columns)


def test_markdown_marks_gaps_not_run_and_states_data_scale_and_memory_source(results):
    tables = tables_by_name(inputs_of(results))
    markdown = tables["bruegger2019"].markdown()
    lines = markdown.splitlines()
    segmentation = lines.index("**Segmentation**")
    header = [cell.strip() for cell in lines[segmentation + 4].split("|")]
    baseline = next(line for line in lines[segmentation:] if line.startswith("| Baseline"))
    cells = [cell.strip() for cell in baseline.split("|")]
    assert float(cells[header.index("Dice ET ours")]) == tables["bruegger2019"].data.loc[0, "reproduced_dice_ET"]
    assert "| Reversible 4/1 full |" in markdown and "not run" in markdown
    caption = markdown.splitlines()[2]
    assert "synthetic BraTS-like data" in caption and "demo scale" in caption
    assert "revunet memory --table bruegger2019" in caption and "full size" in caption
    iseg_caption = tables["invres_iseg"].markdown().splitlines()[2]
    assert "iSeg (iseg layout)" in iseg_caption and "synthetic" not in iseg_caption
    overridden = tables_by_name(
        inputs_of(results, preset="paper", data_descriptions=parse_data_descriptions(["brats=BraTS 2018"]))
    )
    caption = overridden["bruegger2019"].markdown().splitlines()[2]
    assert "BraTS 2018" in caption and "paper scale" in caption and "synthetic" not in caption


def test_pendse_tables_from_memory_training_log_and_evaluation(results):
    tables = tables_by_name(inputs_of(results))
    memory = tables["pendse2020_memory"].data.set_index("row")
    assert (memory["paper_memory_gib"] == 14).all()
    assert memory.loc["MBConv-Base", "measured_memory_gib"] == pytest.approx(0.9 * 14, abs=1e-3)
    assert memory.loc["MBConv-Base", "fits_paper_memory"]
    assert not memory.loc["MBConv-Base", "twin_fits_paper_memory"]  # 1.5 x 14 GiB
    dice = tables["pendse2020_dice"].data.set_index("row")
    paper = {entry["row"]: entry for entry in paper_results()["pendse2020"]["rows"]}
    assert dice.loc["MBConv-Wider", "paper_dice_converged"] == paper["MBConv-Wider"]["dice_converged"]
    assert dice.loc["Baseline", "paper_dice_50_epochs"] == paper["Baseline"]["dice_50_epochs"]
    # the early value: the snapshot of epoch 3 (the paper's 50 of 500), scored on the test part
    early = pd.read_csv(results["evaluation"] / "pendse_baseline" / "epoch_0003" / "metrics.csv")
    assert dice.loc["Baseline", "early_epoch"] == 3
    expected_early = early.groupby("case_id")["dice"].mean().mean()
    assert dice.loc["Baseline", "reproduced_test_dice_early"] == pytest.approx(round(expected_early, 4))
    assert dice.loc["Baseline", "best_epoch"] == 28
    assert pd.isna(dice.loc["MBConv-Deeper", "reproduced_test_dice_early"])
    metrics = pd.read_csv(results["evaluation"] / "pendse_baseline" / "metrics.csv")
    expected = metrics.groupby("case_id")["dice"].mean().mean()
    assert dice.loc["Baseline", "reproduced_test_dice"] == pytest.approx(round(expected, 4))
    assert pd.isna(dice.loc["MBConv-Deeper", "reproduced_test_dice"])


def test_csv_round_trips_and_index_lists_every_table(results, tmp_path):
    tables = build_tables(inputs_of(results))
    out = tmp_path / "tables"
    written = write_tables(tables, out)
    for table in tables:
        back = pd.read_csv(out / f"{table.name}.csv")
        assert list(back.columns) == list(table.data.columns)
        numeric = [c for c in back.columns if pd.api.types.is_numeric_dtype(table.data[c])]
        pd.testing.assert_frame_equal(back[numeric], table.data[numeric], check_dtype=False)
        assert (out / f"{table.name}.md").read_text().startswith("**")
        # each view's CSV: its columns of the full CSV, as they read back
        for view in table.views:
            part = pd.read_csv(out / f"{table.name}.{view.name}.csv")
            assert tuple(part.columns) == view.columns
            pd.testing.assert_frame_equal(part, back[list(view.columns)])
        assert (out / f"{table.name}.rst").exists() == (not table.views)
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    expected = [[f"{t.name}.csv", *(f"{t.name}.{v.name}.csv" for v in t.views)] for t in tables]
    assert list(index["csv"]) == [csv for files in expected for csv in files]
    assert {*index["file"], *index["csv"], *index["report_caption"]} - {""} | {"index.csv"} == {p.name for p in written}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    memory = index[index["csv"] == "bruegger2019.memory.csv"].iloc[0]
    table = next(t for t in tables if t.name == "bruegger2019")
    assert (memory["file"], memory["view"], memory["report_caption"]) == (
        "bruegger2019.md",
        "memory",
        "bruegger2019.memory.rst",
    )
    assert (
        memory["title"] == f"{table.title} — Memory"
        and memory["caption"] == f"{table.caption} {table.views[0].caption}"
    )
    assert not list(out.glob(".*.tmp"))


# The columns that say which row is which, first in every view of a table (default: row, experiment).
KEY_COLUMNS = {
    "capacity": ("model", "config", "dimension"),
    "postprocessing": ("experiment", "postprocessing"),
    "smoke": ("experiment",),
}


def assert_readable(tables) -> None:
    """Every table with more than 10 columns has views; each view at most 10 columns of the table, the
    identifying ones first; every column in some view (or constant and in the caption); the catalog's names."""
    for table in tables:
        columns = list(table.data.columns)
        assert [view.name for view in table.views] == list(REPORT_TABLE_VIEWS.get(table.name, ())), table.name
        if len(columns) > MAX_VIEW_COLUMNS:
            assert table.views, table.name
        if not table.views:
            continue
        keys = KEY_COLUMNS.get(table.name, ("row", "experiment"))
        for view in table.views:
            assert 1 <= len(view.columns) <= MAX_VIEW_COLUMNS and set(view.columns) <= set(columns), (table.name, view)
            assert view.columns[: len(keys)] == keys, (table.name, view.name)
        shown = {column for view in table.views for column in view.columns}
        assert shown | set(table.constants) == set(columns), table.name
        for column in table.constants:
            assert table.data[column].nunique() == 1 and column not in shown
        markdown = table.markdown()
        assert markdown.startswith(f"**{table.title}**\n\n{table.caption}\n\n"), table.name
        for view in table.views:
            assert f"\n**{view.title}**\n\n{view.caption}\n\n| " in markdown, (table.name, view.name)
        assert rules(markdown) == len(table.views)


def rules(markdown: str) -> int:
    """How many tables a Markdown text has (the rule under each header)."""
    return sum(line.startswith("| --- |") for line in markdown.splitlines())


def test_every_table_reads_in_views_of_at_most_ten_columns(results):
    tables = build_tables(inputs_of(results))
    assert_readable(tables)
    widths = {t.name: [len(v.columns) for v in t.views] for t in tables}
    assert widths == {
        "bruegger2019": [9, 10, 9, 9],
        "invres_iseg": [8, 10, 9],
        "invres_brats": [8, 10, 9, 9],
        "pendse2020_memory": [],
        "pendse2020_dice": [5, 6],
        "complexity": [],
        "capacity": [8, 8, 7],
        "postprocessing": [9, 9],
    }
    # nothing run yet: the same views
    assert_readable(build_tables(ReportInputs()))
    regions = tables_by_name(inputs_of(results))["invres_iseg"].views
    assert [v.columns[2:4] for v in regions] == [
        ("paper_memory_gib", "measured_memory_gib"),
        ("paper_dice_CSF", "reproduced_dice_CSF"),
        ("paper_hausdorff_CSF", "reproduced_hausdorff_CSF"),
    ]


def test_a_view_over_ten_columns_or_of_unknown_columns_is_refused():
    data = pd.DataFrame({f"c{i}": [i] for i in range(12)})
    wide = TableView("wide", "Too wide.", tuple(data.columns[:11]))
    with pytest.raises(ValueError, match="'wide' has 11 columns"):
        ReportTable("t", "T", "Caption.", data, views=[wide])
    with pytest.raises(ValueError, match=r"unknown columns \['nope'\]"):
        ReportTable("t", "T", "Caption.", data, views=[TableView("a", "A.", ("c0", "nope"))])
    halves = [TableView("a", "A.", tuple(data.columns[:6])), TableView("b", "B.", ("c0", *data.columns[6:11]))]
    with pytest.raises(ValueError, match=r"columns \['c11'\] are in no view"):
        ReportTable("t", "T", "Caption.", data, views=halves)
    with pytest.raises(ValueError, match="two views share a name"):
        ReportTable("t", "T", "Caption.", data, views=[halves[0], halves[0]])
    table = ReportTable("t", "T", "Caption.", data, views=halves, constants=("c11",))
    assert "c11" not in table.markdown() and rules(table.markdown()) == 2
    with pytest.raises(ValueError, match="'c11' is not constant"):
        ReportTable("t", "T", "Caption.", pd.concat([data, data + 1]), views=halves, constants=("c11",))
    assert rules(ReportTable("t", "T", "Caption.", data).markdown()) == 1  # no views: one table of every column


def test_report_captions_are_the_markdowns_text_in_restructuredtext(results):
    publish_parts = pytest.importorskip("docutils.core").publish_parts  # Snakemake's report renders captions
    html_writer = pytest.importorskip("docutils.writers").get_writer_class("html")

    table = tables_by_name(inputs_of(results))["bruegger2019"]
    view = table.views[0]
    rst = table.report_caption(view)
    assert rst.startswith("{% raw %}\n") and rst.endswith("{% endraw %}\n")
    body = rst.removeprefix("{% raw %}\n").removesuffix("{% endraw %}\n")
    html = publish_parts(body, writer=html_writer(), settings_overrides={"report_level": 2})["body"]
    assert "system-message" not in html  # docutils found nothing to warn about
    assert "<strong>Memory</strong>" in html and view.caption.replace("'", "&#x27;") in html.replace("'", "&#x27;")
    assert '<tt class="docutils literal">revunet memory <span class="pre">--table</span> bruegger2019</tt>' in html
    assert "`" not in html  # Markdown's code spans became literals
    assert rst_text("a *b* `c_d` e_ | [1]_ `odd") == r"a \*b\* ``c_d`` e\_ \| \[1\]\_ \`odd"
    assert rst_text("3. not a list") == r"\3. not a list"


def test_complexity_and_capacity_tables(results):
    write_complexity(results["memory"] / "complexity.csv")
    capacity = pd.DataFrame(
        [
            {
                "key": "bruegger",
                "config": "Reversible 1/1",
                "dimension": dim,
                "ratio_of": of,
                "reversible_value": rev,
                "twin_value": twin,
                "ratio": ratio,
                "budget_gib": 16.0,
                "reversible_capped": False,
                "twin_capped": False,
                "paper_claim": 0.0,
                "meets_claim": None,
            }
            for dim, of, rev, twin, ratio in (
                ("volume", "voxels", 192, 128, 3.375),
                ("depth", "encoder depth", 40, 6, 6.667),
                ("width", "channel multiplier", 1.5, 1.0, 1.5),
            )
        ]
    )
    capacity.to_csv(results["memory"] / "capacity.csv", index=False)
    tables = tables_by_name(inputs_of(results))
    measured = tables["complexity"].data.set_index("method")
    assert measured.loc["naive", "paper_activations"] == "O(L)"
    assert measured.loc["naive", "measured_exponent"] > 0.8
    assert abs(measured.loc["invertible", "measured_exponent"]) < 0.1
    assert pd.isna(measured.loc["recursive", "measured_exponent"])
    assert "not measured" in tables["complexity"].markdown()
    claims = tables["capacity"].data.set_index("dimension")
    assert claims.loc["volume", "claimed_ratio"] == 3.0 and claims.loc["depth", "claimed_ratio"] == 1.25
    assert claims.loc["volume", "meets_claim"] and not claims.loc["width", "meets_claim"]
    # one budget for every row: said in the caption, in no view (the CSV keeps it)
    assert tables["capacity"].caption.endswith("Budget: 16 GiB for every row.")
    assert tables["capacity"].constants == ("budget_gib",) and "budget GiB" not in tables["capacity"].markdown()
    assert_readable(tables.values())
    capacity.loc[2, "budget_gib"] = 8.0
    capacity.to_csv(results["memory"] / "capacity.csv", index=False)
    table = tables_by_name(inputs_of(results))["capacity"]
    assert "Budget:" not in table.caption and table.views[1].columns[-1] == "budget_gib"
    assert "| budget GiB |" in table.markdown()


def test_unknown_row_names_it_and_the_valid_rows(results):
    write_experiments(
        results["experiments"],
        [
            {
                "name": "bruegger_rev_5_1",
                "task": "brats",
                "model": "partially_reversible",
                "table": "bruegger2019",
                "row": "Reversible 5/1 full",
            }
        ],
    )
    with pytest.raises(ReportInputError, match=r"Reversible 5/1 full.*valid rows.*Reversible 4/1 full"):
        build_tables(inputs_of(results))


def test_two_experiments_on_one_row_and_unknown_table_are_errors(results):
    write_experiments(
        results["experiments"],
        [{"name": "again", "task": "brats", "model": "nonewnet", "table": "bruegger2019", "row": "Baseline"}],
    )
    with pytest.raises(ReportInputError, match="'again' and 'bruegger_baseline'|'bruegger_baseline' and 'again'"):
        build_tables(inputs_of(results))
    (results["experiments"] / "again.json").unlink()
    write_experiments(
        results["experiments"], [{"name": "odd", "task": "brats", "model": "nonewnet", "table": "table9", "row": "x"}]
    )
    with pytest.raises(ReportInputError, match="table9.*bruegger2019"):
        build_tables(inputs_of(results))


def test_malformed_inputs_name_the_file_and_what_was_expected(results):
    metrics = results["evaluation"] / "bruegger_baseline" / "metrics.csv"
    pd.read_csv(metrics).drop(columns=["hd95"]).to_csv(metrics, index=False)
    with pytest.raises(ReportInputError, match=r"bruegger_baseline/metrics\.csv.*hd95"):
        build_tables(inputs_of(results))
    metrics.unlink()
    (results["memory"] / "pendse2020.csv").write_text("row,paper_mb\nBaseline,1\n")
    with pytest.raises(ReportInputError, match=r"pendse2020\.csv.*measured_mb"):
        build_tables(inputs_of(results))
    (results["memory"] / "pendse2020.csv").unlink()
    (results["train"] / "pendse_baseline" / "summary.json").write_text("[1, 2]")
    with pytest.raises(ReportInputError, match=r"summary\.json.*JSON object"):
        build_tables(inputs_of(results))


def test_missing_region_in_metrics_is_an_error(results):
    metrics = results["evaluation"] / "bruegger_baseline" / "metrics.csv"
    frame = pd.read_csv(metrics)
    frame[frame.region != "ET"].to_csv(metrics, index=False)
    with pytest.raises(ReportInputError, match="region 'ET'"):
        build_tables(inputs_of(results))


def test_nothing_run_yet_gives_complete_tables_of_paper_numbers(tmp_path):
    tables = build_tables(ReportInputs())
    assert {t.name for t in tables} == {
        "bruegger2019",
        "invres_iseg",
        "invres_brats",
        "pendse2020_memory",
        "pendse2020_dice",
        "complexity",
        "capacity",
        "postprocessing",
    }
    postprocessing = next(t for t in tables if t.name == "postprocessing")
    assert postprocessing.data.empty and "Post-processing" in postprocessing.markdown()  # no experiment yet
    iseg = next(t for t in tables if t.name == "invres_iseg")
    assert iseg.data["paper_dice_CSF"].tolist() == [92.50, 95.07, 95.09]
    assert iseg.data["reproduced_dice_CSF"].isna().all()
    assert "not run" in iseg.markdown() and "scale preset not stated" in iseg.markdown()


@pytest.mark.slow
def test_real_memory_table_fills_measured_column(results, tmp_path):
    from revunet.memory.paper_tables import memory_table

    measured = memory_table("invres_iseg")
    measured.to_csv(results["memory"] / "invres_iseg.csv", index=False)
    frame = tables_by_name(inputs_of(results))["invres_iseg"].data.set_index("row")
    assert frame.loc["3D U-Net", "paper_memory_gib"] == 4.18
    for _, row in measured.iterrows():
        assert frame.loc[row["row"], "measured_memory_gib"] == pytest.approx(row["measured_mb"] / 1024)
        assert frame.loc[row["row"], "memory_ratio"] == row["ratio"]


def test_cli_writes_tables_and_reports_errors(results, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "tables",
        "--evaluations",
        str(results["evaluation"]),
        "--memory",
        str(results["memory"]),
        "--training",
        str(results["train"]),
        "--experiments",
        str(results["experiments"]),
        "--cases-dir",
        str(results["data"]),
        "--preset",
        "demo",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (out / "bruegger2019.md").is_file() and (out / "pendse2020_dice.csv").is_file()
    assert main(argv + ["--data-description", "BraTS 2018 (real)"]) == 0
    assert "BraTS 2018 (real)" in (out / "invres_iseg.md").read_text()
    (results["evaluation"] / "invres_iseg_full" / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="revunet tables: .*invres_iseg_full/metrics.csv"):
        main(argv)


def test_postprocessing_table_has_rows_without_and_with_it(results):
    plain = pd.read_csv(results["evaluation"] / "bruegger_baseline" / "metrics.csv")
    processed = plain.copy()
    processed["dice"] = processed["dice"] * 0.5
    processed["lesion_score_hd95"] = 7.0
    processed["postprocessing"] = "ET→NCR below 500 mm³"
    (results["evaluation"] / "bruegger_baseline" / "postprocessed").mkdir()
    processed.to_csv(results["evaluation"] / "bruegger_baseline" / "postprocessed" / "metrics.csv", index=False)
    table = tables_by_name(inputs_of(results))["postprocessing"]
    frame = table.data.set_index(["experiment", "postprocessing"])
    brats = [e["name"] for e in EXPERIMENTS if e["task"] == "brats"]
    assert sorted(set(table.data["experiment"])) == sorted(brats)  # every BraTS experiment, no iSeg one
    assert (table.data.groupby("experiment").size() == 2).all()
    for region in ("WT", "TC", "ET"):
        rows = plain.region == region
        expected = round(plain.loc[rows, "dice"].mean() * 100, 2)
        assert frame.loc[("bruegger_baseline", "none"), f"dice_{region}"] == pytest.approx(expected)
        halved = round(processed.loc[rows, "dice"].mean() * 100, 2)
        assert frame.loc[("bruegger_baseline", "ET→NCR below 500 mm³"), f"dice_{region}"] == pytest.approx(halved)
    assert frame.loc[("bruegger_baseline", "ET→NCR below 500 mm³"), "lesion_score_hd95_ET"] == 7.0
    assert pd.isna(frame.loc[("bruegger_baseline", "none"), "lesion_score_hd95_ET"])  # no lesion columns
    assert pd.isna(frame.loc[("pendse_baseline", "post-processed"), "dice_ET"])  # not evaluated after it
    assert "Beyond the papers" in table.caption and "not run" in table.markdown()
