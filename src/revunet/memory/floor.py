"""The memory floor of a training step: what no exact implementation of the network can do without.

A measured peak says what our implementation holds; the floor says how much of that is
necessary, so that ``measured / floor`` tells how much is left to win. It is computed from the
step itself (fake tensors, any size):

``persistent``
    parameters, the optimizer's state (after a warm-up step, as measured), buffers, the batch
    with its labels, and the gradients where they persist between steps;
``kept``
    what the network's non-invertible operations save from forward to backward: every tensor
    autograd packs during forward and loss (``torch.autograd.graph.saved_tensors_hooks``),
    each storage once, parameters and batch left out. A memory-saving sequence saves nothing
    (its blocks run without a graph); its output counts where the operation after it saves it.
    Checkpointed stages count only what the checkpoint keeps;
``largest_op``
    what backward's worst moment holds beyond ``kept``. Backward passes the forward's
    operations in reverse; when it reaches one, what earlier operations saved is still alive,
    plus what the operation itself needs (in forward its inputs and new outputs, in backward its
    output's gradient and its inputs'). At a call of a coupling's F or G, the coupling's map and
    its gradient are alive too, plus the same walk through F's own recomputed graph; at a
    checkpointed VAE stage, its input and its output's gradient, plus its recomputation.

A protocol with a validation pass adds a second floor: the largest set of maps that must be
alive at once in that pass (each tensor from the operation that makes it to the last one that
reads it; what nothing reads but was made from nothing, such as labels held on the device, to
the end), plus the persistent state. The floor is the larger of the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from revunet.memory import accounting
from revunet.memory.accounting import MIB
from revunet.models.vae import VAEBranch
from revunet.reversible import AdditiveCoupling

Key = int  # id() of an untyped storage, kept alive by the trace that holds it


@dataclasses.dataclass(frozen=True)
class Floor:
    """The floor's parts in bytes (see the module docstring); ``validation`` is 0 without that pass.

    ``largest_op_name`` names the operation of backward's worst moment ("convolution in
    NormActConv3d": inside a coupling function's recomputation).
    """

    persistent: int
    kept: int
    largest_op: int
    largest_op_name: str
    validation: int = 0

    @property
    def training(self) -> int:
        return self.persistent + self.kept + self.largest_op

    @property
    def total(self) -> int:
        return max(self.training, self.validation)

    @property
    def mib(self) -> float:
        return self.total / MIB


class _Trace(TorchDispatchMode):
    """Every operation's tensors in order: their storages (held, so ids stay unique) and their own sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[Key, torch.UntypedStorage] = {}
        self.ops: list[tuple[str, list[tuple[Key, int]], list[tuple[Key, int]]]] = []

    def key(self, tensor: torch.Tensor) -> Key:
        storage = tensor.untyped_storage()
        self.storages.setdefault(id(storage), storage)
        return id(storage)

    def nbytes(self, key: Key) -> int:
        return self.storages[key].nbytes()

    def _tensors(self, tree: Any) -> list[tuple[Key, int]]:
        leaves = [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]
        return [(self.key(t), t.numel() * t.element_size()) for t in leaves]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket.__name__)
        inputs = [] if name in SHAPE_ONLY else self._tensors((args, kwargs))
        self.ops.append((name, inputs, self._tensors(out)))
        return out


# Operations that read only their argument's shape and dtype, never its values.
SHAPE_ONLY = frozenset({"empty_like", "zeros_like", "ones_like", "new_empty", "new_empty_strided", "new_zeros"})


