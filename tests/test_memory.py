"""Tests of :mod:`revunet.memory.accounting`: the exact peak-memory accounting of a training step.

The quantities asserted here are the ones the replication reports: peak bytes of
one steady-state training step and its break-down. ``cpu`` mode tracks real
tensor storages, ``fake`` mode the same storages on fake tensors; they must
agree to the byte, the break-down must match what can be computed by hand, and
the memory-saving reversible sequence must not grow its peak with depth beyond
the parameters, gradients and optimizer state it adds.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import time

import psutil
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from revunet.memory.accounting import CATEGORIES, PHASES, MemoryReport, measure_training_step
from revunet.memory.tracker import LiveTensorTracker
from revunet.models.blocks import residual_coupling_sequence

FLOAT32 = 4  # bytes
ADAM_STEP_BYTES = 4  # torch 2.13 Adam keeps ``step`` as a float32 scalar tensor per parameter


# --------------------------------------------------------------------------- helpers


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def n_param_tensors(model: nn.Module) -> int:
    return sum(1 for p in model.parameters() if p.requires_grad)


def adam_state_bytes(model: nn.Module) -> int:
    """exp_avg + exp_avg_sq (each the size of the parameter) + one float32 ``step`` per parameter."""
    return 2 * param_bytes(model) + ADAM_STEP_BYTES * n_param_tensors(model)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def assert_consistent(report: MemoryReport) -> None:
    assert set(report.breakdown) == set(CATEGORIES)
    assert all(v >= 0 for v in report.breakdown.values()), report.breakdown
    assert sum(report.breakdown.values()) == report.peak_bytes, report
    assert report.peak_phase in (*PHASES, "extra")
    assert report.cuda_rounded_peak_bytes >= report.peak_bytes


def assert_same_report(cpu: MemoryReport, fake: MemoryReport) -> None:
    assert cpu.mode == "cpu" and fake.mode == "fake"
    assert fake.peak_bytes == cpu.peak_bytes
    assert fake.breakdown == cpu.breakdown
    assert fake.peak_phase == cpu.peak_phase
    assert fake.cuda_rounded_peak_bytes == cpu.cuda_rounded_peak_bytes
    assert fake.input_shape == cpu.input_shape


# --------------------------------------------------------------------------- models


def conv_stack() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.LeakyReLU(0.01),
        nn.Conv3d(8, 2, 3, padding=1),
    )


@dataclasses.dataclass
class SegOutput:
    logits: torch.Tensor
    pooled: torch.Tensor


class DataclassOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(2, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> SegOutput:
        h = self.a(x)
        return SegOutput(self.b(h), h.mean(dim=(2, 3, 4)))


class TupleOutput(DataclassOutput):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[override]
        h = self.a(x)
        return self.b(h), [torch.relu(h)]


def bce_on_logits(output: SegOutput, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output.logits, target)


def tied_weights() -> nn.Module:
    conv = nn.Conv3d(4, 4, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), conv)


def validation_pass(net: nn.Module, tracker: LiveTensorTracker) -> None:
    with torch.no_grad():
        net(torch.randn(3, 16, 6, 6, 6))


AGREEMENT_CASES = {
    "conv-gn-lrelu": (conv_stack, (1, 2, 8, 8, 8), {}),
    "reversible-d1": (lambda: residual_coupling_sequence(16, 1, 4, memory_saving=True), (1, 16, 6, 6, 6), {}),
    "reversible-d3": (lambda: residual_coupling_sequence(16, 3, 4, memory_saving=True), (2, 16, 6, 6, 6), {}),
    "twin-d1": (lambda: residual_coupling_sequence(16, 1, 4, memory_saving=False), (1, 16, 6, 6, 6), {}),
    "twin-d3": (lambda: residual_coupling_sequence(16, 3, 4, memory_saving=False), (2, 16, 6, 6, 6), {}),
    "reversible-dropout": (
        lambda: residual_coupling_sequence(8, 2, 2, memory_saving=True, dropout=0.2),
        (1, 8, 6, 6, 6),
        {},
    ),
    "dataclass-output": (DataclassOutput, (2, 2, 6, 6, 6), {}),
    "tuple-output": (TupleOutput, (2, 2, 6, 6, 6), {}),
    "target-and-loss": (
        DataclassOutput,
        (2, 2, 6, 6, 6),
        {"target_shape": (2, 2, 6, 6, 6), "loss_fn": bce_on_logits},
    ),
    "batchnorm": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.ReLU()), (2, 2, 6, 6, 6), {}),
    "tied-weights": (tied_weights, (1, 4, 6, 6, 6), {}),
    "sgd-momentum": (
        conv_stack,
        (1, 2, 6, 6, 6),
        {"optimizer": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)},
    ),
    "extra-pass": (
        lambda: residual_coupling_sequence(16, 2, 4, memory_saving=True),
        (1, 16, 6, 6, 6),
        {"extra": validation_pass},
    ),
}


# --------------------------------------------------------------------------- cpu == fake


@pytest.mark.parametrize("case", list(AGREEMENT_CASES))
def test_cpu_and_fake_modes_agree_to_the_byte(case: str) -> None:
    build, shape, kwargs = AGREEMENT_CASES[case]
    torch.manual_seed(0)
    model = build()
    cpu = measure_training_step(model, shape, mode="cpu", **kwargs)
    fake = measure_training_step(model, shape, mode="fake", **kwargs)
    assert_consistent(cpu)
    assert_consistent(fake)
    assert_same_report(cpu, fake)
    assert cpu.breakdown["parameters"] == sum(p.numel() * 4 for p in model.parameters())
    assert cpu.breakdown["activations"] > 0
    if case == "extra-pass":
        assert cpu.peak_phase == "extra"  # the no-grad pass on a batch of 3 tops the training step


def test_target_is_counted_as_input() -> None:
    torch.manual_seed(0)
    shape = (2, 2, 6, 6, 6)
    plain = measure_training_step(DataclassOutput(), shape, mode="cpu")
    with_target = measure_training_step(
        DataclassOutput(),
        shape,
        mode="cpu",
        target_shape=(2, 1, 6, 6, 6),
        loss_fn=lambda out, target: F.binary_cross_entropy_with_logits(out.logits[:, :1], target),
    )
    assert plain.breakdown["inputs"] == numel(shape) * FLOAT32
    assert with_target.breakdown["inputs"] == (numel(shape) + numel((2, 1, 6, 6, 6))) * FLOAT32


@pytest.mark.parametrize("memory_saving", [True, False])
def test_bfloat16_autocast_cpu_and_fake_agree(memory_saving: bool) -> None:
    torch.manual_seed(0)
    model = residual_coupling_sequence(16, 2, 4, memory_saving=memory_saving)
    shape = (1, 16, 8, 8, 8)
    cpu = measure_training_step(model, shape, mode="cpu", autocast_dtype=torch.bfloat16)
    fake = measure_training_step(model, shape, mode="fake", autocast_dtype=torch.bfloat16)
    assert_consistent(cpu)
    assert_same_report(cpu, fake)
    # autocast really took effect: the report differs from the float32 one
    fp32 = measure_training_step(model, shape, mode="fake")
    assert fp32.breakdown != cpu.breakdown
    # parameters, gradients and the optimizer state stay float32 under autocast
    assert cpu.breakdown["parameters"] == fp32.breakdown["parameters"]
    assert cpu.breakdown["optimizer_state"] == fp32.breakdown["optimizer_state"]


def test_bfloat16_autocast_shrinks_saved_activations_of_plain_network() -> None:
    """Convolutions save half-precision inputs under autocast.

    (A GroupNorm after a bfloat16 convolution runs in float32 and saves a float32 copy of
    its input, so a norm-activation-conv stack with in-place activations does *not* shrink;
    that is autocast's behaviour, not the tracker's, and the plain conv stack isolates it.)
    """
    torch.manual_seed(0)
    model = nn.Sequential(*(layer for _ in range(3) for layer in (nn.Conv3d(16, 16, 3, padding=1), nn.LeakyReLU())))
    shape = (1, 16, 16, 16, 16)
    bf16 = measure_training_step(model, shape, mode="fake", autocast_dtype=torch.bfloat16)
    fp32 = measure_training_step(model, shape, mode="fake")
    assert bf16.breakdown["activations"] < fp32.breakdown["activations"]
    assert bf16.breakdown["inputs"] == fp32.breakdown["inputs"] == numel(shape) * FLOAT32


# --------------------------------------------------------------------------- break-down by hand


def test_breakdown_of_small_conv_model_by_hand() -> None:
    torch.manual_seed(0)
    model = conv_stack()
    shape = (1, 2, 8, 8, 8)
    report = measure_training_step(model, shape, mode="cpu")
    assert_consistent(report)
    params = sum(p.numel() * 4 for p in model.parameters())
    assert params == 4 * (8 * 2 * 27 + 8 + 8 + 8 + 2 * 8 * 27 + 2)
    assert report.breakdown["parameters"] == params
    assert report.breakdown["optimizer_state"] == 2 * params + 4 * len(list(model.parameters()))
    assert report.breakdown["inputs"] == numel(shape) * 4
    assert report.breakdown["buffers"] == 0
    # activations dominate this model: the peak falls in backward, when only the gradients
    # computed so far exist (the warm-up's gradients were released before the step)
    assert report.peak_phase == "backward"
    assert 0 < report.breakdown["gradients"] < params
    # at least the output of the first conv (8 channels) is alive at the peak
    assert report.breakdown["activations"] >= 8 * 8**3 * 4


def test_breakdown_when_peak_is_in_adam_step() -> None:
    """Parameters dominate: the peak falls in ``optimizer.step()`` with every gradient alive."""
    torch.manual_seed(0)
    model = nn.Conv3d(64, 64, 1)
    shape = (1, 64, 1, 1, 1)
    report = measure_training_step(model, shape, mode="cpu")
    assert_consistent(report)
    params = (64 * 64 + 64) * 4
    assert report.peak_phase == "optimizer"
    assert report.breakdown["parameters"] == params
    assert report.breakdown["gradients"] == params
    assert report.breakdown["optimizer_state"] == 2 * params + 2 * ADAM_STEP_BYTES
    assert report.breakdown["inputs"] == 64 * 4
    assert report.peak_bytes >= 4 * params + 64 * 4


def test_adam_state_is_two_moments_and_a_float32_step() -> None:
    """Pin the torch behaviour the hand computations rely on."""
    model = nn.Conv3d(2, 2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    model(torch.randn(1, 2, 1, 1, 1)).sum().backward()
    opt.step()
    for p in model.parameters():
        state = opt.state[p]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].dtype == torch.float32 and state["step"].numel() == 1
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == p.shape


def test_breakdown_with_sgd_momentum_and_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(16, 16, 1), nn.BatchNorm3d(16))
    shape = (2, 16, 1, 1, 1)
    report = measure_training_step(
        model, shape, mode="cpu", optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    )
    assert_consistent(report)
    params = (16 * 16 + 16 + 16 + 16) * 4
    assert report.breakdown["parameters"] == params
    assert report.breakdown["optimizer_state"] == params  # one momentum buffer per parameter
    assert report.breakdown["buffers"] == 2 * 16 * 4 + 8  # running mean/var + int64 num_batches_tracked
    assert report.breakdown["inputs"] == numel(shape) * 4
    assert report.peak_phase in ("backward", "optimizer")
    assert report.breakdown["gradients"] == params
    # at the end of backward params, grads, momentum, buffers and the input are all alive at once
    assert report.peak_bytes >= 3 * params + 2 * 16 * 4 + 8 + numel(shape) * 4


# --------------------------------------------------------------------------- LiveTensorTracker


def test_tracker_counts_views_once_and_releases_freed_storage() -> None:
    tracker = LiveTensorTracker()
    with tracker:
        a = torch.empty(1000)  # 4000 bytes
        gc.collect()  # the storage's Python object must survive: the count may not drop
        assert tracker.current == 4000
        sid = tracker.storage_id(a)
        assert sid is not None
        v = a.view(10, 100)
        s = a[5:10]
        u = a.unsqueeze(0).expand(3, 1000)
        assert tracker.storage_id(v) == tracker.storage_id(s) == tracker.storage_id(u) == sid
        assert tracker.current == 4000
        tracker.phase = "forward"
        b = torch.empty(500)
        assert tracker.current == 6000 and tracker.peak == 6000
        assert tracker.peak_phase == "forward"
        tracker.phase = "backward"
        del b
        gc.collect()
        assert tracker.current == 4000
        assert tracker.peak == 6000  # the peak stays
        assert tracker.peak_phase == "forward"
        assert set(tracker.live_at_peak().values()) == {4000, 2000}
        del v, s, u
        assert tracker.current == 4000  # the base is still alive
        del a
        gc.collect()
        assert tracker.current == 0
    assert tracker.peak == 6000


def test_tracker_counts_in_place_resize() -> None:
    tracker = LiveTensorTracker()
    with tracker:
        t = torch.empty(10)
        assert tracker.current == 40
        t.resize_(1000)
        assert tracker.current == 4000
        assert tracker.peak == 4000
        out = torch.empty(0)
        torch.add(torch.ones(3), 1, out=out)  # out= resizes its argument
        assert tracker.storage_id(out) is not None
        assert out.untyped_storage().nbytes() == 12
        # t (4000) + out (12); the temporary ones(3) is freed already
        gc.collect()
        assert tracker.current == 4012
        del t, out
        gc.collect()
        assert tracker.current == 0
    assert tracker.peak == 4012 + 12  # ones(3) was briefly alive together with out


def test_tracker_add_existing_tensors_once_and_rounds_to_cuda_blocks() -> None:
    before = torch.empty(300)  # 1200 bytes, created before tracking
    tracker = LiveTensorTracker()
    assert tracker.storage_id(before) is None
    sid = tracker.add(before)
    assert tracker.add(before[10:]) == sid  # a view of the same storage
    assert tracker.add(before) == sid
    assert tracker.current == 1200
    assert tracker.current_rounded == 1536  # three 512-byte blocks
    with tracker:
        small = torch.empty(1)
        assert tracker.current == 1204
        assert tracker.current_rounded == 1536 + 512
    assert tracker.peak_rounded == 2048
    del small


# --------------------------------------------------------------------------- memory-saving property


def test_memory_saving_peak_does_not_grow_with_depth_but_twin_activations_do() -> None:
    shape = (1, 16, 16, 16, 16)
    input_bytes = numel(shape) * FLOAT32
    saving: dict[int, MemoryReport] = {}
    twin: dict[int, MemoryReport] = {}
    models: dict[int, nn.Module] = {}
    for depth in (1, 2, 4, 8):
        torch.manual_seed(depth)
        models[depth] = residual_coupling_sequence(16, depth, 4, memory_saving=True)
        saving[depth] = measure_training_step(models[depth], shape, mode="cpu")
        twin_model = residual_coupling_sequence(16, depth, 4, memory_saving=False)
        twin_model.load_state_dict(models[depth].state_dict())
        twin[depth] = measure_training_step(twin_model, shape, mode="cpu")
        assert_consistent(saving[depth])
        assert_consistent(twin[depth])
        # same parameters in both: same parameter and optimizer bytes
        assert (
            saving[depth].breakdown["parameters"] == twin[depth].breakdown["parameters"] == param_bytes(models[depth])
        )
        assert saving[depth].breakdown["optimizer_state"] == adam_state_bytes(models[depth])

    base = models[1]
    for depth in (2, 4, 8):
        # What depth may add: parameters + gradients (each the parameter bytes) and Adam's
        # two moments (2x) plus one float32 step scalar per added parameter tensor. Exact, no slack.
        added_params = param_bytes(models[depth]) - param_bytes(base)
        added_tensors = n_param_tensors(models[depth]) - n_param_tensors(base)
        allowed = 4 * added_params + ADAM_STEP_BYTES * added_tensors
        growth = saving[depth].peak_bytes - saving[1].peak_bytes
        assert growth <= allowed, (depth, growth, allowed)
        # and the activations at the peak are those of one block: equal up to the few bytes
        # of GroupNorm statistics held at that instant (a block's tensors are 128 KiB)
        assert abs(saving[depth].breakdown["activations"] - saving[1].breakdown["activations"]) <= 1024
        assert saving[depth].breakdown["inputs"] == input_bytes

    # Memory saving needs only a handful of input-sized tensors, whatever the depth.
    assert saving[8].breakdown["activations"] <= 6 * input_bytes

    # The twin stores every block's activations: each extra block keeps at least one
    # input-sized tensor (F and G each keep their GroupNorm and LeakyReLU outputs, half size).
    act = {d: twin[d].breakdown["activations"] for d in twin}
    for lo, hi in ((1, 2), (2, 4), (4, 8)):
        assert act[hi] - act[lo] >= (hi - lo) * input_bytes, (lo, hi, act)
    assert act[8] >= 3 * act[2]
    assert twin[8].peak_bytes > 3 * saving[8].peak_bytes
    # The growth is linear: equal per-block increments.
    assert act[8] - act[4] == 2 * (act[4] - act[2])


def test_output_and_gradient_handed_over_are_overwritten_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two layers, a memory-saving sequence rebuilds its input in its output's storage and the
    input's gradient in the incoming gradient's, and each function's output is freed before its
    gradient is computed: the backward's peak is more than a map below that of a backward that
    must copy (a caller holding either), which also holds the rebuilt halves beside the originals."""
    from revunet.reversible import sequence

    shape = (1, 32, 16, 16, 16)
    map_bytes = numel(shape) * FLOAT32
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 32, 1), residual_coupling_sequence(32, 2, 4), nn.Conv3d(32, 2, 1))
    handed_over = measure_training_step(model, (1, 2, *shape[2:]), mode="cpu")
    monkeypatch.setattr(sequence, "engine_gradient", lambda grad, refs: False)
    copied = measure_training_step(model, (1, 2, *shape[2:]), mode="cpu")
    saved = copied.phase_peaks["backward"] - handed_over.phase_peaks["backward"]
    assert saved >= 1.25 * map_bytes, (saved, map_bytes)


