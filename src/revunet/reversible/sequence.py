"""A chain of invertible blocks that stores one tensor for backward, whatever its depth.

With ``memory_saving=True`` the whole chain is a single autograd node. Its
forward runs the blocks without building a graph and keeps only the chain's
output; its backward walks the blocks in reverse, reconstructing each block's
input from its output and differentiating that one block at a time. Activation
memory therefore does not grow with depth.

Differences from RevTorch, MemCNN and revlib that this design buys:

* every trainable parameter is an explicit input of the autograd node, so the
  parameters get gradients even when the chain's input does not require grad
  (the first layer on raw images), and DistributedDataParallel's gradient hooks
  fire exactly as for ordinary layers;
* the input is never freed or overwritten, so it may feed a skip connection;
* random-number generator states are recorded and replayed inside
  ``fork_rng`` (dropout reproduces its masks, global generators are untouched);
* the autocast state of the forward is re-entered for the recomputation.

With ``memory_saving=False`` the same blocks run under plain autograd: the
non-reversible twin used to check gradients and to measure what is saved.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from revunet.reversible.base import InvertibleModule, trainable_parameters
from revunet.reversible.replay import AutocastState, check_supported_norms


class ReversibleSequence(nn.Module):
    """Run invertible blocks in order, optionally without storing their activations.

    Args:
        blocks: :class:`InvertibleModule` instances (couplings, squeezes, channel mixing...).
        memory_saving: keep only the output for backward and reconstruct the rest
            (``True``), or run as ordinary autograd (``False``, the twin).
        preserve_rng_state: record generator states so that randomness inside the
            blocks (dropout) is replayed identically. Disable only for blocks that
            draw no random numbers, to save the small recording cost.
    """

    def __init__(
        self,
        blocks: Iterable[InvertibleModule],
        memory_saving: bool = True,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("ReversibleSequence needs at least one block")
        for index, block in enumerate(self.blocks):
            if not isinstance(block, InvertibleModule):
                raise TypeError(
                    f"block {index} of ReversibleSequence is a {type(block).__name__}; every "
                    "block must be an InvertibleModule (e.g. AdditiveCoupling(f, g))"
                )
            check_supported_norms(block)
        self.memory_saving = memory_saving
        self.preserve_rng_state = preserve_rng_state

    def _invertible_blocks(self) -> list[InvertibleModule]:
        """The blocks as the constructor checked them to be (a ``ModuleList`` yields plain modules)."""
        return cast(list[InvertibleModule], list(self.blocks))

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        """The blocks in order.

        ``overwrite_input``: the caller hands ``x`` over (nothing reads it afterwards). Where no
        graph is built (inference), the blocks then compute in ``x``'s storage, so a level holds
        one map instead of two; with a graph it changes nothing.
        """
        params = trainable_parameters(self)
        needs_graph = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        if overwrite_input and not needs_graph:
            for block in self._invertible_blocks():
                x = block.forward_overwriting(x)
            return x
        if not (self.memory_saving and needs_graph):
            for plain in self.blocks:
                x = plain(x)
            return x
        return _ReversibleFunction.apply(x, self, *params)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that produced ``y`` (exact up to floating-point rounding)."""
        for block in reversed(self._invertible_blocks()):
            y = block.inverse(y)
        return y

    def extra_repr(self) -> str:
        return f"memory_saving={self.memory_saving}, preserve_rng_state={self.preserve_rng_state}"


class _ReversibleFunction(torch.autograd.Function):
    """One autograd node for the whole sequence; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sequence: ReversibleSequence, *params: nn.Parameter) -> torch.Tensor:
        ctx.sequence = sequence
        remember_context(ctx, x, [sequence], params)
        y, ctx.records = forward_recording(sequence, x)
        return keep_output(ctx, x, y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        refs = sys.getrefcount(grad_y)  # the first statement, as where the count is calibrated
        handed_over = engine_gradient(grad_y, refs)
        y = take_output(ctx, "ReversibleSequence")
        walk = BackwardWalk(ctx.param_index, y, grad_y, owned=handed_over and sole_tensor(y))
        del y, grad_y  # the walk holds the only references: each output is freed once its input is rebuilt
        with ctx.autocast.restored(), _parameters_bound(ctx.bindings):
            walk.through(ctx.sequence, ctx.records)
        grad_x = walk.take()[1] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *walk.param_grads)


def remember_context(ctx: Any, x: torch.Tensor, modules: list[nn.Module], params: tuple[nn.Parameter, ...]) -> None:
    """What a memory-saving node's backward needs besides the records: autocast state, parameters."""
    ctx.autocast = AutocastState.capture(x.device.type)
    ctx.param_index = {id(p): i for i, p in enumerate(params)}
    ctx.bindings = [b for module in modules for b in _parameter_bindings(module, ctx.param_index)]
    ctx.versions = [(p, p._version) for p in params]


