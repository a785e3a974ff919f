"""Memory truth at paper size: what a training job really allocated against `revunet memory --experiment`.

The paper's iSeg 3D U-Net (its widths, 64^3 patches, batch 1, CE + Dice + VAE-free loss, Adam)
trains two steps through `revunet train`'s own code path with ``measure_memory: true``; the peak
of its live tensor bytes must agree with the fake-tensor prediction for the same experiment.
"""

from __future__ import annotations

import json

import pytest
import torch

from revunet.cli import main
from revunet.experiments.config_files import check_config, read_workflow_config
from revunet.experiments.plan import plan_workflow
from revunet.experiments.recipe import write_experiment
from revunet.memory.experiment_peak import predict_training_peak
from revunet.memory.meter import TRACKER_SOURCE
from revunet.training.loop import train
from test_smoke_plan import CONFIG, SCHEMA
from test_train import make_data, read_log, tiny

PATCH = (64, 64, 64)


def _paper_smoke_experiment(name: str):
    overrides = {"preset": "paper", "smoke": True, "select": [name]}
    return plan_workflow(check_config(read_workflow_config(CONFIG, (), overrides), SCHEMA)).experiments[name].experiment


@pytest.mark.slow(35)
def test_a_paper_size_training_job_allocates_what_revunet_memory_predicts(tmp_path) -> None:
    experiment = _paper_smoke_experiment("invres_iseg_unet3d").replace(
        sliding_window=None, test_time_flips=False, num_workers=0
    )
    assert experiment.patch_size == PATCH and experiment.measure_memory and experiment.max_steps_per_epoch == 2
    pre, split = make_data(tmp_path, n_train=2, n_held=1, task="iseg", shapes=[PATCH] * 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        summary = train(experiment, pre, split, tmp_path / "run", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    predicted = predict_training_peak(experiment).peak_mib
    measured = summary["tensor_peak_mib"]
    assert summary["tensor_peak_source"] == TRACKER_SOURCE
    assert abs(measured / predicted - 1) <= 0.10, (measured, predicted)
    assert float(read_log(tmp_path / "run" / "log.csv")[0]["tensor_peak_mib"]) == pytest.approx(measured)


def test_without_the_option_nothing_is_measured(tmp_path) -> None:
    pre, split = make_data(tmp_path)
    summary = train(tiny(epochs=1, max_steps_per_epoch=1), pre, split, tmp_path / "run", device="cpu", progress=False)
    assert summary["tensor_peak_mib"] is None and summary["tensor_peak_source"] is None
    assert read_log(tmp_path / "run" / "log.csv")[0]["tensor_peak_mib"] == ""


def test_memory_experiment_predicts_from_the_spec_and_names_what_a_whole_volume_needs(tmp_path, capsys) -> None:
    spec = tmp_path / "bruegger.json"
    write_experiment(spec, _paper_smoke_experiment("bruegger_rev_1_1_full"))
    with pytest.raises(SystemExit, match=r"trains on whole volumes \(patch_size null\): give the preprocessed volume"):
        main(["memory", "--experiment", str(spec)])
    out = tmp_path / "predicted.json"
    assert main(["memory", "--experiment", str(spec), "--volume-shape", "160,192,160", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["experiment"] == "bruegger_rev_1_1_full" and row["input_shape"] == "1x4x160x192x160"
    assert row["peak_mib"] > 100 and row["for_device"] == "cpu"
