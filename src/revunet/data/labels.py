"""Label values on disk and in the canonical conventions, and the one relabelling between them.

The canonical labels of each task are defined in :mod:`revunet.tasks` (BraTS 0/1/2/4, iSeg
0/1/2/3). Every dataset layout spells them its own way on disk; :data:`LABEL_MAPS` says how
(disk value -> canonical value, per layout, the case table's ``layout`` column). Reading a
reference maps disk to canonical; predictions are written back in the layout's spelling, so
they sit beside the references they will be compared with.
"""

from __future__ import annotations

import numpy as np

from revunet.tasks import TASKS

BRATS_LABELS = TASKS["brats"].labels
ISEG_LABELS = TASKS["iseg"].labels
# iSeg files store background, CSF, GM, WM as 0, 10, 150, 250.
ISEG_DISK_VALUES = {0: 0, 10: 1, 150: 2, 250: 3}
_BRATS_IDENTITY = {value: value for value in BRATS_LABELS}

LABEL_MAPS: dict[str, dict[int, int]] = {
    "brats2018": _BRATS_IDENTITY,
    "brats2020": _BRATS_IDENTITY,
    "brats2021": _BRATS_IDENTITY,
    # BraTS 2023 renumbered enhancing tumour from 4 to 3.
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 4},
    # Decathlon Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
    "msd": {0: 0, 1: 2, 2: 1, 3: 4},
    "iseg": ISEG_DISK_VALUES,
}
LAYOUT_TASKS: dict[str, str] = {
    "brats2018": "brats",
    "brats2020": "brats",
    "brats2021": "brats",
    "brats2023": "brats",
    "msd": "brats",
    "iseg": "iseg",
}


def check_label_values(label: np.ndarray, allowed: tuple[int, ...], source: str) -> None:
    """Raise a ValueError naming ``source`` and the offending values if ``label`` has values outside ``allowed``."""
    found = np.unique(label)
    unexpected = sorted(set(found.tolist()) - set(allowed))
    if unexpected:
        raise ValueError(
            f"{source}: unexpected label values {unexpected} (found {found.tolist()}, expected a subset of {list(allowed)})"
        )


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


def relabel(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``label`` with every value ``v`` replaced by ``mapping[v]`` (uint8); the values must be checked first."""
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[np.asarray(label).astype(np.intp)]


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
    return relabel(label, inverse)


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
    return relabel(label, mapping)
