"""The memory-lean paths compute what the plain ones compute: layers, in-place inference, joins."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from revunet.memory.tracker import LiveTensorTracker
from revunet.models import build_model
from revunet.models.blocks import GroupInstanceNorm3d, residual_coupling_sequence
from revunet.models.lean_layers import LeanLeakyReLU, max_pool3d_lean


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_lean_max_pool_equals_the_plain_layer_bit_for_bit(autocast):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 8, 4)
    weights = torch.randn(1, 3, 3, 4, 2)
    results = []
    for pool in (max_pool3d_lean, lambda t: functional.max_pool3d(t, 2)):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            inp = leaf.to(autocast) if autocast is not None else leaf
            out = pool(inp)
        (out.float() * weights).sum().backward()
        results.append((out.float(), leaf.grad))
    (lean_out, lean_grad), (plain_out, plain_grad) = results
    assert torch.equal(lean_out, plain_out) and torch.equal(lean_grad, plain_grad)


def test_lean_max_pool_keeps_no_indices_from_forward_to_backward():
    """After conv -> pool, what stays alive for backward differs by the plain layer's int64 indices."""
    conv = nn.Conv3d(1, 8, 1)
    x = torch.randn(1, 1, 16, 16, 16)
    kept = {}
    for name, pool in (("lean", max_pool3d_lean), ("plain", lambda t: functional.max_pool3d(t, 2))):
        with LiveTensorTracker() as tracker:
            out = pool(conv(x))
            kept[name] = tracker.current
        del out
    assert kept["plain"] - kept["lean"] == 8 * 8**3 * 8  # channels x pooled voxels x int64


def test_lean_leaky_relu_gives_the_plain_layers_gradient_and_is_one():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5, 5)
    weights = torch.randn(2, 4, 5, 5, 5)
    grads = []
    for act in (LeanLeakyReLU(0.01), nn.LeakyReLU(0.01, inplace=True)):
        leaf = x.clone().requires_grad_(True)
        out = act(leaf * 1)  # an in-place activation needs a non-leaf input
        (out * weights).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    assert isinstance(LeanLeakyReLU(), nn.LeakyReLU) and LeanLeakyReLU().inplace


def test_inference_overwriting_the_input_gives_the_plain_forward():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 3, 2).eval()
    x = torch.randn(1, 8, 4, 4, 4)
    with torch.no_grad():
        expected = seq(x)
        handed = x.clone()
        out = seq(handed, overwrite_input=True)
        assert torch.equal(out, expected)
        assert out.data_ptr() == handed.data_ptr()  # computed in the input's storage
        kept = x.clone()
        seq(kept)
        assert torch.equal(kept, x)  # without the flag the input is left alone


def test_overwrite_input_is_ignored_when_a_graph_is_built():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 2, 2)
    x = torch.randn(1, 8, 4, 4, 4, requires_grad=True)
    y = seq(x, overwrite_input=True)
    assert y.data_ptr() != x.data_ptr()
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize(
    "name,params,size",
    [
        ("partially_reversible", {"channels": [8, 16, 32]}, 16),
        ("partially_reversible", {"channels": [8, 16], "block": "mbconv"}, 8),
        ("invres_partial", {"channels": [8, 16], "vae_input_size": [8, 8, 8]}, 8),
    ],
)
def test_models_infer_and_train_as_their_twins(name, params, size):
    """The lean paths (pooling, activation, in-place joins and inference) leave each model's
    function unchanged: the memory-saving model against its twin, in inference and training."""
    torch.manual_seed(0)
    model = build_model(name, **params)
    twin = build_model(name, **params, memory_saving=False)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(1, model.in_channels, size, size, size)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(_logits(model(x)), _logits(twin(x)), rtol=1e-5, atol=1e-6)
    model.train(), twin.train()
    for net in (model, twin):
        torch.manual_seed(1)
        _logits(net(x)).square().mean().backward()
    for (key, p), q in zip(model.named_parameters(), twin.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=key)


def _logits(output):
    return output.logits if hasattr(output, "logits") else output


def test_group_instance_norm_is_instance_norm_with_the_same_keys():
    torch.manual_seed(0)
    plain = nn.InstanceNorm3d(6, affine=True)
    lean = GroupInstanceNorm3d(6)
    assert list(lean.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-1, 1)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 4, 5, 3)
    weights = torch.randn(2, 6, 4, 5, 3)
    for norm in (plain, lean):
        (norm(x) * weights).sum().backward()
    torch.testing.assert_close(lean(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    assert lean(x)._base is None  # a tensor of its own: an in-place activation needs no copy back
