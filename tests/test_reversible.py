"""The reversible core against its plain-autograd twin, corner by corner."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from revunet.models.blocks import NormActConv3d, residual_coupling_sequence
from revunet.reversible import (
    AdditiveCoupling,
    Inverted,
    InvertibleSqueeze3d,
    LearnableSqueeze3d,
    OrthogonalChannelMix3d,
    ReversibleSequence,
)


def twin_of(sequence: ReversibleSequence) -> ReversibleSequence:
    twin = copy.deepcopy(sequence)
    twin.memory_saving = False
    return twin


def run(model: nn.Module, x: torch.Tensor, seed: int = 0, loss=None):
    """Forward + backward of a fixed non-trivial loss; returns (output, input grad, param grads)."""
    torch.manual_seed(seed)
    y = model(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (loss or (lambda out: (out * weights).sum() + out.square().mean()))(y).backward()
    return y.detach(), x.grad, [p.grad for p in model.parameters()]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_grads_match(seq_model, twin_model, x, tol, seed=0):
    x_a = x.detach().clone().requires_grad_(True)
    x_b = x.detach().clone().requires_grad_(True)
    y_a, gx_a, gp_a = run(seq_model, x_a, seed)
    y_b, gx_b, gp_b = run(twin_model, x_b, seed)
    assert rel_err(y_a, y_b) <= tol
    assert rel_err(gx_a, gx_b) <= tol
    assert len(gp_a) == len(gp_b) > 0
    for (name, _), ga, gb in zip(seq_model.named_parameters(), gp_a, gp_b):
        assert ga is not None, f"{name} got no gradient"
        assert rel_err(ga, gb) <= tol, f"{name}: {rel_err(ga, gb)}"


@pytest.mark.parametrize("depth", range(1, 9))
def test_gradients_equal_twin_float32(depth):
    torch.manual_seed(depth)
    seq = residual_coupling_sequence(8, depth, 2, memory_saving=True)
    x = torch.randn(2, 8, 6, 6, 6)
    assert_grads_match(seq, twin_of(seq), x, tol=1e-5)


@pytest.mark.slow(10)
@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_gradcheck_float64_input_and_parameters(input_requires_grad):
    """Finite differences against the memory-saving backward, for the input and every parameter.

    ``fast_mode`` compares the two Jacobians along random directions of the inputs and outputs
    instead of entry by entry: a wrong gradient fails it with probability one, in a few seconds
    rather than the 80 s of the full Jacobians.
    """
    torch.manual_seed(0)
    seq = residual_coupling_sequence(4, 3, 1, memory_saving=True).double()
    names = [n for n, _ in seq.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in seq.parameters()]
    x = torch.randn(1, 4, 3, 3, 3, dtype=torch.float64, requires_grad=input_requires_grad)

    def as_function(inp, *flat_params):
        # functional_call hands these tensors to the sequence as its parameters, so the
        # memory-saving autograd node sees them as inputs and gradcheck perturbs them.
        return torch.func.functional_call(seq, dict(zip(names, flat_params)), (inp,))

    assert torch.autograd.gradcheck(as_function, (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


def test_parameters_get_gradients_when_input_needs_none():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 3, 2, memory_saving=True)
    twin = twin_of(seq)
    x = torch.randn(1, 8, 6, 6, 6)  # raw images: no requires_grad
    seq(x).square().sum().backward()
    twin(x).square().sum().backward()
    for (name, p), q in zip(seq.named_parameters(), twin.parameters()):
        assert p.grad is not None, f"{name} got no gradient"
        assert rel_err(p.grad, q.grad) <= 1e-5


def test_input_reused_as_skip_connection():
    torch.manual_seed(0)
    stem = nn.Conv3d(2, 8, 3, padding=1)
    seq = residual_coupling_sequence(8, 2, 2, memory_saving=True)
    model = nn.ModuleDict({"stem": stem, "seq": seq})
    twin = copy.deepcopy(model)
    twin["seq"].memory_saving = False
    raw = torch.randn(1, 2, 6, 6, 6)

    def unet_like(m):
        h = m["stem"](raw)
        before = h.detach().clone()
        out = m["seq"](h) + h  # h is used again after the sequence: a skip connection
        (out * out.detach().sign()).sum().backward()
        return before, h

    before, h = unet_like(model)
    assert torch.equal(before, h.detach()), "the sequence modified its input"
    unet_like(twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5


def test_dropout_replayed_and_global_rng_untouched():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 4, 2, memory_saving=True, dropout=0.3)
    twin = twin_of(seq)
    x = torch.randn(2, 8, 6, 6, 6)
    assert_grads_match(seq, twin, x, tol=1e-5, seed=7)

    # The forward draws exactly what the twin draws, and the backward's replay leaves
    # the global generator where the forward left it (no reseeding, no extra draws).
    torch.manual_seed(3)
    twin(x)
    state_after_twin = torch.get_rng_state()
    torch.manual_seed(3)
    y = seq(x.clone().requires_grad_(True))
    state_after_forward = torch.get_rng_state()
    assert torch.equal(state_after_forward, state_after_twin)
    y.sum().backward()
    assert torch.equal(torch.get_rng_state(), state_after_forward)


def test_autocast_bfloat16_matches_twin_under_autocast():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 3, 2, memory_saving=True)
    twin = twin_of(seq)
    x = torch.randn(2, 8, 6, 6, 6)

    def grads(model, use_autocast):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
            y = model(xi)
            loss = (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum()
        loss.backward()
        return [xi.grad] + [p.grad.clone() for p in model.parameters()]

    reversible, twin_bf16, twin_fp32 = grads(seq, True), grads(twin, True), grads(twin, False)
    # Same math replayed under the same autocast: only the rounding of reconstructed
    # inputs differs, far below bfloat16's resolution (2^-8).
    assert max(rel_err(a, b) for a, b in zip(reversible, twin_bf16)) <= 1e-4
    # The bound is meaningful: a recomputation outside autocast would break it.
    assert max(rel_err(a, b) for a, b in zip(twin_bf16, twin_fp32)) > 1e-3


def test_batchnorm_running_stats_updated_once():
    torch.manual_seed(0)

    def bn_block():
        return nn.Sequential(nn.BatchNorm3d(4, momentum=0.5), nn.Conv3d(4, 4, 3, padding=1))

    seq = ReversibleSequence([AdditiveCoupling(bn_block(), bn_block()) for _ in range(2)])
    twin = twin_of(seq)
    x = torch.randn(3, 8, 4, 4, 4)
    assert_grads_match(seq, twin, x, tol=1e-5)
    for (name, a), b in zip(seq.named_buffers(), twin.buffers()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name
    assert all(m.num_batches_tracked.item() == 1 for m in seq.modules() if isinstance(m, nn.BatchNorm3d))


def test_sync_batchnorm_refused_with_clear_error():
    block = AdditiveCoupling(nn.SyncBatchNorm(2), nn.Identity())
    with pytest.raises(TypeError, match="SyncBatchNorm.*memory_saving=False"):
        ReversibleSequence([block])


def test_groupnorm_and_instancenorm_just_work():
    torch.manual_seed(0)

    def inorm_block():
        return nn.Sequential(nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(), nn.Conv3d(4, 4, 3, padding=1))

    seq = ReversibleSequence([AdditiveCoupling(inorm_block(), inorm_block()) for _ in range(2)])
    assert_grads_match(seq, twin_of(seq), torch.randn(2, 8, 5, 5, 5), tol=1e-5)


@pytest.mark.parametrize("depth", [1, 8, 32])
def test_reconstruction_error_bounded(depth):
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, depth, 2)
    x = torch.randn(2, 8, 8, 8, 8)
    with torch.no_grad():
        y = seq(x)
        error = (seq.inverse(y) - x).abs().max().item()
    assert error < 1e-4, f"depth {depth}: max reconstruction error {error}"


def test_invalid_blocks_rejected():
    with pytest.raises(TypeError, match="block 1 .*Conv3d.*InvertibleModule"):
        ReversibleSequence([InvertibleSqueeze3d(), nn.Conv3d(8, 8, 1)])
    with pytest.raises(ValueError, match="at least one block"):
        ReversibleSequence([])
    coupling = AdditiveCoupling(nn.Identity(), nn.Identity())
    with pytest.raises(ValueError, match="odd"):
        coupling(torch.randn(1, 3, 2, 2, 2))


def test_eval_and_no_grad_run_plain_forward():
    torch.manual_seed(0)
    seq = residual_coupling_sequence(8, 2, 2)
    x = torch.randn(1, 8, 4, 4, 4)
    with torch.no_grad():
        y = seq(x)
    assert y.grad_fn is None
    assert torch.allclose(y, twin_of(seq)(x), atol=1e-6)


def test_double_backward_refused():
    seq = residual_coupling_sequence(4, 1, 1)
    x = torch.randn(1, 4, 3, 3, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(seq(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double"):
        gx.sum().backward()


# --- invertible resampling ---------------------------------------------------


def test_squeeze_is_exact_permutation():
    x = torch.arange(2 * 3 * 4 * 6 * 2, dtype=torch.float32).reshape(2, 3, 4, 6, 2)
    squeeze = InvertibleSqueeze3d()
    y = squeeze(x)
    assert y.shape == (2, 24, 2, 3, 1)
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    assert torch.equal(squeeze.inverse(y), x)
    # channel c*8 + 4*dz + 2*dy + dx holds voxel (2i+dz, 2j+dy, 2k+dx) of channel c
    assert y[1, 2 * 8 + 4 * 1 + 2 * 0 + 1, 1, 2, 0] == x[1, 2, 3, 4, 1]


def test_squeeze_odd_size_error_names_the_axis():
    with pytest.raises(ValueError, match="odd: H"):
        InvertibleSqueeze3d()(torch.randn(1, 1, 4, 5, 4))


def test_orthogonal_mixing_is_orthogonal_after_training_steps():
    torch.manual_seed(0)
    mix = OrthogonalChannelMix3d(16)
    opt = torch.optim.SGD(mix.parameters(), lr=0.5)
    x = torch.randn(2, 16, 3, 3, 3)
    for _ in range(3):
        opt.zero_grad()
        mix(x).pow(3).sum().backward()
        opt.step()
    w = mix.weight().detach()
    assert mix.generator.abs().max() > 0.01, "training did not move the generator"
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(mix.inverse(mix(x)), x, atol=1e-5)


def test_learnable_down_and_upsampling_inside_memory_saving_sequence():
    torch.manual_seed(0)
    half = 8  # after squeezing 2 channels -> 16; couplings work on halves of 8

    def coupling():
        return AdditiveCoupling(NormActConv3d(half, 2), NormActConv3d(half, 2))

    blocks = [LearnableSqueeze3d(2), coupling(), coupling(), Inverted(LearnableSqueeze3d(2))]
    seq = ReversibleSequence(blocks, memory_saving=True)
    x = torch.randn(2, 2, 8, 8, 8)
    assert seq(x).shape == x.shape
    assert_grads_match(seq, twin_of(seq), x, tol=1e-5)
    with torch.no_grad():
        assert (seq.inverse(seq(x)) - x).abs().max() < 1e-5


def test_parameter_changed_before_backward_is_an_error():
    seq = residual_coupling_sequence(4, 2, 1)
    y = seq(torch.randn(1, 4, 3, 3, 3))
    with torch.no_grad():
        seq.blocks[1].g[2].weight.mul_(2)
    with pytest.raises(RuntimeError, match="'weight' of Conv3d was modified in place"):
        y.sum().backward()


def test_output_modified_in_place_is_an_error():
    seq = residual_coupling_sequence(4, 2, 1)
    y = seq(torch.randn(1, 4, 3, 3, 3))
    out = torch.relu_(y)
    with pytest.raises(RuntimeError, match="output of a memory-saving ReversibleSequence was modified"):
        out.sum().backward()


def test_second_backward_needs_retain_graph():
    seq = residual_coupling_sequence(4, 2, 1)
    x = torch.randn(1, 4, 3, 3, 3, requires_grad=True)
    loss = seq(x).square().sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # the graph was kept: a second backward works and doubles the gradient
    assert torch.allclose(x.grad, 2 * first, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="retain_graph|second time|freed"):
        loss.backward()


# --------------------------------------------------------------------------- tensors handed over


def _stack(memory_saving: bool = True) -> nn.Sequential:
    """A sequence between two layers: its output and its incoming gradient belong to no one else."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(2, 8, 1), residual_coupling_sequence(8, 2, 2, memory_saving=memory_saving), nn.Conv3d(8, 2, 1)
    )


