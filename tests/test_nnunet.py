"""revunet's networks inside nnU-Net v2: the network contract, exact sizing of plans, and nnU-Net's own pipeline.

The reference everywhere is nnU-Net's: its ``get_network_from_plans`` builds the networks, its
``ResidualEncoderUNet`` gives the output shapes and parameter count to match, and the end-to-end
test runs its planner, preprocessor, trainer and predictor (tests/nnunet_flow.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2", reason='needs the nnunet extra: pip install -c constraints.txt -e ".[nnunet]"')

import nibabel as nib
import numpy as np
import torch
from dynamic_network_architectures.building_blocks.residual import BottleneckD
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from revunet.cli import main
from revunet.integrations.nnunet import PartiallyReversibleNNUNet, ReversibleResEncUNet
from revunet.integrations.nnunet.plans import PlansError, Step, _grow, dataset_labels, size_plans, step_peak

pytestmark = pytest.mark.nnunet

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
OURS = "revunet.integrations.nnunet.ReversibleResEncUNet"
IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
# A small residual-encoder topology with an anisotropic last stride, as nnU-Net's planner writes it.
ARCH_KWARGS = {
    "n_stages": 3,
    "features_per_stage": [8, 16, 32],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1]],
    "n_blocks_per_stage": [2, 3, 3],
    "n_conv_per_stage_decoder": [1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def build(class_name: str, deep_supervision: bool = True, **extra: object) -> nn.Module:
    torch.manual_seed(0)
    return get_network_from_plans(
        class_name, {**ARCH_KWARGS, **extra}, IMPORTS, 4, 3, deep_supervision=deep_supervision
    )


def gradients(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    sum((o.float() ** 2).mean() for o in net(x)).backward()
    return {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def assert_same_gradients(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rtol: float) -> None:
    """Equal gradients, each relative to its own size; those 0 in exact arithmetic against the largest."""
    assert ours.keys() == reference.keys()
    largest = max(float(g.abs().max()) for g in reference.values())
    for name, g in reference.items():
        scale = max(float(g.abs().max()), 1e-3 * largest)
        assert float((ours[name] - g).abs().max()) <= rtol * scale, name


def with_random_norms(net: nn.Module) -> nn.Module:
    """Norm affines drawn at random, so that no coupling starts at nnU-Net's zero-initialised identity."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.instancenorm._InstanceNorm | nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net


def test_resenc_counterpart_matches_nnunets_outputs_and_parameter_count() -> None:
    ours, theirs = build(OURS), build(RESENC)
    x = torch.randn(2, 4, 16, 16, 8)
    assert [o.shape for o in ours(x)] == [o.shape for o in theirs(x)]  # full resolution first
    assert ours(x)[0].shape[2:] == x.shape[2:]
    count = sum(p.numel() for p in ours.parameters())
    assert abs(count / sum(p.numel() for p in theirs.parameters()) - 1) < 0.01
    ours.decoder.deep_supervision = False  # nnU-Net's trainer switches it so
    assert ours(x).shape == (2, 3, 16, 16, 8)
    size = (16, 16, 8)
    assert ours.compute_conv_feature_map_size(size) < theirs.compute_conv_feature_map_size(size)


def test_resenc_initialize_starts_each_coupling_as_the_identity() -> None:
    net = build(OURS)  # get_network_from_plans applies ``initialize``
    sequence = net.encoder.stages[0].couplings
    x = torch.randn(1, 8, 8, 8, 4)
    assert torch.equal(sequence(x), x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch.compile"])
def test_resenc_gradients_equal_its_twin_with_deep_supervision(compiled: bool) -> None:
    reversible = with_random_norms(build(OURS))
    twin = build(OURS, memory_saving=False)
    twin.load_state_dict(reversible.state_dict())
    x = torch.randn(2, 4, 16, 16, 8)
    net = torch.compile(reversible) if compiled else reversible  # nnU-Net compiles the whole network
    assert_same_gradients(gradients(net, x), gradients(twin, x), 1e-4)


@pytest.mark.parametrize("block", ["residual", "mbconv"])
def test_partially_reversible_takes_the_plans_topology_and_matches_its_twin(block: str) -> None:
    topology = {k: ARCH_KWARGS[k] for k in ("n_stages", "features_per_stage", "strides")}
    torch.manual_seed(0)
    name = "revunet.integrations.nnunet.PartiallyReversibleNNUNet"
    net = with_random_norms(get_network_from_plans(name, {**topology, "block": block}, [], 4, 3, deep_supervision=True))
    twin = PartiallyReversibleNNUNet(4, 3, **topology, block=block, deep_supervision=True, memory_saving=False)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 4, 16, 16, 8)
    assert [o.shape for o in net(x)] == [o.shape for o in build(RESENC)(x)]
    reference = gradients(twin, x)
    assert_same_gradients(gradients(net, x), reference, 1e-4)
    if block == "residual":  # nnU-Net compiles the whole network: the sequences stay eager, the rest compiles
        assert_same_gradients(gradients(torch.compile(net), x), reference, 1e-4)
    net.decoder.deep_supervision = False
    assert net(x).shape == (2, 3, 16, 16, 8)


