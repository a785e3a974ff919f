"""Broken cases through the workflow: a failed preprocess job names the case and both fixes,
keeps the good cases' files, an unknown `exclude_cases` id is named with its key path, and
the rerun with the broken case excluded redoes none of the good ones."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from test_broken_cases import case_id, dataset, file_of, stamps, truncate
from test_workflow import CONFIG, pytestmark, snakemake  # noqa: F401  (pytestmark: skip without snakemake)

KEY = "datasets.brats.demo.exclude_cases"
TARGETS = ("results/data/brats/preprocessed", "results/data/brats/splits/main.json")


def overlay(tmp_path, root, exclude: list[str] | None = None) -> str:
    """A config file on top of config.yaml: the brats demo dataset is ``root``, tiny crops."""
    settings = {"source": "local", "path": str(root), "shape": [8, 8, 8], "splits": {"main": {"fraction": 0.5}}}
    if exclude is not None:
        settings["exclude_cases"] = exclude
    path = tmp_path / f"overlay_{len(exclude or [])}_{'_'.join(exclude or [])}.json"
    # patches inside the 8x8x8 canvas: the plan refuses a patch larger than the volumes it predicts on
    patches = {"demo": {"experiment": {"patch_size": [8, 8, 8]}}}
    document = {"select": ["invres_brats_unet3d"], "datasets": {"brats": {"demo": settings}}, "presets": patches}
    path.write_text(json.dumps(document))
    return str(path)


@pytest.mark.slow(80)
def test_broken_case_through_the_workflow(tmp_path):
    root = dataset(tmp_path / "MICCAI_BraTS2020_TrainingData", 3)
    truncate(file_of(root, 2, "flair"))
    data = tmp_path / "results" / "data" / "brats"

    code, output = snakemake(tmp_path, "--cores", "1", *TARGETS, configfiles=(CONFIG, overlay(tmp_path, root)))
    assert code != 0
    assert "1 of 3 cases are broken; the 2 good one(s) are kept" in output, output[-3000:]
    assert f"case {case_id(2)}: cannot read flair file {file_of(root, 2, 'flair').resolve()}" in output
    assert "1. repair it" in output and f"2. or add it to {KEY} in your config" in output
    assert not (data / "preprocessed").exists()
    kept = stamps(data / "preprocess_store")
    assert sorted(kept) == [f"{case_id(n)}.{ext}" for n in (1, 3) for ext in ("json", "npz")]

    code, output = snakemake(
        tmp_path, "--cores", "1", *TARGETS, configfiles=(CONFIG, overlay(tmp_path, root, ["BraTS20_Training_009"]))
    )
    assert code != 0
    assert f"{KEY}: no case 'BraTS20_Training_009' in {root.resolve()} (3 cases" in output, output[-3000:]

    code, output = snakemake(
        tmp_path, "--cores", "1", *TARGETS, configfiles=(CONFIG, overlay(tmp_path, root, [case_id(2)]))
    )
    assert code == 0, output[-3000:]
    assert stamps(data / "preprocess_store") == kept  # not redone: same bytes, same modification times
    assert stamps(data / "preprocessed") == kept
    assert pd.read_csv(data / "preprocessed" / "index.csv")["case_id"].tolist() == [case_id(1), case_id(3)]
    assert pd.read_csv(data / "excluded_cases.csv").to_dict(orient="records") == [
        {"case_id": case_id(2), "excluded_by": KEY}
    ]
    assert pd.read_csv(data / "cases.csv")["case_id"].tolist() == [case_id(1), case_id(3)]
    split = json.loads((data / "splits" / "main.json").read_text())
    assert case_id(2) not in json.dumps(split) and case_id(1) in json.dumps(split)
    log = (tmp_path / "results" / "logs" / "preprocess" / "brats.log").read_text()
    assert log.count(", skipped") == 2
