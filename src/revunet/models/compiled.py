"""``torch.compile`` for the blocks of a model, never for its reversible core (the ``compile: true`` option).

Why blocks and not the model: a memory-saving :class:`~revunet.reversible.ReversibleSequence`
(and the invertible U-Net node) is a custom autograd function whose forward runs its blocks
without a graph and whose backward rebuilds each block's input and recomputes it, replaying
recorded random-number states. Traced whole, that machinery would be replaced by one graph whose
backward AOTAutograd plans from saved activations, which is what the reversible parts exist to
avoid storing. So the core stays eager and every maximal submodule without reversible machinery
is compiled: the couplings' F and G (run under ``no_grad`` in the forward and with grad in the
backward's recomputation: dynamo keeps one graph per grad mode), stems, level transitions
and heads. A model with no reversible part is compiled whole.

The VAE branch stays eager: inductor (torch 2.13) fails to lower the backward of its strided
bottleneck convolution (``ValueRangeError: Invalid ranges [0:-1]`` in ``convolution_backward``,
whole or one stage at a time). It runs once per step on the bottleneck and its upsampling
stages, a small part of the step's time.

Mechanism: each chosen module gets ``_compiled_call_impl``, the callable ``nn.Module.__call__``
runs instead of ``_call_impl`` when it is set, pointing to ``torch.compile`` of a small function
of ours that calls the module's ``_call_impl``. The module stays where it is, so ``state_dict``
keys do not change (no ``_orig_mod.`` prefix of ``torch.compile(module)``'s wrapper): checkpoints
load into eager models and back. ``nn.Module.compile()`` would set the same attribute, but to
``torch.compile(self._call_impl)``, a frame in torch's own ``nn`` files, which dynamo's skip list
leaves untraced: it silently runs eager. Hooks registered on a compiled module are traced into
its graph (registering one later recompiles it). ``copy.deepcopy`` and pickling drop the compiled
callable (``nn.Module.__getstate__`` does), so a copy is an eager model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revunet.models.vae import VAEBranch
from revunet.reversible import InvertibleModule, ReversibleSequence

# Every compiled module shares the code of ``_compiled_call`` (and each grad mode and input
# shape is a graph of its own), so dynamo's default of 8 graphs per code object would send most
# blocks silently back to eager. These limits leave room for hundreds of blocks.
RECOMPILE_LIMIT = 1024
ACCUMULATED_RECOMPILE_LIMIT = 8192

REVERSIBLE = (ReversibleSequence, InvertibleModule)
CONTAINERS = (nn.ModuleList, nn.ModuleDict)
EAGER = (VAEBranch,)  # never compiled (see the module docstring)


def configure_compiler() -> None:
    """Dynamo and inductor settings the compiled blocks need (process-wide switches, set once here).

    ``fallback_random``: inductor's own random kernels draw from another stream than eager
    dropout; the fallback uses the global generators, whose states the reversible core records
    and replays in the backward's recomputation, so dropout masks match the forward's.
    """
    import torch._dynamo.config
    import torch._inductor.config

    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, ACCUMULATED_RECOMPILE_LIMIT)
    torch._inductor.config.fallback_random = True


def _must_open(module: nn.Module) -> bool:
    """Whether ``module`` itself must stay eager while its children may be compiled."""
    return isinstance(module, CONTAINERS) or any(isinstance(sub, REVERSIBLE) for sub in module.modules())


def compilable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The maximal submodules (by path, ``""`` for the model itself) that hold no reversible machinery.

    Containers (``ModuleList``/``ModuleDict``, which are never called) and modules that hold a
    reversible part are opened, the VAE branch is skipped; every other module is a block.
    Modules without parameters inside an opened module (e.g. a parameter-free squeeze) are left
    as they are.
    """
    blocks: dict[str, nn.Module] = {}

    def visit(path: str, module: nn.Module) -> None:
        if isinstance(module, EAGER):
            return
        if _must_open(module):
            for name, child in module.named_children():
                visit(f"{path}.{name}" if path else name, child)
        elif any(True for _ in module.parameters()):
            blocks[path] = module

    visit("", model)
    return blocks


def _compiled_call(module: nn.Module, **options: Any) -> Callable[..., Any]:
    """``torch.compile`` of a call of ``module`` through ``_call_impl`` (hooks included)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return module._call_impl(*args, **kwargs)

    return torch.compile(call, **options)


def compile_blocks(model: nn.Module, **options: Any) -> list[str]:
    """Compile every block of ``model`` (see :func:`compilable_blocks`) in place; returns their paths.

    ``options`` go to ``torch.compile`` (e.g. ``backend="eager"`` to check tracing without
    inductor). The parameters and ``state_dict`` are untouched; compile after moving the model
    to its device and before wrapping it in DistributedDataParallel.
    """
    configure_compiler()
    blocks = compilable_blocks(model)
    for module in blocks.values():
        module._compiled_call_impl = _compiled_call(module, **options)
    return list(blocks)


def compiled_blocks(model: nn.Module) -> list[str]:
    """Paths of the submodules of ``model`` that :func:`compile_blocks` compiled (``""``: the model)."""
    return [path for path, module in model.named_modules() if module._compiled_call_impl is not None]
