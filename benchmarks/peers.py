"""The same coupling sequence run by our code and by the peer libraries' reversible machinery.

Every builder takes ``(channels, depth, groups, pairs=None)`` and returns an
``nn.Module`` mapping ``x -> y`` that computes exactly what
``revunet.models.blocks.residual_coupling_sequence(channels, depth, groups)``
computes: ``depth`` additive couplings ``y1 = x1 + F(x2), y2 = x2 + G(y1)``
whose F and G are ``NormActConv3d`` on half the channels. Only the memory
machinery differs. ``pairs`` (a list of ``(F, G)`` modules) lets several
implementations be built from copies of the same weights, so that their
gradients can be compared.

The peers are optional: a missing library raises :class:`PeerUnavailable`,
which :func:`available_implementations` turns into a printed note.

Known peer limitations the benchmark works around (see docs/benchmarks/reversible-core.md):

* RevTorch and revlib return no parameter gradients when the sequence's input
  does not require grad (their autograd Functions take the input, and for revlib
  zero buffers, but not the parameters as tensor arguments, so autograd never
  calls their backward);
* MemCNN with ``keep_input=False`` frees the storage of its input (the caller's
  tensor) during forward and restores it during backward.

:class:`InputRequiresGrad` makes the input a leaf that requires grad (sharing
its storage, no copy), which makes all of them train. The benchmark applies it
to every implementation, ours included, so all pay for the same input gradient.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from revunet.models.blocks import residual_coupling_sequence
from revunet.reversible import AdditiveCoupling, ReversibleSequence

Pairs = list[tuple[nn.Module, nn.Module]]
Builder = Callable[..., nn.Module]


class PeerUnavailable(ImportError):
    """The peer library is not installed (or fails to import)."""


def coupling_pairs(channels: int, depth: int, groups: int) -> Pairs:
    """The ``(F, G)`` modules of ``residual_coupling_sequence``, taken from the real thing.

    Built by our own constructor so that every implementation uses exactly the
    modules (and the default initialisation) our sequence uses.
    """
    twin = residual_coupling_sequence(channels, depth, groups, memory_saving=False)
    return [(block.f, block.g) for block in twin.blocks]


def clone_pairs(pairs: Pairs) -> Pairs:
    """Independent copies with identical weights (for a second implementation)."""
    return [(copy.deepcopy(f), copy.deepcopy(g)) for f, g in pairs]


def _pairs(channels: int, depth: int, groups: int, pairs: Pairs | None) -> Pairs:
    if pairs is None:
        return coupling_pairs(channels, depth, groups)
    if len(pairs) != depth:
        raise ValueError(f"got {len(pairs)} (F, G) pairs for a sequence of depth {depth}")
    return pairs


# --- our implementation and plain-autograd baselines ------------------------------------


def build_ours(channels: int, depth: int, groups: int, pairs: Pairs | None = None) -> nn.Module:
    """Our memory-saving :class:`ReversibleSequence`."""
    blocks = [AdditiveCoupling(f, g) for f, g in _pairs(channels, depth, groups, pairs)]
    return ReversibleSequence(blocks, memory_saving=True)


def build_twin(channels: int, depth: int, groups: int, pairs: Pairs | None = None) -> nn.Module:
    """The same blocks under plain autograd (stores every activation): the reference."""
    blocks = [AdditiveCoupling(f, g) for f, g in _pairs(channels, depth, groups, pairs)]
    return ReversibleSequence(blocks, memory_saving=False)


class CheckpointedSequence(nn.Module):
    """The twin's blocks under ``torch.utils.checkpoint.checkpoint_sequential``.

    PyTorch checkpoints every segment but the last, which runs normally; so the
    stored activations are the segment boundaries plus one full segment.
    """

    def __init__(self, blocks: list[nn.Module], segments: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.blocks(x)
        return checkpoint_sequential(self.blocks, self.segments, x, use_reentrant=False)

    def extra_repr(self) -> str:
        return f"segments={self.segments}"


def build_checkpoint(
    channels: int, depth: int, groups: int, pairs: Pairs | None = None, segments: int | None = None
) -> nn.Module:
    """Gradient checkpointing with ``round(sqrt(depth))`` segments (the classic memory/compute balance)."""
    blocks = [AdditiveCoupling(f, g) for f, g in _pairs(channels, depth, groups, pairs)]
    return CheckpointedSequence(blocks, segments or max(1, round(math.sqrt(depth))))


# --- peer libraries -----------------------------------------------------------------------


def build_revtorch(channels: int, depth: int, groups: int, pairs: Pairs | None = None) -> nn.Module:
    """RevTorch 0.2.4: ``ReversibleBlock(F, G)`` chained in its ``ReversibleSequence``."""
    try:
        import revtorch
    except ImportError as error:
        raise PeerUnavailable(f"revtorch is not installed ({error})") from error
    blocks = nn.ModuleList(
        revtorch.ReversibleBlock(f, g, split_along_dim=1) for f, g in _pairs(channels, depth, groups, pairs)
    )
    return revtorch.ReversibleSequence(blocks)


def build_memcnn(channels: int, depth: int, groups: int, pairs: Pairs | None = None) -> nn.Module:
    """MemCNN 1.5.2: each ``AdditiveCoupling(Fm=F, Gm=G)`` in an ``InvertibleModuleWrapper``.

    ``keep_input=False`` is MemCNN's memory-saving setting: each wrapper frees its
    input's storage after the forward and reconstructs it in backward.
    """
    try:
        with warnings.catch_warnings():  # its torch.cuda.amp decorators are deprecated
            warnings.simplefilter("ignore", FutureWarning)
            import memcnn  # its core does not import torchvision
    except ImportError as error:
        raise PeerUnavailable(f"memcnn is not installed ({error})") from error
    return nn.Sequential(
        *(
            memcnn.InvertibleModuleWrapper(
                memcnn.AdditiveCoupling(Fm=f, Gm=g), keep_input=False, keep_input_inverse=False
            )
            for f, g in _pairs(channels, depth, groups, pairs)
        )
    )


def build_revlib(channels: int, depth: int, groups: int, pairs: Pairs | None = None) -> nn.Module:
    """revlib 1.7.2: ``ReversibleSequential(F1, G1, F2, G2, ...)`` with its default coupling.

    revlib wraps each module as one half-step ``(a, b) -> (b, a + m(b))``
    (``MemoryModes.autograd_function``, the default). Starting from the channel
    halves ``(x1, x2)``, the modules F1, G1 give ``(x2, y1)`` then ``(y1, y2)``:
    our coupling, two modules per block, output ``cat(y1, y2)``.
    """
    try:
        import revlib
    except ImportError as error:
        raise PeerUnavailable(f"revlib is not installed ({error})") from error
    modules = [module for pair in _pairs(channels, depth, groups, pairs) for module in pair]
    return revlib.ReversibleSequential(*modules, split_dim=1)


# --- the harness-side wrapper ---------------------------------------------------------------


class InputRequiresGrad(nn.Module):
    """Feed ``module`` a leaf that requires grad (a storage-sharing ``detach``, no copy).

    RevTorch and revlib only produce parameter gradients if their input requires
    grad; a real network's first layer gets raw images that do not. Wrapping every
    implementation makes them all train and charges them all one input gradient.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        return self.module(x)


