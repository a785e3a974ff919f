"""Tests of :mod:`revunet.memory.attribution`: the live bytes at each phase's peak, by owning module.

A tiny network whose every tensor can be counted by hand, a reversible one whose backward
recomputation must be charged to its coupling function, fake against real tensors on small
invertible-residual networks, and the ``_modules`` file of a paper table against its peak.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from revunet.cli import main
from revunet.memory.accounting import measure_training_step
from revunet.memory.attribution import collapse, grouped
from revunet.models import build_model
from revunet.report.figures.modules import memory_modules, peak_owners
from revunet.report.figures.plots import save_figure
from revunet.reversible import AdditiveCoupling, ReversibleSequence

FLOAT32 = 4


class Tiny(nn.Module):
    """Linear(4, 8) -> relu (in the root forward) -> Linear(8, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.second = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def test_tiny_model_attribution_by_hand():
    report = measure_training_step(Tiny(), (3, 4), mode="cpu", loss_fn=lambda out: out.sum())
    parameters = (4 * 8 + 8 + 8 * 2 + 2) * FLOAT32
    # The forward's peak comes when relu's output is made: first's output (3x8, which relu's
    # backward does not need but is still alive) and relu's (3x8, owned by the root forward);
    # second's 3x2 output comes after first's is freed.
    assert report.modules["forward"] == {
        "optimizer_state": 2 * parameters + 4 * FLOAT32,  # Adam's two moments and a step per tensor
        "parameters": parameters,
        "first": 3 * 8 * FLOAT32,
        "model": 3 * 8 * FLOAT32,
        "inputs": 3 * 4 * FLOAT32,
    }
    for phase, owners in report.modules.items():
        assert sum(owners.values()) == report.phase_peaks[phase]
    assert report.peak_modules == report.modules[report.peak_phase]


def test_reversible_recomputation_is_charged_to_the_coupling_function():
    class Rev(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = ReversibleSequence([AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.seq(x)

    report = measure_training_step(Rev(), (3, 4), mode="cpu", loss_fn=lambda out: out.sum())
    # Forward: the sequence's output (3x4) and F's temporary output (3x2) at the peak.
    assert report.modules["forward"]["seq"] == 3 * 4 * FLOAT32
    assert report.modules["forward"]["seq.blocks.0.f"] == 3 * 2 * FLOAT32
    # Backward: F is run again (with grad) from the rebuilt half; that output and its
    # gradient belong to F, not to autograd's own buffers.
    assert report.modules["backward"]["seq.blocks.0.f"] == 2 * 3 * 2 * FLOAT32
    assert report.modules["backward"]["autograd"] == FLOAT32  # only the seed gradient of the loss


def test_cpu_and_fake_attribution_agree_to_the_byte():
    """A reversible U-Net with GroupNorm: every owner, at full path depth, the same bytes."""
    torch.manual_seed(0)
    net = build_model("partially_reversible", in_channels=2, out_channels=2, channels=(8, 16), groups=4)
    cpu, fake = (measure_training_step(net, (1, 2, 16, 16, 16), mode=mode) for mode in ("cpu", "fake"))
    assert cpu.peak_bytes == fake.peak_bytes
    assert cpu.modules == fake.modules
    assert {"decoder.0.blocks.0.f.2", "encoder.0", "model"} <= set(cpu.modules["forward"])


@pytest.mark.parametrize("model", ["invres_full", "invres_partial"])
def test_cpu_and_fake_agree_by_level_with_instance_norm(model):
    """An in-place activation on instance norm's output (a view) goes through autograd's CopySlices,
    which on real CPU tensors copies the incoming gradient into a new buffer and on fake tensors
    keeps the convolution's: the same bytes move between a norm and the convolution after it.
    Per level (the ``_modules`` files' depth) the attribution agrees to the byte."""
    torch.manual_seed(0)
    net = build_model(model, in_channels=2, out_channels=2, channels=(8, 16), vae_input_size=(16, 16, 16))
    cpu, fake = (measure_training_step(net, (1, 2, 16, 16, 16), mode=mode) for mode in ("cpu", "fake"))
    assert cpu.peak_bytes == fake.peak_bytes
    for phase in cpu.modules:
        assert grouped(cpu.modules[phase]) == grouped(fake.modules[phase])
    assert any(owner.startswith("vae.") for owners in cpu.modules.values() for owner in grouped(owners))


def test_collapse_and_grouping():
    assert collapse("encoder.0.blocks.0.f", 2) == "encoder.0"
    assert collapse("head", 2) == "head"
    assert grouped({"encoder.0.blocks.0.f": 3, "encoder.0.blocks.0.g": 4, "head.conv": 9}) == {
        "head.conv": 9,
        "encoder.0": 7,
    }


def test_table_modules_file_sums_to_each_rows_peak(tmp_path):
    out = tmp_path / "iseg.csv"
    assert main(["memory", "--table", "invres_iseg", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    modules = pd.read_csv(tmp_path / "iseg_modules.csv")
    assert list(modules.columns) == ["row", "module", "phase", "mib"]
    assert set(modules["row"]) == set(table["row"])
    for record in table.itertuples():
        at_peak = modules[(modules["row"] == record.row) & (modules["phase"] == record.peak_phase)]
        assert at_peak["mib"].sum() == pytest.approx(record.measured_mb, rel=0.01)
    # A row's largest owner at its peak is a module path rather than a category: the baseline's top
    # decoder level; in both invertible-residual networks, whose couplings now rebuild handed-over
    # tensors in place, the VAE branch's full-resolution up stage, recomputed in backward.
    largest = {}
    for record in table.itertuples():
        at_peak = modules[(modules["row"] == record.row) & (modules["phase"] == record.peak_phase)]
        largest[record.row] = at_peak.iloc[0]["module"]
    assert largest == {"3D U-Net": "decoder.0", "Partially-InvRes": "vae.up", "Fully-InvRes": "vae.up"}
    # The report's stacked bars: one bar per row, adding up to the row's peak.
    owners = peak_owners(table, modules)
    assert list(owners.index) == list(table["row"])
    assert owners.sum(axis=1).to_numpy() == pytest.approx(table["measured_mb"].to_numpy(), rel=0.01)
    save_figure(memory_modules("invres_iseg", table, modules), tmp_path, "memory_modules_invres_iseg")
    assert (tmp_path / "memory_modules_invres_iseg.png").read_bytes().startswith(b"\x89PNG")