def keep_output(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keep the node's output ``y`` (the one tensor its backward starts from) and return it."""
    if y.untyped_storage() is x.untyped_storage():
        y = y.clone()  # never hand out the input itself as the output
    # The output is kept as a detached alias rather than through save_for_backward,
    # so that backward can drop it as soon as the last block's input is rebuilt
    # (it is usually referenced nowhere else by then). The alias shares the
    # output's version counter, so in-place changes are still caught.
    ctx.output = y.detach()
    ctx.output_version = y._version
    return y


def take_output(ctx: Any, owner: str) -> torch.Tensor:
    """The kept output, checked, and released from ``ctx`` unless the graph is retained."""
    y: torch.Tensor | None = ctx.output
    if y is None:
        raise RuntimeError(
            f"backward through a memory-saving {owner} ran a second time, but the "
            "first backward released its output (call backward with retain_graph=True to run it again)"
        )
    if y._version != ctx.output_version:
        raise RuntimeError(
            f"the output of a memory-saving {owner} was modified in place after the "
            "forward (e.g. an inplace activation); its blocks cannot be reconstructed from it. "
            "Use an out-of-place operation after it."
        )
    if not _graph_kept():
        ctx.output = None
    _check_unmodified(ctx.bindings, ctx.versions)
    return y


def forward_recording(sequence: ReversibleSequence, x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    """Run the blocks without a graph: the output and each block's record for :class:`BackwardWalk`."""
    records = []
    for block in sequence._invertible_blocks():
        x, record = block.forward_recording(x, sequence.preserve_rng_state)
        records.append(record)
    return x, records


class BackwardWalk:
    """Back-propagation through sequences, one block at a time, from outputs rebuilt on the way.

    The walk holds its position, the map ``y`` and its gradient, itself: callers hand tensors
    over (:meth:`resume`) and take them back (:meth:`take`) without keeping references of their
    own, so that each output is freed as soon as the block before it is rebuilt. It gathers the
    parameters' gradients (in the slots of ``param_index``) and knows which tensors are its own:
    the saved output may be shared with later layers and the incoming gradients with other
    branches, and are never overwritten unless ``owned`` says that nothing else holds them
    (:func:`sole_tensor`, :func:`engine_gradient`). Tensors a block returns that are neither are
    ours, and the next block may reuse them in place. Weak references: holding the storages would
    keep a released output alive, and bare ids could be reused by new storages once it is freed.
    """

    def __init__(
        self,
        param_index: dict[int, int],
        y: torch.Tensor,
        grad_y: torch.Tensor,
        *foreign: torch.Tensor,
        owned: bool = False,
    ):
        self.param_index = param_index
        self.param_grads: list[torch.Tensor | None] = [None] * len(param_index)
        owned = owned and y.untyped_storage() is not grad_y.untyped_storage()
        self.foreign = [weakref.ref(t.untyped_storage()) for t in ((*foreign,) if owned else (y, grad_y, *foreign))]
        self.owned = owned
        self.y: torch.Tensor | None = y
        self.grad: torch.Tensor | None = grad_y

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current map and its gradient, handed to the caller (the walk forgets them)."""
        y, grad = self.y, self.grad
        assert y is not None and grad is not None, "the walk's position was already taken"
        self.y = self.grad = None
        return y, grad

    def resume(self, y: torch.Tensor, grad: torch.Tensor, adopt: bool = False) -> None:
        """Continue from ``y`` and its gradient; ``adopt``: tensors the caller made (ours to overwrite)."""
        self.y, self.grad = y, grad
        if adopt:
            self.owned = self._ours(y, grad)

    def _ours(self, y: torch.Tensor, grad_y: torch.Tensor) -> bool:
        mine = (y.untyped_storage(), grad_y.untyped_storage())
        return mine[0] is not mine[1] and not any(ref() is s for ref in self.foreign for s in mine)

    def through(self, sequence: ReversibleSequence, records: list[Any]) -> None:
        """Walk back through ``sequence``: the position becomes its input, rebuilt, and the gradient reaching it."""
        for block, record in zip(reversed(sequence._invertible_blocks()), reversed(records)):
            assert self.y is not None and self.grad is not None, "the walk's position was taken"
            self.y, self.grad, block_grads = block.backward_from_output(self.y, self.grad, record, inplace=self.owned)
            self.owned = self._ours(self.y, self.grad)
            for param, grad in block_grads:
                if grad is None:
                    continue
                slot = self.param_index[id(param)]
                previous = self.param_grads[slot]
                self.param_grads[slot] = grad if previous is None else previous + grad


def sole_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is the only tensor on its storage and covers all of it (no views, no
    other holder: the caller may overwrite it). Python references to ``tensor`` itself are not
    seen; callers use it on tensors they made and never handed out (a kept output's alias)."""
    storage = tensor.untyped_storage()
    holders = torch._C._storage_Use_Count(storage._cdata) - 1  # the probe ``storage`` is one
    dense = tensor.is_contiguous() and tensor.storage_offset() == 0
    return holders == 1 and dense and storage.nbytes() == tensor.numel() * tensor.element_size()


def engine_gradient(grad: torch.Tensor, python_refs: int) -> bool:
    """Whether the gradient a backward received is handed over: made by the autograd engine for
    this node alone, held by no hook, no caller (``backward(grad)``) and no other node.

    ``python_refs`` is ``sys.getrefcount(grad)`` taken as the backward's first statement; it is
    compared with the count a freshly made gradient shows at that point (calibrated once).
    """
    other_holders = grad._use_count() - 1  # type: ignore[attr-defined]  # C++ holders (another node)
    return python_refs <= _handed_over_refcount() and other_holders == 0 and sole_tensor(grad)


@functools.cache
def _handed_over_refcount() -> int:
    """``sys.getrefcount`` of a gradient the engine made, as the first statement of a backward."""
    seen: list[int] = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        @once_differentiable
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            refs = sys.getrefcount(grad)
            seen.append(refs)
            return grad

    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch.enable_grad():
        leaf = torch.zeros(2, requires_grad=True)
        (Probe.apply(leaf) * 2).sum().backward()
    return seen[0]


Binding = tuple[nn.Module, str, torch.Tensor]


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True if unknown."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep_graph is None else bool(keep_graph())


def _parameter_bindings(sequence: nn.Module, param_index: dict[int, int]) -> list[Binding]:
    """Where each parameter handed to the autograd node lives: (module, attribute, tensor)."""
    return [
        (module, name, tensor)
        for module in sequence.modules()
        for name, tensor in module._parameters.items()
        if tensor is not None and id(tensor) in param_index
    ]


def _check_unmodified(bindings: list[Binding], versions: list[tuple[torch.Tensor, int]]) -> None:
    """Recomputing with parameters changed since the forward would give wrong gradients."""
    for tensor, version in versions:
        if tensor._version != version:
            module, name = next((m, n) for m, n, t in bindings if t is tensor)
            raise RuntimeError(
                f"parameter '{name}' of {type(module).__name__} was modified in place between the "
                "forward and the backward of a memory-saving ReversibleSequence (e.g. an optimizer "
                "step before backward); its blocks cannot be recomputed. Run backward first."
            )


@contextlib.contextmanager
def _parameters_bound(bindings: list[Binding]) -> Iterator[None]:
    """Recompute with the very tensors the forward used.

    They differ from the modules' current attributes when the forward ran under
    ``torch.func.functional_call`` (or any reparametrisation) that has since ended.
    """
    swapped = []
    for module, name, tensor in bindings:
        current = module._parameters.get(name)
        if current is not tensor:
            swapped.append((module, name, current))
            module._parameters[name] = tensor  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, name, current in reversed(swapped):
            module._parameters[name] = current