# Peers whose peak the tensor tracker of ``revunet.memory.accounting`` cannot follow, and why.
TRACKER_CAVEATS: dict[str, str] = {
    "memcnn": "tracked peak over-counts (storage.resize_(0) unseen)",
}


BUILDERS: dict[str, Builder] = {
    "ours": build_ours,
    "twin": build_twin,
    "checkpoint": build_checkpoint,
    "revtorch": build_revtorch,
    "memcnn": build_memcnn,
    "revlib": build_revlib,
}


def build(
    name: str,
    channels: int,
    depth: int,
    groups: int,
    pairs: Pairs | None = None,
    input_requires_grad: bool = True,
) -> nn.Module:
    """Build implementation ``name`` (a key of :data:`BUILDERS`), wrapped as the benchmark runs it."""
    if name not in BUILDERS:
        raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(BUILDERS)}")
    model = BUILDERS[name](channels, depth, groups, pairs)
    return InputRequiresGrad(model) if input_requires_grad else model


def available_implementations(names: list[str] | None = None) -> list[str]:
    """The implementations whose library imports here; prints a note for each one skipped."""
    found = []
    for name in names or list(BUILDERS):
        try:
            BUILDERS[name](2, 1, 1)  # tiny build: imports the library and exercises its constructor
        except PeerUnavailable as error:
            print(f"note: skipping {name}: {error}")
            continue
        found.append(name)
    return found


# --- gradient agreement ----------------------------------------------------------------------


def gradient_mismatch(name: str, channels: int, depth: int, groups: int, size: int, seed: int = 0) -> float:
    """Largest relative difference between ``name``'s gradients and the twin's, same weights.

    Gradients of the input and of every F/G parameter are compared after one
    backward of a random projection of the output; each difference is scaled by
    the largest entry of the twin's gradient. A missing gradient counts as ``inf``.
    """
    torch.manual_seed(seed)
    reference = coupling_pairs(channels, depth, groups)
    candidate = clone_pairs(reference)
    x = torch.randn(1, channels, size, size, size)
    projection = torch.randn_like(x)

    def gradients_of(model: nn.Module, pairs: Pairs) -> list[torch.Tensor | None]:
        leaf = x.clone().requires_grad_(True)
        # A non-leaf copy goes in: MemCNN frees the storage of the tensor it receives.
        (model(leaf.clone()) * projection).sum().backward()
        return [leaf.grad, *(p.grad for f, g in pairs for p in (*f.parameters(), *g.parameters()))]

    expected = gradients_of(build("twin", channels, depth, groups, reference), reference)
    actual = gradients_of(build(name, channels, depth, groups, candidate), candidate)
    worst = 0.0
    for want, got in zip(expected, actual):
        if got is None or want is None:
            return math.inf
        scale = want.abs().max().clamp_min(1e-30)
        worst = max(worst, float((got - want).abs().max() / scale))
    return worst
