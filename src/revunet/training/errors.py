"""The errors `revunet train` reports to its user (the command prints them without a traceback)."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A problem with the inputs or the run folder; the message names the file or key at fault."""


class NonFiniteLoss(TrainError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""
