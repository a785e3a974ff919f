"""Everything random in training, seeded and saved so that a resumed run repeats an uninterrupted one.

Data order: each epoch a permutation of the training samples seeded by ``(seed, epoch)``,
dealt to the processes like cards (rank r takes positions r, r+W, ...). So W processes with
batch b equal one process with batch b and accumulation W (same samples per step, gradients
averaged), up to float rounding. Batch b on one process is NOT the same as b x accumulation
when the loss pools over the batch (the Dice losses do: one Dice over all voxels of the batch).

Determinism: python, numpy and torch are seeded from ``experiment.seed``; on CPU
``torch.use_deterministic_algorithms(True)`` is on during training, so a run killed and resumed
gives bit-identical weights to an uninterrupted one with the same thread count.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from revunet.training.errors import TrainError


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states (python, numpy, torch and, when present, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def cuda_states_to_restore(saved: Sequence[torch.Tensor], visible: int) -> tuple[list[torch.Tensor], str | None]:
    """The saved CUDA generator states for the ``visible`` GPUs (GPU i takes state i), and a note
    when some are dropped: a run resumed on fewer GPUs than it was saved on must not fail.

    On more GPUs than were saved the extra ones keep their seeded state.
    """
    kept = list(saved[:visible])
    if len(saved) <= visible:
        return kept, None
    return kept, (
        f"note: last.pt holds the CUDA random states of {len(saved)} GPU(s) but {visible} are visible: "
        f"restoring {len(kept)}, dropping {len(saved) - len(kept)}"
    )


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved (the CUDA states of the GPUs there are now)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" not in state:
        return
    kept, note = cuda_states_to_restore(state["cuda"], torch.cuda.device_count())
    for index, cuda_state in enumerate(kept):
        torch.cuda.set_rng_state(cuda_state, index)
    if note is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        print(note, flush=True)  # once, not once per process


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms while training (restored afterwards: it is a process-wide switch)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


class ShardedOrder(Sampler[int]):
    """Per-epoch seeded permutation of ``size`` samples, dealt to ``world_size`` ranks.

    Rank r gets positions r, r + W, r + 2W, ... of the permutation; the last ``size mod W``
    positions are dropped so every rank runs the same number of steps. ``start`` (set with the
    epoch) skips this rank's first samples: an epoch resumed after an interruption.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < world_size:
            raise TrainError(f"{size} training sample(s) cannot feed {world_size} processes")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        """Samples each rank gets in a whole epoch (whatever ``start`` skips)."""
        return self.size // self.world_size

    def order(self) -> list[int]:
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        usable = self.per_rank * self.world_size
        return permutation[self.rank : usable : self.world_size].tolist()[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