# --------------------------------------------------------------------------- fake mode at paper size


def test_fake_mode_measures_large_model_without_allocating() -> None:
    torch.manual_seed(0)
    model = residual_coupling_sequence(64, 4, 8, memory_saving=True)
    # warm up fake mode (imports, dispatch caches) so that only the measurement is seen below
    # (32^3: large enough for activations, not parameters, to decide when the peak falls)
    small = measure_training_step(model, (1, 64, 32, 32, 32), mode="fake")
    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    shape = (1, 64, 128, 128, 128)
    start = time.perf_counter()
    report = measure_training_step(model, shape, mode="fake")
    elapsed = time.perf_counter() - start

    tensor_bytes = numel(shape) * FLOAT32  # 512 MiB
    maxrss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) * 1024
    rss_growth = process.memory_info().rss - rss_before

    assert elapsed < 15, elapsed
    assert_consistent(report)
    assert report.breakdown["inputs"] == tensor_bytes
    # a few input-sized tensors (the saved output, reconstructed input, gradient, temporaries)
    assert 2 * tensor_bytes <= report.breakdown["activations"] <= 8 * tensor_bytes
    # same structure as the small measurement: activations scale with the voxel count
    small_ratio = small.breakdown["activations"] / numel((1, 64, 32, 32, 32)) / FLOAT32
    assert report.breakdown["activations"] / tensor_bytes == pytest.approx(small_ratio, rel=1e-3)
    assert report.peak_bytes > 3 * tensor_bytes
    # nothing of that size was allocated
    assert maxrss_growth < tensor_bytes // 4, maxrss_growth
    assert rss_growth < tensor_bytes // 4, rss_growth