def test_gradient_handed_over_becomes_the_input_gradient_in_place():
    """The engine's fresh gradient is rebuilt into the input's gradient in its own storage."""
    seq = residual_coupling_sequence(8, 2, 2)
    x = torch.randn(1, 8, 4, 4, 4, requires_grad=True)
    arriving: list[int] = []
    y = seq(x)
    y.register_hook(lambda g: arriving.append(g.data_ptr()))  # the address only: no reference kept
    loss = y.square().sum()
    del y  # nothing but the sequence itself holds its output now
    loss.backward()
    assert x.grad is not None and x.grad.data_ptr() == arriving[0]


@pytest.mark.parametrize("holder", ["caller", "hook", "output"])
def test_tensors_someone_else_holds_are_never_overwritten(holder):
    """A gradient passed to backward(), one a hook keeps, and an output the caller keeps stay intact.

    Only the one tensor named is held: the output is released before backward in the first two
    cases (``h + 0`` passes the caller's gradient through to the sequence unchanged).
    """
    model, twin = _stack(), _stack(memory_saving=False)
    x = torch.randn(1, 2, 4, 4, 4)
    passed_gradient = torch.randn(1, 8, 4, 4, 4)
    grads_seen = {}
    for name, net in (("saving", model), ("twin", twin)):
        h = net[1](net[0](x))
        if holder == "caller":
            before = passed_gradient.clone()
            root = h + 0
            del h
            root.backward(passed_gradient)
            assert torch.equal(passed_gradient, before), "the caller's gradient was overwritten"
        elif holder == "hook":
            stored: list[torch.Tensor] = []
            h.register_hook(lambda grad, stored=stored: stored.append(grad))
            loss = net[2](h).square().sum()
            del h
            loss.backward()
            grads_seen[name] = stored[0]
        else:
            kept_output = h.detach().clone()
            net[2](h).square().sum().backward()
            assert torch.equal(h.detach(), kept_output), "the kept output was overwritten"
    if holder == "hook":
        assert rel_err(grads_seen["saving"], grads_seen["twin"]) <= 1e-6
    for p, q in zip(model[:2].parameters(), twin[:2].parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5
