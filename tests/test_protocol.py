"""The paper protocol on every experiment of both presets: three roles that never mix, splits the
official releases can fill, one canvas from training to inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from revunet.cli import main
from revunet.data.splits import make_split, read_split, split_document, write_split
from revunet.experiments.config_files import check_config, read_workflow_config
from revunet.experiments.plan import plan_workflow
from revunet.experiments.recipe import Experiment
from revunet.training.setup import read_datasets, volume_cache_size
from test_dataset import store

ROOT = Path(__file__).resolve().parent.parent
CONFIG, SCHEMA = ROOT / "config.yaml", ROOT / "workflow" / "schemas" / "config.schema.yaml"
# Labelled cases of the official training releases the paper preset reads.
RELEASE_CASES = {
    "MICCAI_BraTS_2018_Data_Training": 285,
    "MICCAI_BraTS2020_TrainingData": 369,
    "iSeg-2019-Training": 10,
}


def _plan(preset: str):
    overrides = {"preset": preset, "data_root": "/data"} if preset == "paper" else {"preset": preset}
    return plan_workflow(check_config(read_workflow_config(CONFIG, (), overrides), SCHEMA))


def _case_count(dataset) -> int:
    if dataset.source == "synthetic":
        return dataset.subjects
    return RELEASE_CASES[Path(dataset.path).name]


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_every_experiment_is_reported_on_cases_that_neither_trained_nor_chose_it(preset):
    plan = _plan(preset)
    assert len(plan.experiments) == 16
    for name, experiment_plan in plan.experiments.items():
        dataset = plan.datasets[experiment_plan.dataset]
        split = dataset.splits[experiment_plan.split]
        ids = [f"case_{n:03d}" for n in range(_case_count(dataset))]
        parts = make_split(ids, split.scheme(), split.seed)
        train, validation, test = (set(parts[role]) for role in ("train", "validation", "test"))
        assert test and train, name
        assert train.isdisjoint(test) and validation.isdisjoint(test) and train.isdisjoint(validation), name
        # early stopping only where there is a validation part to stop on
        assert (experiment_plan.experiment.patience is None) or validation, name


def test_the_papers_own_protocols_at_paper_scale():
    plan = _plan("paper")
    sizes = {}
    for name, experiment_plan in plan.experiments.items():
        dataset = plan.datasets[experiment_plan.dataset]
        split = dataset.splits[experiment_plan.split]
        parts = make_split([str(n) for n in range(_case_count(dataset))], split.scheme(), split.seed)
        sizes[name] = tuple(len(parts[role]) for role in ("train", "validation", "test"))
    # Brügger et al.: the paper's 80 % trains; the 20 % validation split, halved, selects and tests locally.
    assert sizes["bruegger_rev_1_1_full"] == (228, 29, 28)
    # Pendse et al.: 329 / 40 (their "330 of 370" does not exist), nothing selected.
    assert {sizes[n] for n in plan.experiments if n.startswith("pendse")} == {(329, 0, 40)}
    # Invertible-residual paper: 9 / 1 iSeg subjects, 80 / 20 of BraTS 2020, nothing selected.
    assert {sizes[n] for n in plan.experiments if n.startswith("invres_iseg")} == {(9, 0, 1)}
    assert {sizes[n] for n in plan.experiments if n.startswith("invres_brats")} == {(295, 0, 74)}


def test_no_experiment_trains_on_a_canvas_it_does_not_predict_on():
    plan = _plan("paper")
    for name, experiment_plan in plan.experiments.items():
        shape = plan.datasets[experiment_plan.dataset].shape
        patch = experiment_plan.experiment.patch_size
        assert shape is not None, name
        if patch is not None:
            assert all(p <= s for p, s in zip(patch, shape)), (name, patch, shape)
    # Pendse et al.'s whole-volume rows: the 240x240x155 volume padded to 256x256x160 is the canvas of
    # training, validation and inference alike (one dataset, one preprocessed folder).
    for name in ("pendse_baseline", "pendse_mbconv_base"):
        experiment_plan = plan.experiments[name]
        assert plan.datasets[experiment_plan.dataset].shape == experiment_plan.experiment.patch_size == (256, 256, 160)
    protocol = plan.protocol("pendse_baseline")
    assert (protocol["canvas"], protocol["training_input"]) == ("256x256x160", "256x256x160")


def test_revunet_experiment_lists_each_canvas_beside_its_training_input(capsys):
    assert main(["experiment", "--config", str(CONFIG), "--preset", "paper", "--data-root", "/d", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.split()[0] == "bruegger_rev_1_1_full")
    assert "160x192x160" in row and "whole volume" in row and "best validation EMA" in row
    row = next(line for line in lines if line.split()[0] == "invres_iseg_full")
    assert "144x192x256" in row and "64x64x64 windows, overlap 32" in row and "none (last epoch)" in row


def _preprocessed(folder: Path, ids: list[str], shape=(8, 8, 8)) -> None:
    folder.mkdir(parents=True)
    for case_id in ids:
        store(folder, case_id, np.zeros((2, *shape), np.float32), np.zeros(shape, np.uint8), task="iseg")


def test_training_reads_the_train_and_validation_parts_only(tmp_path):
    ids = [f"subject-{n}" for n in range(1, 11)]
    _preprocessed(tmp_path / "pre", ids)
    experiment = Experiment.from_dict(
        {"name": "t", "task": "iseg", "model": "unet3d", "patch_size": [8, 8, 8], "samples_per_volume": 4}
    )
    parts = make_split(ids, (7, 1, 2), seed=0)
    split = write_split(tmp_path / "split.json", split_document(parts, (7, 1, 2), 0))
    train_set, validation = read_datasets(experiment, tmp_path / "pre", split)
    assert train_set.case_ids == parts["train"] and validation is not None
    assert validation.case_ids == parts["validation"]
    assert set(parts["test"]).isdisjoint(train_set.case_ids + validation.case_ids)
    # several patches per volume: every training volume stays decoded between its patches
    assert train_set.cache_size == volume_cache_size(train_set) == 7

    parts = make_split(ids, (9, 1), seed=0)
    split = write_split(tmp_path / "nine.json", split_document(parts, (9, 1), 0))
    assert read_datasets(experiment, tmp_path / "pre", split)[1] is None  # nothing selected
    stopping = experiment.replace(patience=10)
    with pytest.raises(Exception, match="stops early .* no validation part"):
        read_datasets(stopping, tmp_path / "pre", split)
    assert json.loads(split.read_text())["validation"] == [] and read_split(split).test == parts["test"]


def test_validation_predicts_with_the_settings_inference_uses():
    """best.pt is chosen on what `revunet infer` will produce: the same window, overlap, flips."""
    import torch

    from revunet.evaluation.predict import _settings
    from revunet.experiments.recipe import FROM_EXPERIMENT
    from revunet.models.build import build_experiment_model
    from revunet.training.validation import inference_settings

    experiment = Experiment.from_dict(
        {
            "name": "w",
            "task": "iseg",
            "model": "unet3d",
            "model_params": {"in_channels": 2, "out_channels": 4, "output": "softmax", "channels": [4, 8]},
            "patch_size": [16, 16, 16],
            "sliding_window": [16, 16, 16],
            "window_overlap": 8,
            "test_time_flips": True,
        }
    )
    model = build_experiment_model(experiment)
    cpu = torch.device("cpu")
    assert inference_settings(experiment, cpu) == _settings(model, experiment, cpu, None, FROM_EXPERIMENT, None)


def test_a_challenge_online_set_is_predicted_and_exported_for_its_portal(tmp_path):
    """Brügger et al.'s column comes from the unlabelled online validation set: cases, preprocess,
    infer without a split, export in the challenge's convention (docs/protocol.md)."""
    import nibabel as nib
    import torch

    from revunet.models.build import build_experiment_model
    from revunet.training.state import save_checkpoint

    assert main(["synth", "--task", "brats", "--subjects", "2", "--spacing", "8", "--out", str(tmp_path / "raw")]) == 0
    (release,) = [path for path in (tmp_path / "raw").iterdir() if path.is_dir()]
    for label in release.glob("*/*_seg.nii.gz"):
        label.unlink()  # the online set comes without labels
    online = release.rename(tmp_path / "raw" / "MICCAI_BraTS_2018_Data_Validation")
    cases, pre, pred, submit = (tmp_path / name for name in ("cases.csv", "pre", "pred", "submit"))
    assert main(["cases", str(online), "--out", str(cases)]) == 0
    assert main(["preprocess", "--cases", str(cases), "--all", "--shape", "16,16,16", "--out", str(pre)]) == 0
    experiment = Experiment.from_dict(
        {"name": "t", "task": "brats", "model": "unet3d", "model_params": {"channels": [4, 8]}}
    )
    torch.manual_seed(0)
    state = build_experiment_model(experiment).state_dict()
    checkpoint = save_checkpoint(
        tmp_path / "best.pt", {"format": 1, "experiment": experiment.to_dict(), "model_state": state, "epoch": 0}
    )
    infer = ["infer", "--checkpoint", str(checkpoint), "--cases", str(cases), "--preprocessed", str(pre)]
    assert main([*infer, "--out", str(pred), "--device", "cpu"]) == 0
    export = ["export", "--cases", str(cases), "--predictions", str(pred), "--convention", "brats2021"]
    assert main([*export, "--out", str(submit)]) == 0
    files = sorted(path.name for path in submit.iterdir())
    assert files == ["BraTS20_Training_001.nii.gz", "BraTS20_Training_002.nii.gz"]
    image = nib.load(online / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii.gz")
    exported = nib.load(submit / files[0])
    assert exported.shape == image.shape and np.allclose(exported.affine, image.affine)
    assert set(np.unique(np.asarray(exported.dataobj))) <= {0, 1, 2, 4}