def mixed_precision_gradient(net: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """nnU-Net's step up to the optimizer: autocast, GradScaler, unscaling, clipping at 12; the flat gradient."""
    optimizer = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=dtype is not None)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = sum((o.float() ** 2).mean() for o in net(x))
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def test_resenc_under_autocast_and_grad_scaler_adds_no_error_to_half_precision() -> None:
    """In float16 the rebuilt inputs differ from the stored ones by rounding: the reversible
    network's gradient must stay as close to the float32 gradient as the twin's float16 one is."""
    reversible = with_random_norms(build(OURS))
    twin = build(OURS, memory_saving=False)
    twin.load_state_dict(reversible.state_dict())
    x = torch.randn(2, 4, 16, 16, 8)
    exact = mixed_precision_gradient(twin, x, None)
    ours = mixed_precision_gradient(reversible, x, torch.float16)
    theirs = mixed_precision_gradient(twin, x, torch.float16)

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    assert distance(ours, exact) < 1.25 * distance(theirs, exact)
    assert distance(ours, theirs) < distance(theirs, exact)


def test_contract_errors_name_what_was_given() -> None:
    with pytest.raises(ValueError, match="BottleneckD"):
        ReversibleResEncUNet(4, **_resolved(), num_classes=3, block=BottleneckD)
    with pytest.raises(ValueError, match="odd"):
        ReversibleResEncUNet(4, **{**_resolved(), "features_per_stage": [8, 15, 32]}, num_classes=3)
    with pytest.raises(ValueError, match="stride 1"):
        PartiallyReversibleNNUNet(4, 3, 3, [8, 16, 32], [[2, 2, 2], [2, 2, 2], [2, 2, 2]])


def _resolved() -> dict[str, object]:
    kwargs = dict(ARCH_KWARGS)
    kwargs.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU)
    return kwargs


def tiny_plans(network_class: str = RESENC, patch: list[int] | None = None) -> dict[str, object]:
    """The keys of an nnU-Net plans file this integration reads (as nnU-Net's ResEnc M planner writes them)."""
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch or [16, 16, 8],
        "median_image_size_in_voxels": [24.0, 24.0, 12.0],
        "spacing": [1.0, 1.0, 1.0],
        "batch_dice": False,
        "architecture": {
            "network_class_name": network_class,
            "arch_kwargs": ARCH_KWARGS,
            "_kw_requires_import": IMPORTS,
        },
    }
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetResEncUNetMPlans",
        "configurations": {"3d_fullres": configuration},
        "label_manager": "LabelManager",
    }


DATASET_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3],
    "numTraining": 5,
    "file_ending": ".nii.gz",
}


