"""A job that cannot fit its node is lowered or refused before it starts, never killed halfway."""

from __future__ import annotations

import json

import pytest
import torch

from revunet.cli import main
from revunet.memory import fit

GIB = 2**30


def _predicted(tmp_path, peak_gib: float, name: str = "pendse_baseline"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"experiment": name, "peak_mib": peak_gib * 1024, "input_shape": [1, 4, 8, 8, 8]}))
    return path


@pytest.fixture
def node_with(monkeypatch):
    """A CPU node with ``gib`` GiB available and no GPU."""

    def set_available(gib: float) -> None:
        monkeypatch.setattr(fit, "available_cpu_bytes", lambda: int(gib * GIB))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_available


def test_the_budget_counts_the_prediction_with_its_margin_and_the_process_overhead(tmp_path, node_with):
    node_with(24)
    plan = fit.budget(_predicted(tmp_path, 13.0), "cpu")
    assert plan.per_process == int(13.0 * GIB * fit.RELATIVE_MARGIN) + fit.PROCESS_OVERHEAD["cpu"]
    assert (plan.processes(2), plan.processes(1)) == (1, 1)  # two 13 GiB ranks do not fit 24 GiB, one does
    node_with(12)
    assert fit.budget(_predicted(tmp_path, 13.0), "cpu").processes(2) == 0


def test_a_job_that_does_not_fit_is_refused_in_one_line_naming_what_it_needs(tmp_path, node_with):
    node_with(24)
    with pytest.raises(fit.DoesNotFit) as refused:
        fit.check_fits(_predicted(tmp_path, 13.0), "cpu", processes=2)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("experiment pendse_baseline needs about 35.5 GiB (2 process(es) x 17.8 GiB")
    assert "13.0 GiB predicted peak" in message and "has 24.0 GiB available: not started" in message
    assert fit.check_fits(_predicted(tmp_path, 13.0), "cpu", processes=1).available == 24 * GIB


def test_processes_lowers_a_cpu_job_to_what_fits(tmp_path, node_with, capsys):
    node_with(24)
    predicted = str(_predicted(tmp_path, 13.0))
    assert main(["processes", "--gpus", "4", "--without-gpu", "2", "--predicted", predicted]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "1" and "1 of 2 CPU processes fit" in captured.err
    small = str(_predicted(tmp_path, 1.0, "small"))
    assert main(["processes", "--gpus", "4", "--without-gpu", "2", "--predicted", small]) == 0
    assert capsys.readouterr().out.strip() == "2"


def test_train_refuses_before_reading_anything(tmp_path, node_with, monkeypatch):
    node_with(8)
    spec = tmp_path / "e.json"
    spec.write_text(json.dumps({"name": "pendse_baseline", "task": "brats", "model": "unet3d"}))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    args = ["train", "--experiment", str(spec), "--preprocessed", str(tmp_path / "none"), "--split", "none.json"]
    args += ["--out", str(tmp_path / "run"), "--device", "cpu", "--predicted", str(_predicted(tmp_path, 13.0))]
    with pytest.raises(SystemExit, match=r"^revunet train: experiment pendse_baseline needs about 17\.8 GiB"):
        main(args)
    assert not (tmp_path / "run").exists()


def test_a_broken_prediction_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a prediction of `revunet memory --experiment`"):
        fit.read_predicted_peak(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no predicted peak at"):
        fit.read_predicted_peak(tmp_path / "none.json")
    assert fit.available_cpu_bytes() > 0
