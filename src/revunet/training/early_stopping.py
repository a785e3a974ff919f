"""Brügger et al.'s early stopping: patience counted from the best epoch of a smoothed validation Dice.

Validation Dice on a few held-out volumes is noisy, so the authors track an exponential moving
average of it, ``ema = alpha * ema + (1 - alpha) * dice`` (started at the first value), remember
the epoch where that average was highest, and stop once the current epoch exceeds that epoch
by more than ``patience``. The best model is also chosen by the average, not by one lucky
validation: :attr:`EarlyStopping.best_epoch` is the epoch whose weights `revunet train` keeps
in ``best.pt``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """State of the EMA-of-validation-Dice rule; plain values so it fits in a checkpoint.

    ``patience`` None never stops. Epochs are 1-based (the number of completed epochs).
    """

    alpha: float = 0.95
    patience: int | None = None
    ema: float | None = None
    best_ema: float | None = None
    best_epoch: int | None = None
    best_dice: float | None = None

    def update(self, epoch: int, dice: float) -> bool:
        """Fold in the validation mean Dice of ``epoch``; True when this epoch is the new best."""
        self.ema = dice if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * dice
        if self.best_ema is None or self.ema > self.best_ema:
            self.best_ema, self.best_epoch, self.best_dice = self.ema, epoch, dice
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """Whether training stops after ``epoch`` (checked every epoch, validated or not)."""
        if self.patience is None or self.best_epoch is None:
            return False
        return epoch > self.best_epoch + self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
