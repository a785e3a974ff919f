"""Test ordering: the slowest tests start first, so the two xdist workers finish together.

``@pytest.mark.slow(seconds)`` records what a test took on 2 busy cores (``pytest --durations``);
tests start in order of that figure, largest first, the unmarked ones after in file order. A
five-minute end-to-end run collected last would otherwise keep one worker busy alone at the end.
"""

from __future__ import annotations

import pytest


def _seconds(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.args[0]) if mark.args else 1.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_seconds, reverse=True)  # stable: equal figures keep their file order
