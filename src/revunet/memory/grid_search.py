"""The largest grid index whose measured peak fits a budget, in a few measurements.

Peak memory is very nearly affine in a suitable feature of the index (the voxel count of an
input edge, the depth, the width), so the search does not bisect: the line through two
measurements predicts where the budget is crossed, that grid point is measured, and the search
continues from the two points that bracket the boundary (regula falsi on the grid, bisection
if that stalls) until an index that fits and its neighbour that does not are both measured.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from revunet.memory.accounting import MIB

_SECANT_STEPS = 6  # then bisection: a safeguard for curves far from affine


class CapacityError(ValueError):
    """The budget does not hold even the smallest value searched."""


@dataclass(frozen=True)
class Boundary:
    """Where a search ended: the largest grid index that fits and what was measured around it."""

    index: int
    peak_bytes: int
    next_peak_bytes: int | None  # at index + 1; None when index is the top of the range
    capped: bool
    measurements: int


def largest_fitting(
    measure: Callable[[int], int],
    lo: int,
    hi: int,
    budget_bytes: float,
    feature: Callable[[int], float] = float,
    hints: Iterable[int] = (),
) -> Boundary:
    """The largest index in ``[lo, hi]`` whose measured peak is within the budget.

    ``measure(i)`` is assumed non-decreasing in ``i`` and close to affine in ``feature(i)``
    (e.g. the voxel count of size i). ``hints`` are measured first (two far-apart points make
    the first prediction good). Ends when ``i`` fits and ``i + 1`` is measured not to (or
    ``i == hi``); raises :class:`CapacityError` when even ``lo`` does not fit.
    """
    if lo > hi:
        raise ValueError(f"empty search range [{lo}, {hi}]")
    peaks: dict[int, int] = {}

    def probe(i: int) -> None:
        if i not in peaks:
            peaks[i] = int(measure(i))

    for hint in hints:
        probe(min(hi, max(lo, hint)))
    steps = 0
    while True:
        over = [i for i, p in peaks.items() if p > budget_bytes]
        b = min(over, default=hi + 1)
        a = max((i for i, p in peaks.items() if p <= budget_bytes and i < b), default=lo - 1)
        if b - a <= 1:
            break
        if steps < _SECANT_STEPS:
            guess = _predict(peaks, a, b, lo, hi, budget_bytes, feature)
        else:
            guess = (a + b) // 2
        steps += 1
        probe(min(b - 1, max(a + 1, guess)))
    if a < lo:
        raise CapacityError(
            f"even the smallest value needs {peaks[lo] / MIB:.1f} MiB, over the budget of {budget_bytes / MIB:.1f} MiB"
        )
    return Boundary(a, peaks[a], peaks.get(a + 1), capped=a == hi, measurements=len(peaks))


def _predict(
    peaks: dict[int, int], a: int, b: int, lo: int, hi: int, budget: float, feature: Callable[[int], float]
) -> int:
    """The grid index where the line through the two points nearest the boundary meets the budget."""
    if a >= lo and b <= hi:
        pair = [a, b]
    elif a >= lo:
        pair = sorted(i for i in peaks if peaks[i] <= budget)[-2:]
    else:
        pair = sorted(i for i in peaks if peaks[i] > budget)[:2]
    if len(pair) < 2:  # a single point: double or halve
        return min(hi, 2 * a) if a >= lo else max(lo, b // 2)
    (x1, y1), (x2, y2) = ((feature(i), peaks[i]) for i in pair)
    if x2 == x1 or y2 <= y1:  # flat: no sign of growth, go to the far end of the bracket
        return b - 1 if a >= lo else a + 1
    target = x1 + (budget - y1) * (x2 - x1) / (y2 - y1)
    candidates = range(a + 1, b)  # the largest grid index whose feature is within the predicted limit
    position = bisect.bisect_right(candidates, target, key=feature)
    return candidates[position - 1] if position else a + 1
