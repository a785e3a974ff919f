"""A dispatch mode that counts the bytes of every live tensor storage, and their peak.

:mod:`revunet.memory.accounting` runs a training step under it; the count is exact on real
and on fake tensors, because it follows storages from the operator that creates them to
their release.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_BLOCK_BYTES = 512  # the CUDA caching allocator rounds every request up to this


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of every live tensor storage while active, and their peak.

    Storages that exist before the tracker starts are added with :meth:`add`.
    Every storage an operator returns is added automatically; a storage leaves
    the count when it is freed (a finalizer on the storage object, which PyTorch
    keeps alive exactly as long as the storage itself). Views share their base's
    storage and cost nothing.

    Besides the exact byte count, a second count rounds every storage up to the
    CUDA caching allocator's 512-byte blocks, the figure comparable to
    ``torch.cuda.max_memory_allocated()``.

    ``locate`` (optional) names the owner of each new storage when it is created (see
    :mod:`revunet.memory.attribution`); :meth:`owner` returns it.
    """

    def __init__(self, locate: Callable[[], str] | None = None) -> None:
        super().__init__()
        self._key = f"_revunet_storage_id_{id(self)}"
        self._live: dict[int, int] = {}  # storage id -> bytes, live storages only
        self._sizes: dict[int, int] = {}  # storage id -> bytes, every storage ever seen
        self.current = 0
        self.peak = 0
        self.current_rounded = 0
        self.peak_rounded = 0
        self.phase = "setup"
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, int] = {}  # the highest total reached during each phase
        self._events: list[int] = []  # +id on allocation, -id on release (ids start at 1)
        self._events_at_peak = 0
        self._events_at_phase_peak: dict[str, int] = {}
        self._locate = locate
        self._owners: dict[int, str] = {}  # storage id -> owner named by ``locate`` at creation

    def storage_id(self, tensor: torch.Tensor) -> int | None:
        """The tracker's id of ``tensor``'s storage, or ``None`` if not tracked."""
        return getattr(tensor.untyped_storage(), self._key, None)

    def add(self, tensor: torch.Tensor) -> int:
        """Count ``tensor``'s storage (once, however many tensors view it)."""
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        sid = getattr(storage, self._key, None)
        if sid is None:
            sid = len(self._sizes) + 1
            setattr(storage, self._key, sid)
            if self._locate is not None:
                self._owners[sid] = self._locate()
            weakref.finalize(storage, self._release, sid)
            self._events.append(sid)
            self._change(sid, nbytes)
        elif sid in self._live and self._live[sid] != nbytes:  # resized in place (out=, resize_)
            self._change(sid, nbytes)
        return sid

    def _change(self, sid: int, nbytes: int) -> None:
        old = self._live.get(sid, 0)
        self._live[sid] = self._sizes[sid] = nbytes
        self.current += nbytes - old
        self.current_rounded += _cuda_block(nbytes) - _cuda_block(old)
        self.peak_rounded = max(self.peak_rounded, self.current_rounded)
        if self.current > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current
            self._events_at_phase_peak[self.phase] = len(self._events)
        if self.current > self.peak:
            self.peak = self.current
            self.peak_phase = self.phase
            self._events_at_peak = len(self._events)

    def _release(self, sid: int) -> None:
        nbytes = self._live.pop(sid, None)
        if nbytes is not None:
            self.current -= nbytes
            self.current_rounded -= _cuda_block(nbytes)
            self._events.append(-sid)

    def owner(self, sid: int) -> str | None:
        """The owner ``locate`` named when storage ``sid`` was created (None: added before, or no ``locate``)."""
        return self._owners.get(sid)

    def live_at_peak(self, phase: str | None = None) -> dict[int, int]:
        """Storage id -> bytes of every storage live at the (exact) peak, or at the peak of ``phase``."""
        end = self._events_at_peak if phase is None else self._events_at_phase_peak[phase]
        live: dict[int, None] = {}
        for event in self._events[:end]:
            if event > 0:
                live[event] = None
            else:
                live.pop(-event, None)
        return {sid: self._sizes[sid] for sid in live}

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self.add(leaf)
        return out


def _cuda_block(nbytes: int) -> int:
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