def step_floor(
    model: nn.Module,
    input_shape: Iterable[int],
    loss_fn: Callable[..., torch.Tensor],
    target_shape: Iterable[int] | None = None,
    target_dtype: torch.dtype | None = None,
    autocast_dtype: torch.dtype | None = None,
    loss_needs_input: bool = False,
    validation: Callable[[nn.Module, Any], None] | None = None,
    gradients_persist: bool = False,
) -> Floor:
    """The floor of one training step of ``model`` (arguments as :func:`~revunet.memory.accounting.measure_training_step`).

    Gradients count only with ``gradients_persist`` (zeroed, not freed, between steps): otherwise
    they appear during backward, one layer at a time, and none need exist at the peak.
    """
    shape = accounting._checked_shape(input_shape, "fake")
    targets = None if target_shape is None else tuple(target_shape)
    step = accounting._TrainingStep(
        shape,
        torch.device("cpu"),
        loss_fn,
        torch.float32,
        targets,
        target_dtype or torch.float32,
        autocast_dtype,
        loss_needs_input,
    )
    with torch.random.fork_rng(devices=[]), accounting._tensor_world("fake") as fake_mode:
        net = accounting._private_copy(model, torch.device("cpu"), fake_mode).train()
        trainable = [p for p in net.parameters() if p.requires_grad]
        opt = accounting.adam()(trainable)
        for parameter in trainable:  # one step on zero gradients creates the optimizer's state
            parameter.grad = torch.zeros_like(parameter)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = accounting.existing_tensors(net, opt)
        grads = sum(p.numel() * p.element_size() for p in trainable) if gradients_persist else 0
        persistent = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in state}
        kept, largest, name, batch = _forward_kept(step, net, persistent)
        base = sum(persistent.values()) + grads
        floor_validation = 0
        if validation is not None:
            floor_validation = base + _validation_live_peak(net, validation)
    return Floor(base + batch, kept, largest, name, floor_validation)


def _forward_kept(
    step: accounting._TrainingStep, net: nn.Module, persistent: dict[Key, int]
) -> tuple[int, int, str, int]:
    """The kept bytes, the most that must be alive on top of the persistent state while backward
    passes one operation or rebuilds one coupling (with its name), and the batch's bytes."""
    x = torch.randn(step.shape, dtype=step.input_dtype)
    batch = [x]
    if step.target_shape is not None:
        batch.append(torch.zeros(step.target_shape, dtype=step.target_dtype))
    recorder = _Recorder()
    excluded = {*persistent, *(recorder.trace.key(t) for t in batch)}
    with _recomputed_calls(net, recorder) as calls, recorder:
        with accounting._autocast("cpu", step.autocast_dtype):
            output = net(x)
            args = (*batch[1:], *batch[:1]) if step.loss_needs_input else tuple(batch[1:])
            step.loss_fn(output, *args)
    kept_at, peak, name = recorder.backward_peak(excluded)
    recomputed: dict[tuple[str, tuple[int, ...], torch.dtype], tuple[int, str]] = {}
    for index, function, given_input, around in calls:
        key = (repr(function), tuple(given_input.shape), given_input.dtype)  # equal functions, equal peaks
        if key not in recomputed:
            recomputed[key] = _recomputation_peak(function, given_input, step.autocast_dtype, excluded)
        inner, inner_name = recomputed[key]
        alive = kept_at[index] + around + inner
        if alive > peak:
            peak, name = alive, f"{inner_name} in {type(function).__name__}"
    kept = kept_at[-1]
    return kept, peak - kept if peak > kept else 0, name, sum(t.untyped_storage().nbytes() for t in batch)


