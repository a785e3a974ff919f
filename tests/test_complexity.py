"""Activation memory against depth: the growth orders of Table 1 of the invertible-residual paper, measured."""

from __future__ import annotations

import pandas as pd
import pytest

from revunet.cli import main
from revunet.memory.accounting import measure_training_step
from revunet.memory.complexity import (
    CheckpointedSequence,
    build_chain,
    complexity_table,
    growth_exponent,
    sqrt_segments,
)

DEPTHS = (1, 2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return complexity_table(DEPTHS, channels=16, size=16, groups=8)


def _activations(table: pd.DataFrame, method: str) -> list[float]:
    return list(table[table.method == method].sort_values("depth")["activations_mb"])


def test_reversible_activations_do_not_grow_with_depth(table):
    """Never above the one-block chain's; deeper chains may read lower: once the parameters' gradients
    outweigh one block's maps, the step's peak moves to the end of backward, where fewer maps live."""
    values = _activations(table, "reversible")
    assert max(values) <= 1.03 * values[0]
    assert table[table.method == "reversible"]["growth_exponent"].iloc[0] < 0.05


def test_naive_grows_linearly_and_checkpointing_in_between(table):
    slope = table.drop_duplicates("method").set_index("method")["growth_exponent"]
    assert slope["naive"] >= 0.8
    assert 0.3 <= slope["checkpointing"] <= slope["naive"] - 0.25
    naive, checkpointed, reversible = (_activations(table, m) for m in ("naive", "checkpointing", "reversible"))
    assert checkpointed[:2] == naive[:2]  # one segment: PyTorch leaves the last segment unchecked
    for depth, n, c, r in zip(DEPTHS, naive, checkpointed, reversible):
        if depth >= 4:
            assert r < c < n


def test_checkpointing_is_seen_by_the_tracker_as_on_real_tensors():
    model = build_chain("checkpointing", 4, 8, 4)
    assert isinstance(model, CheckpointedSequence) and model.segments == 2 == sqrt_segments(4)
    real = model.to_empty(device="cpu")
    for parameter in real.parameters():
        parameter.data.normal_()
    fake = measure_training_step(real, (1, 8, 8, 8, 8), mode="fake")
    cpu = measure_training_step(real, (1, 8, 8, 8, 8), mode="cpu")
    assert fake.peak_bytes == cpu.peak_bytes
    assert fake.breakdown == cpu.breakdown
    naive = measure_training_step(build_chain("naive", 4, 8, 4), (1, 8, 8, 8, 8), mode="fake")
    assert fake.breakdown["activations"] < naive.breakdown["activations"]


def test_growth_exponent_and_errors():
    assert growth_exponent([1, 4, 8, 16], [5.0, 4.0, 8.0, 16.0]) == pytest.approx(1.0)
    assert growth_exponent([4, 16, 64], [2.0, 4.0, 8.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two depths"):
        growth_exponent([1, 2, 4], [1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="method"):
        build_chain("recursive", 4, 8, 4)
    with pytest.raises(ValueError, match="positive"):
        complexity_table([0, 4, 8])


def test_cli_writes_csv_and_both_figures(tmp_path, capsys):
    out, figure = tmp_path / "complexity.csv", tmp_path / "figures" / "complexity.png"
    argv = ["complexity", "--depths", "1", "4", "8", "--channels", "8", "--size", "8", "--groups", "4"]
    assert main([*argv, "--out", str(out), "--figure", str(figure)]) == 0
    written = pd.read_csv(out)
    assert {"depth", "method", "peak_mb", "activations_mb", "growth_exponent"} <= set(written.columns)
    assert sorted(written["method"].unique()) == ["checkpointing", "naive", "reversible"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in figure.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert "growth exponent" in capsys.readouterr().out.lower()
    with pytest.raises(SystemExit, match="png or .pdf"):
        main([*argv, "--figure", str(tmp_path / "x.svg")])