def test_sizing_finds_a_patch_and_batch_no_step_larger_fits_and_keeps_the_plans_reusable() -> None:
    plans = tiny_plans()
    labels = dataset_labels(plans, DATASET_JSON)
    assert (labels.input_channels, labels.output_channels, labels.regions) == (4, 3, True)
    arch = {**plans["configurations"]["3d_fullres"]["architecture"], "network_class_name": OURS}
    budget = step_peak(Step(arch, (20, 20, 8), 2), labels)
    new_plans, (sized,) = size_plans(plans, DATASET_JSON, budget)
    step = sized.sized
    assert sized.sized_peak == step_peak(step, labels) <= budget and np.prod(step.patch) > 16 * 16 * 8
    assert sized.original_sized is not None and sized.patch_gained >= 1
    # no larger patch (one stride product more along any axis, up to the median image) fits
    for patch in _grow(step.patch, (4, 4, 2), (24, 24, 12)):
        assert step_peak(Step(arch, patch, step.batch), labels) > budget
    at_cap = step.batch >= 5 * 24 * 24 * 12 // np.prod(step.patch)
    assert at_cap or step_peak(Step(arch, step.patch, step.batch + 1), labels) > budget
    assert sized.reversible_peak_same_patch < sized.original_peak
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [16, 16, 8]  # the original is untouched
    written = new_plans["configurations"]["3d_fullres"]
    assert written["patch_size"] == list(step.patch) and written["batch_size"] == step.batch
    arch = written["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 4, 3)
    assert isinstance(net, ReversibleResEncUNet)


def test_sizing_shrinks_when_the_plans_patch_does_not_fit() -> None:
    plans = tiny_plans(patch=[24, 24, 12])
    labels = dataset_labels(plans, DATASET_JSON)
    arch = {**plans["configurations"]["3d_fullres"]["architecture"], "network_class_name": OURS}
    budget = step_peak(Step(arch, (16, 24, 12), 2), labels)
    _, (sized,) = size_plans(plans, DATASET_JSON, budget)
    assert sized.sized_peak <= budget and np.prod(sized.sized.patch) < 24 * 24 * 12


def test_plans_errors_name_the_key_and_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PlansError, match=r"configurations\.3d_fullres\.architecture\.network_class_name"):
        size_plans(
            tiny_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet"),
            DATASET_JSON,
            2**30,
            configurations=["3d_fullres"],
        )
    with pytest.raises(PlansError, match="configurations.3d_lowres: no such configuration"):
        size_plans(tiny_plans(), DATASET_JSON, 2**30, configurations=["3d_lowres"])
    plans = tmp_path / "nnUNetResEncUNetMPlans.json"
    plans.write_text("{not json")
    with pytest.raises(SystemExit, match="nnUNetResEncUNetMPlans.json: not valid JSON"):
        main(["nnunet-plans", "--plans", str(plans), "--budget-gib", "1"])
    plans.write_text(json.dumps(tiny_plans()))
    with pytest.raises(SystemExit, match="dataset.json: no such dataset.json file"):
        main(["nnunet-plans", "--plans", str(plans), "--budget-gib", "1"])
    assert not list(tmp_path.glob("*revunet*"))


def test_command_writes_a_new_plans_identifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "nnUNetResEncUNetMPlans.json"
    plans.write_text(json.dumps(tiny_plans()))
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    assert main(["nnunet-plans", "--plans", str(plans), "--budget-gib", "0.05"]) == 0
    written = json.loads((tmp_path / "nnUNetResEncUNetMPlans_revunet0.05G.json").read_text())
    assert written["plans_name"] == "nnUNetResEncUNetMPlans_revunet0.05G"
    out = capsys.readouterr().out
    assert "original MiB" in out and "-p nnUNetResEncUNetMPlans_revunet0.05G" in out
    ours = tmp_path / "partially.json"
    assert (
        main(
            [
                "nnunet-plans",
                "--plans",
                str(plans),
                "--budget-gib",
                "0.05",
                "--network",
                "partially-reversible",
                "--out",
                str(ours),
            ]
        )
        == 0
    )
    arch = json.loads(ours.read_text())["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 4, 3)
    assert isinstance(net, PartiallyReversibleNNUNet) and net.strides == [(2, 2, 2), (2, 2, 1)]


@pytest.mark.slow(90)
def test_nnunets_own_pipeline_trains_and_predicts_with_the_reversible_plans(tmp_path: Path) -> None:
    """Raw format -> nnU-Net's fingerprint, planning, preprocessing -> reversible plans -> its trainer -> its predictor."""
    flow = Path(__file__).with_name("nnunet_flow.py")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    done = subprocess.run(
        [sys.executable, str(flow), str(tmp_path)], env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "flow.json").read_text())
    assert result["network"] == "ReversibleResEncUNet"
    # inside nnU-Net's train_step (its batch, deep-supervision loss and clipping): the twin's gradients
    assert result["relative_gradient_difference"] < 1e-4
    assert result["loss_reversible"] == pytest.approx(result["loss_twin"], rel=1e-6)
    assert any(p.endswith("checkpoint_final.pth") for p in result["log"])
    predicted = nib.load(result["prediction"])
    raw_image = next((tmp_path / "nnUNet_raw").glob("Dataset*/imagesTr/BraTS20_Training_001_0000.nii.gz"))
    assert predicted.shape == nib.load(raw_image).shape
    assert set(np.unique(np.asarray(predicted.dataobj))) <= {0, 1, 2, 3}
