"""The smoke run's plan (config smoke: true): every paper experiment at its paper sizes, a few steps,
synthetic data in each real folder's layout (or the first cases of the real folders), results/smoke."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from revunet.cli import main
from revunet.experiments.config_files import ConfigError, check_config, read_workflow_config
from revunet.experiments.plan import plan_workflow
from revunet.experiments.smoke import SmokeSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SIZE_FIELDS = ("patch_size", "batch_size", "accumulation", "model", "model_params", "amp", "sliding_window")


def _plan(**overrides: object):
    return plan_workflow(check_config(read_workflow_config(CONFIG, (), overrides), SCHEMA))


def test_paper_smoke_without_data_plans_every_experiment_on_synthetic_data_in_each_folder_layout() -> None:
    paper, smoke = _plan(preset="paper", data_root="/data"), _plan(preset="paper", smoke=True)
    assert list(smoke.experiments) == list(paper.experiments) and len(smoke.experiments) == 16
    assert smoke.results == "results/smoke" and paper.results == "results"
    assert (smoke.capacity_arguments, paper.capacity_arguments) == ("--models mbconv-base", "")
    assert smoke.prediction_options("bruegger_rev_1_1_full") == "--volume-shape 160,192,160 --for-device cpu"
    layouts = {name: (d.source, d.synthetic_folder, d.spacing) for name, d in smoke.datasets.items()}
    assert layouts == {
        "brats2018": ("synthetic", "MICCAI_BraTS_2018_Data_Training", 1.0),
        "brats": ("synthetic", "MICCAI_BraTS2020_TrainingData", 1.0),
        "brats_whole": ("synthetic", "MICCAI_BraTS2020_TrainingData", 1.0),
        "iseg": ("synthetic", "iSeg-2019-Training", 1.0),
    }
    assert "--layout brats2018 --subjects 3 --spacing 1" in smoke.datasets["brats2018"].synth_arguments()
    for name, dataset in smoke.datasets.items():
        assert dataset.shape == paper.datasets[name].shape  # the paper's preprocessing crop
        # one test case; one validation case where the split selects (Brügger's), the rest trains
        expected = {(1, 1, 1)} if name == "brats2018" else {(2, 1)}
        assert {split.counts for split in dataset.splits.values()} == expected, name
    for name, plan in smoke.experiments.items():
        real, cut = paper.experiments[name].experiment, plan.experiment
        assert {f: getattr(cut, f) for f in SIZE_FIELDS} == {f: getattr(real, f) for f in SIZE_FIELDS}, name
        assert (cut.epochs, cut.max_steps_per_epoch, cut.validate_every, cut.patience) == (1, 2, 1, None)
        assert plan.resources.gpus == paper.experiments[name].resources.gpus
        # each of the job's ranks gets its steps from its training case(s)
        assert cut.samples_per_volume >= 2 * cut.batch_size * cut.accumulation * plan.resources.gpus, name


def test_a_four_gpu_experiment_starts_through_the_same_launcher_with_processes_decided_on_its_node() -> None:
    smoke = _plan(preset="paper", smoke=True)
    launcher = smoke.launcher("pendse_baseline")
    assert launcher.startswith("torchrun --standalone --nproc_per_node=$(revunet processes --gpus 4 --without-gpu 2)")
    assert smoke.launcher("bruegger_rev_1_1_128") == "revunet"
    assert smoke.launched_processes("pendse_baseline") == 0  # decided on the node, never refused
    assert (
        _plan(preset="paper", data_root="/d")
        .launcher("pendse_baseline")
        .startswith("torchrun --standalone --nproc_per_node=4 ")
    )


def test_paper_smoke_with_data_reads_the_first_cases_of_the_real_folders() -> None:
    smoke = _plan(preset="paper", smoke=True, data_root="/data", smoke_run={"subjects": 4})
    brats = smoke.datasets["brats2018"]
    assert (brats.source, brats.path, brats.max_cases) == (
        "local",
        os.path.join("/data", "MICCAI_BraTS_2018_Data_Training"),
        4,
    )
    assert brats.cases_arguments().endswith(" --first 4")
    assert {split.counts for split in brats.splits.values()} == {(2, 1, 1)}


def test_demo_smoke_keeps_the_demo_data_with_fewer_subjects() -> None:
    smoke = _plan(smoke=True)
    assert {(d.source, d.spacing, d.subjects) for d in smoke.datasets.values()} == {("synthetic", 3.0, 3)}
    assert smoke.datasets["iseg"].synthetic_folder == "iSeg-2019-Training"


def test_smoke_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"smoke_run: unknown key\(s\) \['step'\]"):
        SmokeSettings.from_config({"step": 3})
    with pytest.raises(ConfigError, match="smoke_run.subjects: got 1, expected at least 3"):
        SmokeSettings.from_config({"subjects": 1})
    with pytest.raises(ConfigError, match="smoke_run"):
        _plan(smoke=True, smoke_run={"steps": 0})


@pytest.mark.parametrize(("available", "count", "expected"), [(False, 0, "2"), (True, 8, "4"), (True, 1, "1")])
def test_processes_are_the_gpus_present_up_to_the_experiment_s_or_the_cpu_fallback(
    monkeypatch, capsys, available, count, expected
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert main(["processes", "--gpus", "4", "--without-gpu", "2"]) == 0
    assert capsys.readouterr().out == f"{expected}\n"
