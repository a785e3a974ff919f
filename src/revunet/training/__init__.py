"""Pieces of `revunet train` that are worth testing on their own (see :mod:`revunet.training.train`)."""
