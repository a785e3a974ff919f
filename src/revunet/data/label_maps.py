"""From canonical labels back to a dataset's own on-disk label values.

:data:`revunet.data.io.LABEL_MAPS` says how each layout's files spell the canonical labels
(disk value -> canonical value); predictions are written in the same spelling as the
references they will be compared with, so this module inverts that table.
"""

from __future__ import annotations

import numpy as np

from revunet.data.io import LABEL_MAPS


def disk_values(layout: str) -> dict[int, int]:
    """Canonical value -> on-disk value for ``layout`` (the inverse of ``LABEL_MAPS[layout]``)."""
    try:
        mapping = LABEL_MAPS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LABEL_MAPS)}") from None
    inverse = {canonical: disk for disk, canonical in mapping.items()}
    if len(inverse) != len(mapping):  # pragma: no cover - guards future edits of LABEL_MAPS
        raise ValueError(f"layout {layout!r}: LABEL_MAPS maps several disk values to one canonical value")
    return inverse


def _relabel(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``label`` with every value ``v`` replaced by ``mapping[v]`` (uint8); values already checked."""
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[label.astype(np.intp)]


def canonical_to_disk(label: np.ndarray, layout: str) -> np.ndarray:
    """Map a canonical label map (BraTS {0,1,2,4}, iSeg {0,1,2,3}) to ``layout``'s disk values (uint8).

    A value the layout cannot spell is an error naming the layout and the values.
    """
    inverse = disk_values(layout)
    label = np.asarray(label)
    if label.dtype.kind not in "iub":
        raise ValueError(f"layout {layout!r}: expected an integer label map, got data type {label.dtype}")
    found = np.unique(label)
    unknown = sorted(set(found.tolist()) - set(inverse))
    if unknown:
        raise ValueError(
            f"layout {layout!r}: label values {unknown} have no on-disk value "
            f"(the layout spells the canonical values {sorted(inverse)})"
        )
    return _relabel(label, inverse)


def disk_to_canonical(label: np.ndarray, layout: str) -> np.ndarray:
    """Map a label map in ``layout``'s disk values to canonical values (uint8).

    For reading predictions back (evaluation, figures); integer-valued floats are accepted,
    as NIfTI writers sometimes store labels as floats. A value the layout does not define is
    a ValueError naming the layout, the values and what was expected.
    """
    disk_values(layout)  # an unknown layout is an error naming the known ones
    mapping = LABEL_MAPS[layout]
    label = np.asarray(label)
    if label.dtype.kind == "f" and not (np.isfinite(label).all() and np.array_equal(label, np.round(label))):
        raise ValueError(f"holds non-integer values; expected labels {sorted(mapping)}")
    if label.dtype.kind not in "iubf":
        raise ValueError(f"has data type {label.dtype}; expected integers")
    values = np.unique(label).astype(np.int64)
    unexpected = sorted(set(values.tolist()) - set(mapping))
    if unexpected:
        raise ValueError(
            f"holds label values {unexpected} that layout {layout} does not define; expected a subset of "
            f"{sorted(mapping)} (the dataset's on-disk labels)"
        )
    return _relabel(label, mapping)
