"""Exact peak memory of one training step, on CUDA, on CPU, or with no memory at all.

The papers' central numbers are peak training memory, read on a GPU with
``torch.cuda.max_memory_allocated()``. This module measures the same quantity
three ways:

``cuda``
    the papers' method (allocator peak after a reset), plus the break-down below;
``cpu``
    real tensors on the CPU; every tensor storage is tracked from creation to
    release and the peak of the live bytes is reported;
``fake``
    the same tracking on fake tensors (:mod:`torch._subclasses.fake_tensor`):
    shapes and dtypes propagate, nothing is allocated or computed, so a paper-size
    3-D U-Net at 160x192x160 is measured in seconds on a laptop.

``cpu`` and ``fake`` agree to the byte. The peak is broken down into
parameters, buffers, gradients, optimizer state, inputs and activations (every
other live tensor: saved activations and temporaries). Tracking happens at the
tensor level: workspace a kernel allocates internally (cuDNN) is only seen by
the ``cuda`` allocator figure, which is why that figure is reported beside the
tracked one. The few host-side copies of random-generator states that a
memory-saving sequence records (5 KiB per coupling function) are made outside
the dispatcher and are not counted; they never occupy accelerator memory.
Tensors a model keeps as plain attributes are converted for ``fake`` mode but,
like the generator states, not counted; register them as buffers to count them.

A step is measured as in training: a warm-up step first creates the optimizer
state (Adam's moments), the gradients are released, then the measured step
runs forward, loss, backward and ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from revunet.memory.attribution import ModuleAttribution
from revunet.memory.autocast_policy import POLICIES, CudaAutocastPolicy
from revunet.memory.tracker import LiveTensorTracker

MODES = ("cuda", "cpu", "fake")
CATEGORIES = ("parameters", "buffers", "gradients", "optimizer_state", "inputs", "activations")
PHASES = ("setup", "forward", "backward", "optimizer", "extra")
# The owner of an allocation outside the network's modules and autograd nodes, per phase.
SCOPES = {"setup": "inputs", "forward": "loss", "backward": "autograd", "optimizer": "optimizer", "extra": "validation"}
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Peak memory of one training step and what occupied it.

    All sizes in bytes; ``*_mib`` properties divide by 2**20, the unit the papers
    call "MB" (they read ``torch.cuda.max_memory_allocated()`` and divided by 1024²).
    """

    mode: str
    input_shape: tuple[int, ...]
    peak_bytes: int
    breakdown: dict[str, int]
    peak_phase: str
    cuda_rounded_peak_bytes: int
    allocator_peak_bytes: int | None = None
    device: str = "cpu"
    phase_peaks: dict[str, int] = dataclasses.field(default_factory=dict)
    # phase -> owner -> bytes live at that phase's peak: a category for parameters, buffers,
    # gradients, optimizer state and inputs; for activations the module path that created them
    # (see revunet.memory.attribution). Each phase's bytes sum to its entry of phase_peaks.
    modules: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    @property
    def peak_modules(self) -> dict[str, int]:
        """Owner -> bytes at the peak (the peak phase's entry of ``modules``)."""
        return self.modules.get(self.peak_phase, {})

    def peak_without(self, *phases: str) -> int:
        """The peak over every phase but ``phases`` (e.g. the training step without ``"extra"``)."""
        return max((v for k, v in self.phase_peaks.items() if k not in phases), default=0)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    def as_dict(self) -> dict[str, Any]:
        """A flat dictionary (for CSV/JSON), sizes in bytes and MiB."""
        row: dict[str, Any] = {
            "mode": self.mode,
            "device": self.device,
            "input_shape": "x".join(str(s) for s in self.input_shape),
            "peak_bytes": self.peak_bytes,
            "peak_mib": round(self.peak_mib, 3),
            "cuda_rounded_peak_mib": round(self.cuda_rounded_peak_bytes / MIB, 3),
            "allocator_peak_mib": None
            if self.allocator_peak_bytes is None
            else round(self.allocator_peak_bytes / MIB, 3),
            "peak_phase": self.peak_phase,
        }
        for category in CATEGORIES:
            row[f"{category}_bytes"] = self.breakdown.get(category, 0)
            row[f"{category}_mib"] = round(self.breakdown.get(category, 0) / MIB, 3)
        return row

    def summary(self) -> str:
        parts = ", ".join(f"{c} {self.breakdown.get(c, 0) / MIB:.1f}" for c in CATEGORIES)
        text = f"peak {self.peak_mib:.1f} MiB during {self.peak_phase} ({parts})"
        if self.allocator_peak_bytes is not None:
            text += f"; CUDA allocator peak {self.allocator_peak_bytes / MIB:.1f} MiB"
        return text


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def adam(lr: float = 1e-4, weight_decay: float = 1e-5) -> OptimizerFactory:
    """Adam as Brügger et al. configure it (the default optimizer of a measurement)."""
    return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def sum_of_outputs(output: Any) -> torch.Tensor:
    """The cheapest scalar that reaches every floating output (the default loss)."""
    leaves = [t for t in _tensors_in(output) if t.is_floating_point()]
    if not leaves:
        raise TypeError(f"the model returned no floating-point tensor (got {type(output).__name__})")
    return sum(t.float().sum() for t in leaves)  # type: ignore[return-value]


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    leaves, _ = tree_flatten(value)
    found: list[torch.Tensor] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            found.append(leaf)
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            found.extend(_tensors_in(leaf))
    return found