def test_meta_device_model_can_be_measured_in_fake_mode() -> None:
    with torch.device("meta"):
        meta_model = residual_coupling_sequence(16, 2, 4, memory_saving=True)
    assert all(p.is_meta for p in meta_model.parameters())
    torch.manual_seed(0)
    real_model = residual_coupling_sequence(16, 2, 4, memory_saving=True)
    shape = (1, 16, 6, 6, 6)
    from_meta = measure_training_step(meta_model, shape, mode="fake")
    from_real = measure_training_step(real_model, shape, mode="fake")
    on_cpu = measure_training_step(real_model, shape, mode="cpu")
    assert from_meta == from_real
    assert_same_report(on_cpu, from_meta)
    assert all(p.is_meta and p.grad is None for p in meta_model.parameters())


# --------------------------------------------------------------------------- model left untouched


@pytest.mark.parametrize("mode", ["cpu", "fake"])
def test_measured_model_is_left_untouched(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1),
        nn.BatchNorm3d(8),  # running statistics would change in a training step
        residual_coupling_sequence(8, 2, 2, memory_saving=True, dropout=0.1),
        nn.Conv3d(8, 1, 1),
    )
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    param_ids = [id(p) for p in model.parameters()]
    rng_before = torch.get_rng_state()

    report = measure_training_step(model, (2, 2, 6, 6, 6), mode=mode)
    assert report.peak_bytes > 0

    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and after[key].device == value.device, key
        assert torch.equal(after[key], value), key
    assert [id(p) for p in model.parameters()] == param_ids
    assert all(p.grad is None for p in model.parameters())
    assert not model.training  # the copy was put in train mode, not the model
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global generator is untouched


# --------------------------------------------------------------------------- errors


def test_unknown_mode_is_rejected_naming_the_modes() -> None:
    with pytest.raises(ValueError) as info:
        measure_training_step(conv_stack(), (1, 2, 4, 4, 4), mode="gpu")
    message = str(info.value)
    for mode in ("cuda", "cpu", "fake"):
        assert mode in message
    assert "gpu" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_mode_without_cuda_points_to_fake_mode() -> None:
    with pytest.raises(RuntimeError, match="fake"):
        measure_training_step(conv_stack(), (1, 2, 4, 4, 4), mode="cuda")


@pytest.mark.parametrize("shape", [(1, 2, 0, 4, 4), (1, -2, 4, 4, 4), (0,)])
@pytest.mark.parametrize("mode", ["cpu", "fake"])
def test_non_positive_input_shape_is_rejected(shape: tuple[int, ...], mode: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        measure_training_step(conv_stack(), shape, mode=mode)
