"""Which module created each tensor: the owner a :class:`LiveTensorTracker` records per storage.

One mechanism for fake, cpu and cuda tensors, in three parts:

* forward pre/post hooks on every module of the measured network keep a stack of module
  paths (``encoder.0.blocks.0.f``); an allocation while a module runs belongs to the innermost
  one. The recomputation inside a memory-saving sequence's backward calls F and G as modules,
  so it is attributed to them like their forward;
* a torch-function mode writes the current owner into the ``metadata`` of every autograd node
  an operation creates (custom autograd functions, which escape the mode, are tagged by the
  post-hook of the module that applied them, or, applied in a module's own forward as
  Fully-InvRes's invertible U-Net is, with that module's path by the pre-hook of the module
  their output feeds). During backward, an allocation outside any module forward belongs to
  the owner of the node the engine is running (``torch._C._current_autograd_node``): the
  gradients of a module's activations are charged to that module;
* otherwise the training step's scope names the owner: ``inputs`` (the batch), ``loss``
  (ops after the network's forward), ``optimizer`` (temporaries of the step), ``autograd``
  (the engine's own buffers, e.g. gradient accumulation outside any node of the network).

Ops in the network's own ``forward`` (outside its children: skip concatenations, pooling in
the top level) belong to ``model``. Nothing here changes lifetimes: no tensor or node is
referenced, only the nodes' metadata dictionaries are written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ROOT = "model"
_KEY = "revunet_owner"


class ModuleAttribution:
    """The owner of an allocation made now; see the module docstring."""

    def __init__(self) -> None:
        self.stack: list[str] = []

    def current(self, scope: str = "other") -> str:
        """The innermost running module, else the running autograd node's owner, else ``scope``."""
        if self.stack:
            return self.stack[-1]
        node = torch._C._current_autograd_node()
        if node is not None:
            owner = _metadata(node).get(_KEY)
            return owner if owner is not None else "autograd"
        return scope

    def tag(self, value: Any, owner: str | None = None) -> None:
        """Write the owner into every untagged autograd node behind the tensors in ``value``.

        The walk goes back from each tensor's node through untagged nodes only: those an
        operation created internally (instance norm's batch-norm node under a view, copy-slices
        of an in-place op on a view), which the torch-function mode never saw as outputs.
        """
        pending: list[Any] = [leaf.grad_fn for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]
        owner = owner or self.current()
        while pending:
            node = pending.pop()
            if node is None or _KEY in _metadata(node):
                continue
            _metadata(node)[_KEY] = owner
            pending.extend(parent for parent, _ in node.next_functions)

    @contextlib.contextmanager
    def hooked(self, net: nn.Module) -> Iterator[None]:
        """Inside: every module of ``net`` keeps the stack, every new autograd node is tagged."""
        handles = []
        for name, module in net.named_modules():
            path = name or ROOT
            handles.append(module.register_forward_pre_hook(self._enter(path)))
            handles.append(module.register_forward_hook(self._leave(path), always_call=True))
        try:
            with _NodeTagger(self):
                yield
        finally:
            for handle in handles:
                handle.remove()
            self.stack.clear()

    def _enter(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.tag(args)  # an input from a custom node applied outside any module: the caller's
            self.stack.append(path)

        return hook

    def _leave(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.tag(output, path)  # custom autograd functions escape the torch-function mode
            if self.stack and self.stack[-1] == path:
                self.stack.pop()

        return hook


class _NodeTagger(TorchFunctionMode):
    """Tags the autograd node of each operation's outputs with the owner current at the call."""

    def __init__(self, attribution: ModuleAttribution) -> None:
        super().__init__()
        self.attribution = attribution

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            self.attribution.tag(out)
        return out


def _metadata(node: Any) -> dict[str, Any]:
    """An autograd node's own dictionary (kept by the C++ node as long as the node lives)."""
    metadata: dict[str, Any] = node.metadata
    return metadata


def collapse(owner: str, depth: int = 2) -> str:
    """``encoder.0.blocks.0.f`` -> ``encoder.0`` at depth 2: the level a table talks about."""
    return ".".join(owner.split(".")[:depth])


def grouped(owners: dict[str, int], depth: int = 2) -> dict[str, int]:
    """Bytes per owner, paths collapsed to ``depth`` components, largest first."""
    totals: dict[str, int] = {}
    for owner, nbytes in owners.items():
        key = collapse(owner, depth)
        totals[key] = totals.get(key, 0) + nbytes
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))