class _Recorder:
    """A trace of a forward with the first operation that saved each storage for backward."""

    def __init__(self) -> None:
        self.trace = _Trace()
        self.packed_first: dict[Key, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.packed_first.setdefault(self.trace.key(tensor), len(self.trace.ops))
        return tensor

    def __enter__(self) -> _Recorder:
        self._hooks.__enter__()
        self.trace.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.trace.__exit__(*exc)
        self._hooks.__exit__(*exc)

    def backward_peak(self, excluded: set[Key], given: frozenset[Key] = frozenset()) -> tuple[list[int], int, str]:
        """Bytes kept by operations up to each index (cumulative), and the most alive while
        backward passes one operation: what earlier operations saved, plus its own tensors."""
        ops = self.trace.ops
        first = {k: i for k, i in self.packed_first.items() if k not in excluded}
        kept_at = [0] * (len(ops) + 1)
        for key, index in first.items():
            kept_at[min(index, len(ops))] += self.trace.nbytes(key)
        for index in range(1, len(kept_at)):
            kept_at[index] += kept_at[index - 1]
        peak, name = 0, ""
        held, saved_in_order = set(excluded), sorted(first.items(), key=lambda item: item[1])
        for index, (op, inputs, outputs) in enumerate(ops):
            while saved_in_order and saved_in_order[0][1] <= index:
                held.add(saved_in_order.pop(0)[0])
            alive = kept_at[index] + _operation_bytes(inputs, outputs, held, given)
            if alive > peak:
                peak, name = alive, op
        return kept_at, peak, name


@contextlib.contextmanager
def _recomputed_calls(net: nn.Module, recorder: _Recorder) -> Iterator[list[tuple[int, nn.Module, torch.Tensor, int]]]:
    """Every call of a function that backward recomputes, as (operation index, function, input,
    bytes alive around it): a coupling's F or G (the coupling's map and its gradient), and a
    checkpointed VAE stage (its input, which the checkpoint keeps, and its output's gradient)."""
    calls: list[tuple[int, nn.Module, torch.Tensor, int]] = []
    couplings = [m for m in net.modules() if isinstance(m, AdditiveCoupling)]
    functions = {id(f) for m in couplings for f in (m.f, m.g)}
    stages = [s for m in net.modules() if isinstance(m, VAEBranch) and m.memory_saving for s in (m.expand, *m.up)]
    started: list[int] = []

    def start(module: nn.Module, args: tuple[Any, ...]) -> None:
        started.append(len(recorder.trace.ops))

    def finish(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        x = args[0]
        around = 4 * _nbytes(x) if id(module) in functions else _nbytes(x) + _nbytes(output)
        calls.append((started.pop(), module, x, around))

    modules = [*(f for m in couplings for f in (m.f, m.g)), *stages]
    handles = [h for m in modules for h in (m.register_forward_pre_hook(start), m.register_forward_hook(finish))]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _recomputation_peak(
    function: nn.Module, half: torch.Tensor, autocast_dtype: torch.dtype | None, excluded: set[Key]
) -> tuple[int, str]:
    """The most alive while backward passes one operation of ``function`` recomputed on ``half``."""
    recorder = _Recorder()
    with torch.enable_grad(), recorder, accounting._autocast("cpu", autocast_dtype):
        leaf = torch.empty_like(half).requires_grad_(True)
        out = function(leaf)
    params = {recorder.trace.key(p) for p in function.parameters()}
    given = frozenset({recorder.trace.key(out)})  # its gradient is the coupling's, counted by the caller
    _, peak, name = recorder.backward_peak(excluded | params | {recorder.trace.key(leaf)}, given)
    return peak, name


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _operation_bytes(
    inputs: list[tuple[Key, int]], outputs: list[tuple[Key, int]], held: set[Key], given: frozenset[Key] = frozenset()
) -> int:
    """What one operation needs on top of what is held: in forward its inputs and new outputs, in
    backward its output's gradient and its inputs' (one gradient if it works in place); the
    gradient of an output in ``given`` is counted elsewhere. A view of an input is no new memory."""
    fresh: dict[Key, int] = {}
    for key, nbytes in inputs:
        if key not in held:
            fresh[key] = max(nbytes, fresh.get(key, 0))
    input_keys = {key for key, _ in inputs}
    made = sum(nbytes for key, nbytes in outputs if key not in input_keys)
    grad_out = sum(nbytes for key, nbytes in outputs if key not in given)
    in_place = any(key in input_keys for key, _ in outputs)
    grad_in = 0 if in_place else max((n for _, n in inputs), default=0)
    return max(sum(fresh.values()) + made, grad_out + grad_in)


def _validation_live_peak(net: nn.Module, validation: Callable[[nn.Module, Any], None]) -> int:
    """The most bytes alive at once in the validation pass if each tensor lived from its
    making to its last reader (to the end if nothing reads it)."""
    trace = _Trace()
    before = {trace.key(tensor) for tensor in [*net.parameters(), *net.buffers()]}
    with trace:
        validation(net, None)
    first: dict[Key, int] = {}
    last: dict[Key, int] = {}
    factory: set[Key] = set()  # made from nothing (the image, labels held on the device)
    for index, (_, inputs, outputs) in enumerate(trace.ops):
        for key, _ in outputs:
            if key not in first and not inputs:
                factory.add(key)
            first.setdefault(key, index)
        for key, _ in inputs:
            last[key] = index
    end = len(trace.ops)
    change = [0] * (end + 2)
    for key, start in first.items():
        if key in before:
            continue
        stop = max(last.get(key, start), end if key in factory else start)
        change[start] += trace.nbytes(key)
        change[stop + 1] -= trace.nbytes(key)
    live, peak = 0, 0
    for delta in change:
        live += delta
        peak = max(peak, live)
    return peak