def measure_training_step(
    model: nn.Module,
    input_shape: Iterable[int],
    mode: str = "fake",
    optimizer: OptimizerFactory | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    target_shape: Iterable[int] | None = None,
    input_dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    extra: Callable[[nn.Module, LiveTensorTracker], None] | None = None,
    target_dtype: torch.dtype | None = None,
    gradients_persist: bool = False,
    loss_needs_input: bool = False,
    autocast_policy: str = "cpu",
) -> MemoryReport:
    """Peak memory of one steady-state training step of ``model`` on an input of ``input_shape``.

    Args:
        model: left untouched; a copy is measured (on ``device="meta"`` the copy is free).
        input_shape: full input shape including batch and channels, e.g. ``(1, 4, 160, 192, 160)``.
        mode: ``"fake"`` (no memory, any size), ``"cpu"`` (real tensors) or ``"cuda"``.
        optimizer: factory building the optimizer from the parameters (default Adam).
        loss_fn: ``loss_fn(output)`` or, with ``target_shape``, ``loss_fn(output, target)``;
            default sums every floating output.
        target_shape: shape of a target tensor (zeros and ones, counted as an input).
        input_dtype: dtype of the input tensor.
        autocast_dtype: run forward and loss under autocast with this dtype.
        extra: called after the optimizer step inside the measurement, as
            ``extra(model_copy, tracker)``, e.g. to add a validation pass to the peak.
        target_dtype: dtype of the target (default ``input_dtype``); an integer dtype: class indices.
        gradients_persist: keep zero-filled gradients between steps (PyTorch < 2.0's default, which
            the papers' code used), so they exist during the forward; else they are freed.
        loss_needs_input: also pass the input to the loss, last (a VAE's reconstruction term).
        autocast_policy: ``"cuda"``: CUDA's autocast lists on a CPU (:mod:`~revunet.memory.autocast_policy`).
    """
    shape = _checked_shape(input_shape, mode)
    device = torch.device("cuda", torch.cuda.current_device()) if mode == "cuda" else torch.device("cpu")
    targets = None if target_shape is None else tuple(target_shape)
    loss = loss_fn or sum_of_outputs
    policy = _cuda_policy(autocast_policy, device)
    step = _TrainingStep(shape, device, loss, input_dtype, targets, target_dtype or input_dtype, autocast_dtype)
    step = dataclasses.replace(step, loss_needs_input=loss_needs_input, cuda_policy=policy)
    with torch.random.fork_rng(devices=[]), _tensor_world(mode) as fake_mode:
        net = _private_copy(model, device, fake_mode).train()
        opt = (optimizer or adam())([p for p in net.parameters() if p.requires_grad])
        step.run(net, opt, None, [])  # warm-up: creates the optimizer state of a steady-state step
        opt.zero_grad(set_to_none=not gradients_persist)
        tracker, labels, allocator_peak = _tracked_step(step, net, opt, extra)
    return MemoryReport(
        mode=mode,
        input_shape=shape,
        peak_bytes=tracker.peak,
        breakdown=_breakdown(tracker, labels),
        peak_phase=tracker.peak_phase,
        cuda_rounded_peak_bytes=tracker.peak_rounded,
        allocator_peak_bytes=allocator_peak,
        device=str(device),
        phase_peaks=dict(tracker.phase_peaks),
        modules={phase: _owners(tracker, labels, phase) for phase in tracker.phase_peaks},
    )


