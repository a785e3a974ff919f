"""The model zoo: paper parameter counts, shapes, twins, invertibility, the VAE branch, MBConv."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from revunet.cli import main
from revunet.memory.accounting import measure_training_step
from revunet.models import SegmentationWithVAE, available, build_model, model_spec, parameter_count
from revunet.models.blocks import MBConv3d
from revunet.models.vae import kl_divergence, reconstruction_l2

# Small configurations of every registry model: (params, input shape).
SMALL = {
    "nonewnet": ({"channels": (6, 12, 24), "groups": 3}, (2, 4, 16, 16, 16)),
    "partially_reversible": ({"channels": (8, 16, 32), "groups": 4, "encoder_depth": 2}, (2, 4, 16, 16, 16)),
    "unet3d": ({"channels": (8, 16, 32)}, (2, 4, 16, 16, 16)),
    "invres_partial": ({"channels": (8, 16, 32), "vae_input_size": (16, 16, 16)}, (2, 4, 16, 16, 16)),
    "invres_full": ({"channels": (8, 16, 32), "vae_input_size": (16, 16, 16)}, (2, 4, 16, 16, 16)),
}
MBCONV = ({"channels": (8, 16, 32), "groups": 4, "block": "mbconv", "expand_ratio": 3}, (1, 4, 16, 16, 16))
REVERSIBLE = [name for name in available() if model_spec(name).reversible]


def count_on_meta(name: str, **params) -> int:
    with torch.device("meta"):
        return parameter_count(build_model(name, **params))


def logits_of(output) -> torch.Tensor:
    return output.logits if isinstance(output, SegmentationWithVAE) else output


def test_registry_lists_every_architecture_of_the_papers():
    assert available() == ["nonewnet", "partially_reversible", "unet3d", "invres_partial", "invres_full"]
    assert set(SMALL) == set(available())
    with pytest.raises(KeyError, match="unknown model 'unet2d'.*nonewnet"):
        build_model("unet2d")
    with pytest.raises(TypeError, match="'nonewnet' is not reversible"):
        build_model("nonewnet", memory_saving=False)
    with pytest.raises(TypeError, match="'unet3d' rejected parameters \\['depth'\\]"):
        build_model("unet3d", depth=3)


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("nonewnet", {}, 12_425_253),
        ("partially_reversible", {}, 12_365_283),
        ("partially_reversible", {"encoder_depth": 2}, 18_248_403),
    ],
)
def test_bruegger_parameter_counts_are_exact(name, params, expected):
    assert count_on_meta(name, **params) == expected


def test_invres_family_parameter_counts_are_within_ten_percent():
    """The memory comparison of the invertible-residual paper is between networks of one size."""
    for config in ("iSeg", "BraTS"):
        counts = {}
        for name in ("unet3d", "invres_partial", "invres_full"):
            params = dict(model_spec(name).paper_configs[config])
            params.pop("vae_input_size", None)
            if name != "unet3d":
                params["vae_input_size"] = None  # the baseline has no VAE branch
            counts[name] = count_on_meta(name, **params)
        assert max(counts.values()) <= 1.10 * min(counts.values()), (config, counts)


def test_models_cli_prints_every_model_with_its_parameters(capsys, tmp_path):
    out = tmp_path / "models.csv"
    assert main(["models", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in available():
        assert name in printed
    for figure in ("12,425,253", "12,365,283", "18,248,403"):
        assert figure in printed
    import pandas as pd

    table = pd.read_csv(out)
    assert set(table["model"]) == set(available())
    assert (table["parameters"] > 0).all()
    with pytest.raises(SystemExit, match="unknown model"):
        main(["models", "resnet"])


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_shapes_and_size_errors(name):
    params, shape = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, **params)
    output = model(torch.randn(shape))
    assert logits_of(output).shape == (shape[0], 3, *shape[2:])
    if isinstance(output, SegmentationWithVAE):
        assert output.reconstruction.shape == shape
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 4, 16, 18, 16))
    with pytest.raises(ValueError, match="expects 4 input channels"):
        model(torch.randn(1, 2, 16, 16, 16))


@pytest.mark.parametrize("name", ["unet3d", "invres_partial", "invres_full", "partially_reversible"])
def test_softmax_head_for_iseg(name):
    params = dict(SMALL[name][0], in_channels=2, out_channels=4, output="softmax")
    model = build_model(name, **params)
    output = logits_of(model(torch.randn(1, 2, 16, 16, 16)))
    probabilities = model.head.probabilities(output)
    assert probabilities.shape == (1, 4, 16, 16, 16)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 16, 16, 16))


def _gradients(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(7)  # the VAE's sample and dropout masks
    output = model(x)
    loss = (logits_of(output) ** 2).mean()
    if isinstance(output, SegmentationWithVAE):
        loss = loss + reconstruction_l2(output.reconstruction, x) + kl_divergence(output.mu, output.logvar)
    model.zero_grad()
    loss.backward()
    return [p.grad for p in model.parameters()]


HEAD_NORM = ({**SMALL["partially_reversible"][0], "head_norm": True}, SMALL["partially_reversible"][1])


@pytest.mark.parametrize(
    "name, setup",
    [(n, SMALL[n]) for n in REVERSIBLE] + [("partially_reversible", MBCONV), ("partially_reversible", HEAD_NORM)],
)
def test_reversible_models_match_their_twins(name, setup):
    params, shape = setup
    torch.manual_seed(0)
    reversible = build_model(name, **params)
    torch.manual_seed(0)
    twin = build_model(name, **params, memory_saving=False)
    for (key, a), b in zip(reversible.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key
    x = torch.randn(shape)
    for ours, reference in zip(_gradients(reversible, x), _gradients(twin, x), strict=True):
        assert ours is not None and reference is not None
        error = (ours - reference).norm() / reference.norm().clamp_min(1e-12)
        assert error <= 1e-4


def test_dropout_is_replayed_in_the_recomputation():
    params, shape = SMALL["partially_reversible"]
    torch.manual_seed(0)
    reversible = build_model("partially_reversible", **params, dropout=0.2)
    torch.manual_seed(0)
    twin = build_model("partially_reversible", **params, dropout=0.2, memory_saving=False)
    x = torch.randn(shape)
    for ours, reference in zip(_gradients(reversible, x), _gradients(twin, x), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", REVERSIBLE)
def test_twin_needs_clearly_more_activation_memory(name):
    params = dict(SMALL[name][0], encoder_depth=2, decoder_depth=2)
    if "vae_input_size" in params:
        params["vae_input_size"] = (32, 32, 32)
    shape = (1, 4, 32, 32, 32)
    with torch.device("meta"):
        reversible = build_model(name, **params)
        twin = build_model(name, **params, memory_saving=False)
    ours = measure_training_step(reversible, shape, mode="fake").breakdown["activations"]
    theirs = measure_training_step(twin, shape, mode="fake").breakdown["activations"]
    assert theirs > 1.5 * ours, (name, theirs, ours)


def test_fully_invertible_encoder_rebuilds_its_input():
    torch.manual_seed(0)
    model = build_model("invres_full", channels=(8, 16, 32), vae_input_size=None).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        skips, bottleneck = model.encode(x)
        assert [s.shape[1] for s in skips] == [6, 12] and bottleneck.shape == (2, 32, 4, 4, 4)
        # Channels in = channels out: nothing was thrown away.
        kept = sum(s.numel() for s in skips) + bottleneck.numel()
        assert kept == 2 * (6 * 16**3 + 12 * 8**3 + 32 * 4**3)
        rebuilt = model.invert_encoder(skips, bottleneck)
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-4)


def _per_level_sequences(model: nn.Module) -> nn.Module:
    """The previous Fully-InvRes: each level a memory-saving sequence, joined by plain autograd."""
    old = copy.deepcopy(model)
    old.memory_saving = False
    for sequence in (*old.encoder, *old.decoder):
        sequence.memory_saving = True
    return old


@pytest.mark.parametrize("vae, dropout", [(None, 0.0), ((16, 16, 16), 0.2)])
def test_fully_invertible_unet_gradients_equal_the_twin_in_float64(vae, dropout):
    """One memory-saving node for the whole U-Net (the bottleneck's gradient from the VAE
    joining its backward, dropout masks replayed) gives the twin's gradients for the input
    and every parameter."""
    torch.manual_seed(0)
    model = build_model("invres_full", channels=(8, 16, 32), vae_input_size=vae, dropout=dropout).double()
    twin = copy.deepcopy(model)
    twin.memory_saving = False
    x = torch.randn(2, 4, 16, 16, 16, dtype=torch.float64)
    grads = []
    for net in (model, twin):
        image = x.clone().requires_grad_(True)
        grads.append([*_gradients(net, image), image.grad])
    for name, ours, reference in zip([*dict(model.named_parameters()), "input"], *grads, strict=True):
        assert ours is not None and reference is not None, name
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12, msg=name)


def test_fully_invertible_unet_is_inverted_from_its_output():
    torch.manual_seed(0)
    model = build_model("invres_full", channels=(8, 16, 32), vae_input_size=None).double().eval()
    x = torch.randn(1, 4, 16, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        features, bottleneck = model.features(x)
        assert features.shape == (1, 8, 16, 16, 16) and bottleneck.shape == (1, 32, 4, 4, 4)
        torch.testing.assert_close(model.invert(features), x, rtol=0, atol=1e-9)


def test_fully_invertible_unet_as_one_node_needs_less_memory_than_per_level_sequences():
    with torch.device("meta"):
        model = build_model("invres_full", channels=(8, 16, 32), vae_input_size=None)
    twin = copy.deepcopy(model)
    twin.memory_saving = False
    shape = (1, 4, 32, 32, 32)
    peaks = [
        measure_training_step(net, shape, mode="fake").peak_bytes for net in (model, _per_level_sequences(model), twin)
    ]
    assert peaks == sorted(peaks) and len(set(peaks)) == 3, peaks


def test_fully_invertible_unet_output_modified_in_place_is_an_error():
    model = build_model("invres_full", channels=(8, 16, 32), vae_input_size=None)
    features, _ = model.features(torch.randn(1, 4, 16, 16, 16))
    with pytest.raises(RuntimeError, match="output of a memory-saving invertible U-Net was modified"):
        torch.relu_(features).sum().backward()


def test_fully_invertible_channels_must_allow_the_split():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("invres_full", channels=(8, 20, 40), vae_input_size=None)


def test_vae_branch_outputs_and_losses():
    params, shape = SMALL["invres_partial"]
    model = build_model("invres_partial", **params)
    x = torch.randn(shape)
    output = model(x)
    assert output.reconstruction.shape == x.shape
    assert output.mu.shape == output.logvar.shape == (shape[0], 128)
    for term in (reconstruction_l2(output.reconstruction, x), kl_divergence(output.mu, output.logvar)):
        assert term.dim() == 0 and torch.isfinite(term)
    # KL is zero exactly at the prior and positive elsewhere.
    zero = torch.zeros(3, 5)
    assert kl_divergence(zero, zero) == 0
    assert kl_divergence(zero + 0.5, zero) > 0
    # Eval mode uses z = mu: two passes agree.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).reconstruction, model(x).reconstruction)
        # Another size (full-volume inference) skips the branch instead of failing.
        other = model(torch.randn(1, 4, 24, 16, 16))
    assert other.reconstruction is None and other.logits.shape == (1, 3, 24, 16, 16)
    model.train()
    with pytest.raises(ValueError, match=r"built for patches of size \(16, 16, 16\)"):
        model(torch.randn(1, 4, 24, 16, 16))


def test_mbconv_is_depthwise_and_honours_expand_ratio_and_channels():
    channels, ratio = 15, 3
    block = MBConv3d(channels, ratio, groups=30)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    expand, depthwise, project = convs
    assert depthwise.groups == channels * ratio == depthwise.in_channels == depthwise.out_channels
    assert depthwise.kernel_size == (3, 3, 3) and expand.kernel_size == project.kernel_size == (1, 1, 1)
    hidden = channels * ratio
    by_hand = channels * hidden + 2 * hidden + hidden * 27 + 2 * hidden + hidden * channels + 2 * channels
    assert parameter_count(block) == by_hand
    # GroupNorm takes the largest group count dividing the width: gcd(30, 15) = 15.
    assert [m.num_groups for m in block.modules() if isinstance(m, nn.GroupNorm)] == [15, 15, 15]
    # The whole network: encoder couplings are MBConv at half width, decoder couplings residual.
    widths, depth = (30, 60, 120), 2
    model = build_model(
        "partially_reversible", channels=widths, block="mbconv", expand_ratio=ratio, encoder_depth=depth
    )

    def mbconv(c: int) -> int:
        h = c * ratio
        return c * h + 2 * h + 27 * h + 2 * h + h * c + 2 * c

    def residual(c: int) -> int:
        return 2 * c + 27 * c * c

    expected = 4 * widths[0] * 27  # stem
    expected += sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))  # 1x1 down, with bias
    expected += sum(b * a + a for a, b in zip(widths[:-1], widths[1:]))  # 1x1 up, with bias
    expected += sum(depth * 2 * mbconv(w // 2) for w in widths)  # encoder
    expected += sum(2 * residual(w // 2) for w in widths)  # decoder, depth 1
    expected += widths[0] * 3 + 3  # head
    assert parameter_count(model) == expected


def test_checkpointed_vae_branch_gives_the_twins_gradients():
    """memory_saving checkpoints the VAE's up stages: same outputs and gradients as plain autograd."""
    from revunet.models.vae import VAEBranch

    torch.manual_seed(0)
    saving = VAEBranch((8, 16), (16, 16, 16), image_channels=2, latent_dim=4, memory_saving=True).eval()
    plain = copy.deepcopy(saving)
    plain.memory_saving = False
    bottleneck = torch.randn(1, 16, 8, 8, 8)
    results = []
    for branch in (saving, plain):
        leaf = bottleneck.clone().requires_grad_(True)
        reconstruction, mu, logvar = branch(leaf)
        (reconstruction.square().sum() + mu.sum() + logvar.sum()).backward()
        results.append((reconstruction.detach(), leaf.grad, [p.grad.clone() for p in branch.parameters()]))
    (r1, g1, p1), (r2, g2, p2) = results
    assert torch.equal(r1, r2)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(p1, p2))


def test_concat_merge_is_the_fusion_of_the_concatenation():
    """Partially-InvRes joins skip and upsampled map without concatenating: the same function."""
    torch.manual_seed(0)
    net = build_model("invres_partial", in_channels=2, out_channels=2, channels=(8, 16), vae_input_size=None).double()
    h, skip = torch.randn(1, 16, 4, 4, 4, dtype=torch.double), torch.randn(1, 8, 8, 8, 8, dtype=torch.double)
    upsampled = torch.nn.functional.interpolate(net.up[0](h), scale_factor=2, mode="trilinear", align_corners=False)
    expected = net.fuse[0](torch.cat((upsampled, skip), dim=1))
    low = net._upsampled_part(0, net.up[0](h))
    joined = net._join(0, torch.nn.functional.interpolate(low, scale_factor=2, mode="trilinear"), skip)
    assert torch.allclose(joined, expected, rtol=0, atol=1e-12)
