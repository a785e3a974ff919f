"""Make a recomputation in backward see exactly the world the forward saw.

A memory-saving sequence recomputes its blocks during backward. Three pieces of
hidden state must be replayed for that recomputation to be the same function:

* the random number generators (dropout draws the same mask),
* the autocast state (the same ops run in the same reduced precision),
* normalisation running statistics (updated by the forward only, never twice).

None of the helpers here touch the *global* generator state permanently: the
recorded states are restored inside :func:`torch.random.fork_rng`, which puts
the caller's state back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import get_device_states, set_device_states


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor)


@dataclass(frozen=True)
class RandomState:
    """The CPU generator state and the states of the accelerators ``tensors`` live on."""

    cpu: torch.Tensor
    devices: list[int]
    device_states: list[torch.Tensor]

    @classmethod
    def capture(cls, *tensors: torch.Tensor) -> RandomState | None:
        """Record the generator states that a call on ``tensors`` may consume.

        Fake tensors (used by the memory accounting) carry no randomness worth
        replaying, so nothing is recorded for them.
        """
        if any(_is_fake(t) for t in tensors):
            return None
        devices, states = get_device_states(*tensors)
        return cls(torch.get_rng_state(), devices, states)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run the body with the recorded states; the caller's states survive untouched."""
        with torch.random.fork_rng(devices=self.devices, device_type=_accelerator_type()):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states)
            yield


def _accelerator_type() -> str:
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator.type if accelerator is not None else "cuda"


def replaying(state: RandomState | None) -> contextlib.AbstractContextManager[None]:
    """Context that replays ``state`` (or does nothing when none was recorded)."""
    return state.restored() if state is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class AutocastState:
    """Which autocast regions were active (and with which dtype) during a forward."""

    regions: tuple[tuple[str, bool, torch.dtype], ...]
    cache_enabled: bool

    @classmethod
    def capture(cls, device_type: str) -> AutocastState:
        types = dict.fromkeys([device_type, "cpu"])  # ordered, unique
        regions = tuple((kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) for kind in types)
        return cls(regions, torch.is_autocast_cache_enabled())

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for kind, enabled, dtype in self.regions:
                stack.enter_context(
                    torch.autocast(kind, dtype=dtype, enabled=enabled, cache_enabled=self.cache_enabled)
                )
            yield


def check_supported_norms(module: nn.Module) -> None:
    """Refuse normalisations that cannot be recomputed safely.

    SyncBatchNorm communicates across processes inside its forward; recomputing it
    during backward would issue collectives in an order other ranks do not expect.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.SyncBatchNorm):
            raise TypeError(
                f"{type(sub).__name__} at '{name or type(module).__name__}' cannot sit inside a "
                "memory-saving reversible sequence: its recomputation in backward would run "
                "cross-process collectives out of order. Use GroupNorm/InstanceNorm, plain "
                "BatchNorm, or memory_saving=False."
            )


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm/InstanceNorm running statistics as they are during a recomputation.

    In training mode the recomputation must normalise with the batch statistics
    (so that gradients are right) but must not count the batch a second time.
    The few running-statistic buffers are copied before and written back after.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for sub in module.modules():
        if isinstance(sub, _NormBase) and sub.training and sub.track_running_stats:
            for buffer in (sub.running_mean, sub.running_var, sub.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