def _cuda_policy(autocast_policy: str, device: torch.device) -> bool:
    """Whether CUDA's autocast lists are emulated: asked for, on a CPU."""
    if autocast_policy not in POLICIES:
        raise ValueError(f"autocast_policy must be one of {POLICIES}, got {autocast_policy!r}")
    return autocast_policy == "cuda" and device.type == "cpu"


def _breakdown(tracker: LiveTensorTracker, labels: dict[int, str]) -> dict[str, int]:
    """Bytes per category at the peak; every storage without a label is an activation."""
    breakdown = dict.fromkeys(CATEGORIES, 0)
    for sid, nbytes in tracker.live_at_peak().items():
        breakdown[labels.get(sid, "activations")] += nbytes
    return breakdown


def _owners(tracker: LiveTensorTracker, labels: dict[int, str], phase: str) -> dict[str, int]:
    """Bytes per owner at the peak of ``phase``: the category if labelled, else the creating module."""
    owners: dict[str, int] = {}
    for sid, nbytes in tracker.live_at_peak(phase).items():
        owner = labels.get(sid) or tracker.owner(sid) or "activations"
        owners[owner] = owners.get(owner, 0) + nbytes
    return dict(sorted(owners.items(), key=lambda item: (-item[1], item[0])))


def _checked_shape(input_shape: Iterable[int], mode: str) -> tuple[int, ...]:
    """The input shape as positive integers, after checking that ``mode`` can run here."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    requested = tuple(input_shape)
    try:
        shape = tuple(operator.index(s) for s in requested)
    except TypeError:
        raise ValueError(f"input_shape must be positive integers, got {requested}") from None
    if any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be positive integers, got {shape}")
    if mode == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("mode='cuda' needs a CUDA device; use mode='fake' to measure without one")
    return shape


@dataclasses.dataclass(frozen=True)
class _TrainingStep:
    """One training step as measured: a fresh batch, forward and loss, backward, optimizer step."""

    shape: tuple[int, ...]
    device: torch.device
    loss_fn: Callable[..., torch.Tensor]
    input_dtype: torch.dtype
    target_shape: tuple[int, ...] | None
    target_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    loss_needs_input: bool = False
    cuda_policy: bool = False  # CUDA's autocast dtypes on the CPU, the reversible recomputation included

    def run(
        self, net: nn.Module, opt: torch.optim.Optimizer, tracker: LiveTensorTracker | None, inputs: list[torch.Tensor]
    ) -> None:
        """Run the step; with a tracker, mark its phases and keep the batch in ``inputs`` (as a loader holds it)."""

        def enter(phase: str) -> None:
            if tracker is not None:
                tracker.phase = phase

        enter("setup")
        x = torch.randn(self.shape, dtype=self.input_dtype, device=self.device)
        batch = [x]
        if self.target_shape is not None:
            batch.append((torch.rand(self.target_shape, device=self.device) > 0.5).to(self.target_dtype))
        if tracker is not None:
            inputs[:] = batch
        enter("forward")
        with CudaAutocastPolicy() if self.cuda_policy else contextlib.nullcontext():
            with _autocast(self.device.type, self.autocast_dtype):
                output = net(x)
                if self.loss_needs_input:
                    loss = self.loss_fn(output, *batch[1:], *batch[:1])
                else:
                    loss = self.loss_fn(output, *batch[1:])
            del output
            enter("backward")
            loss.backward()
        del loss, x, batch
        enter("optimizer")
        opt.step()


def _tracked_step(
    step: _TrainingStep,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    extra: Callable[[nn.Module, LiveTensorTracker], None] | None,
) -> tuple[LiveTensorTracker, dict[int, str], int | None]:
    """The measured step (and ``extra``) under a tracker that starts with every tensor already live.

    Returns the tracker, the category of every storage that is not an activation, and on CUDA
    the allocator's peak.
    """
    attribution = ModuleAttribution()
    tracker = LiveTensorTracker(lambda: attribution.current(SCOPES.get(tracker.phase, tracker.phase)))
    if step.device.type == "cuda":
        torch.cuda.synchronize(step.device)
        torch.cuda.reset_peak_memory_stats(step.device)
    for tensor in existing_tensors(net, opt):
        tracker.add(tensor)
    inputs: list[torch.Tensor] = []
    with attribution.hooked(net), tracker:
        step.run(net, opt, tracker, inputs)
        if extra is not None:
            tracker.phase = "extra"
            extra(net, tracker)
        labels = _labels(tracker, net, opt, inputs)  # while gradients and inputs still exist
        inputs.clear()
    allocator_peak = None
    if step.device.type == "cuda":
        torch.cuda.synchronize(step.device)
        allocator_peak = torch.cuda.max_memory_allocated(step.device)
    return tracker, labels, allocator_peak


@contextlib.contextmanager
def _tensor_world(mode: str) -> Iterator[Any]:
    """Inside: a FakeTensorMode for ``fake`` (yielded), nothing special otherwise."""
    if mode != "fake":
        yield None
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake_mode:
        yield fake_mode


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _private_copy(model: nn.Module, device: torch.device, fake_mode: Any) -> nn.Module:
    """A copy of ``model`` on ``device`` (fake tensors in fake mode); the original is untouched.

    Shared parameters stay shared. In fake mode the copy is made from a meta-device
    skeleton, so no parameter memory is allocated however large the model.
    """
    if fake_mode is None:
        with _outside_fake_mode():
            return copy.deepcopy(model).to(device)
    with _outside_fake_mode():
        skeleton = copy.deepcopy(model) if _on_meta(model) else _meta_copy(model)
    replaced: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in replaced:
            replaced[id(t)] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
        return replaced[id(t)]

    for module in skeleton.modules():
        for name, param in module._parameters.items():
            if param is not None:
                key = id(param)
                if key not in replaced:
                    replaced[key] = nn.Parameter(fake_like(param), requires_grad=param.requires_grad)
                module._parameters[name] = replaced[key]  # type: ignore[assignment]
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = fake_like(buffer)
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                setattr(module, name, fake_like(value))  # a plain tensor attribute (not a buffer)
    return skeleton


def _on_meta(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _meta_copy(model: nn.Module) -> nn.Module:
    """Deep-copy the module structure with every parameter and buffer on the meta device."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
        )
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def _outside_fake_mode() -> Iterator[None]:
    """Temporarily leave any active dispatch mode (to copy real modules)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield


def existing_tensors(net: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [*net.parameters(), *net.buffers()]
    tensors += [p.grad for p in net.parameters() if p.grad is not None]
    tensors += [t for state in opt.state.values() for t in _tensors_in(state)]
    return tensors


def _labels(
    tracker: LiveTensorTracker, net: nn.Module, opt: torch.optim.Optimizer, inputs: list[torch.Tensor]
) -> dict[int, str]:
    """Storage id -> category for everything that is not an activation."""
    groups: dict[str, list[torch.Tensor]] = {
        "inputs": inputs,
        "optimizer_state": [t for state in opt.state.values() for t in _tensors_in(state)],
        "gradients": [p.grad for p in net.parameters() if p.grad is not None],
        "buffers": list(net.buffers()),
        "parameters": list(net.parameters()),
    }
    labels: dict[int, str] = {}
    for category, tensors in groups.items():
        for tensor in tensors:
            sid = tracker.storage_id(tensor)
            if sid is not None:
                labels[sid] = category
    return labels
