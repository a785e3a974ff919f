"""Capacity under a budget: the search finds a boundary that direct measurements confirm."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from revunet.cli import main
from revunet.memory.capacity import (
    CAPACITY_MODELS,
    GIB,
    MIB,
    WIDTH_STEPS,
    CapacityModel,
    capacity_table,
    measure_point,
    search_model,
)
from revunet.memory.grid_search import CapacityError, largest_fitting
from revunet.models import build_model

BUDGET_GIB = 32 / 1024  # 32 MiB: tiny models cross it at sizes that measure in a fraction of a second
FIXED = 32
TINY = CapacityModel("tiny", "partially_reversible", "tiny", "bruegger2019", (8, 16), {"groups": 4})
TINY_VAE = CapacityModel("tiny_vae", "invres_full", "tiny", "invres_brats", (8, 16), width_quanta=(2, 8), vae=True)


def _counting(function):
    calls: list[int] = []

    def measure(i: int) -> int:
        calls.append(i)
        return function(i)

    return measure, calls


@pytest.mark.parametrize("budget", [100, 101, 106, 107, 450, 799, 800, 1000])
def test_largest_fitting_matches_brute_force_on_affine_and_curved_costs(budget):
    for cost in (lambda i: 100 + 7 * i, lambda i: 100 + 7 * i + i * i // 10, lambda i: 50 + (i // 3) * 20):
        expected = max(i for i in range(1, 101) if cost(i) <= budget) if cost(1) <= budget else None
        measure, calls = _counting(cost)
        if expected is None:
            with pytest.raises(CapacityError, match="smallest value"):
                largest_fitting(measure, 1, 100, budget, hints=[10, 20])
            continue
        found = largest_fitting(measure, 1, 100, budget, hints=[10, 20])
        assert found.index == expected
        assert found.peak_bytes == cost(expected) <= budget
        assert found.capped == (expected == 100)
        if expected < 100:
            assert found.next_peak_bytes == cost(expected + 1) > budget
        assert found.measurements == len(set(calls)) <= 12


def test_largest_fitting_needs_few_measurements_when_the_cost_is_affine():
    measure, calls = _counting(lambda i: 1000 + 37 * i**3)
    found = largest_fitting(measure, 1, 64, 5_000_000, feature=lambda i: float(i) ** 3, hints=[8, 16])
    assert found.index == math.floor(((5_000_000 - 1000) / 37) ** (1 / 3))
    assert len(calls) <= 4  # two hints, the prediction, its neighbour


def test_largest_fitting_reports_a_cap_and_rejects_an_empty_range():
    found = largest_fitting(lambda i: i, 1, 10, 1e9, hints=[1, 2])
    assert found.index == 10 and found.capped and found.next_peak_bytes is None
    with pytest.raises(ValueError, match="empty"):
        largest_fitting(lambda i: i, 5, 4, 1e9)


@pytest.fixture(scope="module")
def tiny_results() -> dict[bool, dict[str, dict]]:
    return {saving: search_model(TINY, saving, BUDGET_GIB, FIXED, max_depth=16) for saving in (True, False)}


def _next_measurement(spec: CapacityModel, saving: bool, dimension: str, value: float) -> tuple[int, int]:
    """Peak bytes at the found value and at the next valid value, measured directly."""
    multiple = spec.size_multiple()
    if dimension == "volume":
        point, after = (int(value),), (int(value) + multiple,)
    elif dimension == "depth":
        point, after = (FIXED, int(value)), (FIXED, int(value) + 1)
    else:
        k = round(value * WIDTH_STEPS)
        point, after = (FIXED, 1, k), (FIXED, 1, k + 1)
    return measure_point(spec, saving, *point).peak_bytes, measure_point(spec, saving, *after).peak_bytes


@pytest.mark.parametrize("dimension", ["volume", "depth", "width"])
def test_found_values_fit_and_the_next_valid_value_does_not(tiny_results, dimension):
    budget = BUDGET_GIB * GIB
    for saving, results in tiny_results.items():
        found = results[dimension]
        at_value, at_next = _next_measurement(TINY, saving, dimension, found["value"])
        assert at_value == found["peak_bytes"] <= budget
        if found["capped"]:
            assert saving and dimension == "depth"  # only the reversible depth reaches its cap of 16 here
        else:
            assert at_next > budget, (saving, dimension, found)
            assert at_next == found["next_peak_bytes"]


def test_reversible_holds_at_least_what_its_twin_holds(tiny_results):
    for dimension in ("volume", "depth", "width"):
        assert tiny_results[True][dimension]["value"] >= tiny_results[False][dimension]["value"]
    assert tiny_results[True]["volume"]["value"] > tiny_results[False]["volume"]["value"]
    assert tiny_results[False]["depth"]["value"] < 16  # the twin's activations grow with depth


def test_vae_models_search_sizes_the_branch_accepts():
    assert TINY_VAE.size_multiple() == 4  # one halving in the U-Net, one in the VAE branch
    found = search_model(TINY_VAE, True, BUDGET_GIB, 16, dimensions=["volume"])["volume"]
    size = found["value"]
    assert size % 4 == 0
    assert (
        measure_point(TINY_VAE, True, size).peak_bytes
        <= BUDGET_GIB * GIB
        < measure_point(TINY_VAE, True, size + 4).peak_bytes
    )


def test_width_rounding_keeps_every_model_valid():
    for spec in CAPACITY_MODELS.values():
        assert spec.widths(WIDTH_STEPS) == spec.channels
        for k in (1, 3, 7, 9, 13, 21, 64):
            widths = spec.widths(k)
            assert all(w % q == 0 for w, q in zip(widths, spec.width_quanta))
            params = spec.build_params(128, 1, k)
            params.pop("vae_input_size", None)
            with torch.device("meta"):
                build_model(spec.model, **params)  # raises if a width breaks a constraint
    full = CAPACITY_MODELS["invres_full"]
    assert all(w % 8 == 0 for w in full.widths(11)[1:])


def test_too_small_a_budget_is_a_clear_error():
    with pytest.raises(CapacityError, match=r"tiny \(twin\).*too small for the volume search.*2\^3 input"):
        search_model(TINY, False, 0.1 / 1024, FIXED, dimensions=["volume"])
    with pytest.raises(CapacityError, match="lower --fixed-size"):
        search_model(TINY, False, 4 / 1024, 64, dimensions=["depth"])


def test_capacity_table_in_parallel_has_ratios_and_claims():
    table = capacity_table([TINY], BUDGET_GIB, FIXED, dimensions=["volume", "width"], jobs=2, max_multiplier=4)
    assert list(table["dimension"]) == ["volume", "width"]
    volume = table.iloc[0]
    assert volume["ratio"] == pytest.approx((volume["reversible_value"] / volume["twin_value"]) ** 3, abs=1e-3)
    assert volume["paper_claim"] == 3.0 and table.iloc[1]["paper_claim"] == 2.0
    assert volume["reversible_peak_mib"] <= 32 < volume["reversible_next_peak_mib"]
    assert volume["meets_claim"] == (volume["ratio"] >= 3.0)


def test_cli_writes_csv_and_reports_a_too_small_budget(tmp_path, capsys):
    out = tmp_path / "capacity.csv"
    code = main(
        [
            "capacity",
            "--models",
            "invres_full",
            "--dimensions",
            "volume",
            "--budget-gib",
            "4",
            "--jobs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out)
    for column in (
        "model",
        "config",
        "dimension",
        "reversible_value",
        "twin_value",
        "ratio",
        "paper_claim",
        "budget_gib",
    ):
        assert column in table
    row = table.iloc[0]
    assert row["model"] == "invres_full" and row["budget_gib"] == 4
    assert row["reversible_value"] % 16 == 0 and row["reversible_value"] >= row["twin_value"]
    assert row["reversible_peak_mib"] * MIB <= 4 * GIB < row["reversible_next_peak_mib"] * MIB
    assert "invres_full" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="too small"):
        main(["capacity", "--models", "bruegger", "--dimensions", "volume", "--budget-gib", "0.001", "--jobs", "1"])
