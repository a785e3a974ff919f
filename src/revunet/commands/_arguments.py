"""Argument types several commands share (a leading underscore: not a command module)."""

from __future__ import annotations

import argparse


def _integer_at_least(text: str, least: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1, else a message naming what was given."""
    return _integer_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0, else a message naming what was given."""
    return _integer_at_least(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """An ``argparse`` type: a number above 0, else a message naming what was given."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
