"""The experiment spec: validation names the key, and files round-trip every value."""

from __future__ import annotations

import json

import pytest

from revunet.cli import main
from revunet.experiments.recipe import Experiment, read_experiment, write_experiment

BASE = {"name": "demo", "task": "brats", "model": "partially_reversible"}


def test_json_round_trip_keeps_small_and_large_floats(tmp_path):
    experiment = Experiment.from_dict({**BASE, "weight_decay": 1e-5, "lr": 1e30, "patch_size": [16, 16, 16]})
    assert read_experiment(write_experiment(tmp_path / "e.json", experiment)) == experiment


def test_yaml_reads_exponent_floats_as_numbers_and_integers_as_integers(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: demo\ntask: brats\nmodel: unet3d\nweight_decay: 1e-5\nlr: 2e-4\nepochs: 3\nmilestones: [2]\n"
    )
    experiment = read_experiment(path)
    assert (experiment.weight_decay, experiment.lr, experiment.epochs, experiment.milestones) == (1e-5, 2e-4, 3, (2,))


def test_experiment_command_reads_a_yaml_spec_as_every_document(tmp_path):
    """`revunet experiment --spec recipe.yaml` with `lr: 1e-4` writes the number 0.0001."""
    spec = tmp_path / "recipe.yaml"
    spec.write_text("name: demo\ntask: brats\nmodel: unet3d\nlr: 1e-4\n")
    out = tmp_path / "demo.json"
    assert main(["experiment", "--spec", str(spec), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["lr"] == 0.0001


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 1e-3}, "unknown experiment key(s) ['learning_rate']"),
        ({"epochs": "3"}, "key 'epochs' must be an integer"),
        ({"epochs": 2.5}, "key 'epochs' must be an integer"),
        ({"amp": 1}, "key 'amp' must be true or false"),
        ({"task": "lits"}, "task must be one of"),
        ({"patch_size": [16, 16]}, "patch_size must be three positive integers"),
        ({"ema_alpha": 1.0}, "ema_alpha must lie in [0, 1)"),
    ],
)
def test_bad_values_are_errors_naming_the_key(change, message):
    with pytest.raises(ValueError) as error:
        Experiment.from_dict({**BASE, **change}, source="config.yaml: experiments.demo")
    assert message in str(error.value)


def test_missing_required_keys_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"lacks the required key\(s\) \['model'\]"):
        Experiment.from_dict({"name": "x", "task": "brats"})
    with pytest.raises(FileNotFoundError, match="no experiment file"):
        read_experiment(tmp_path / "absent.json")
