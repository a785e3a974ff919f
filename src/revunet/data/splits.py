"""Seeded splits in three roles that never mix: train, validation (selection) and test (reported).

Every experiment's cases play one role each. ``train`` fits the weights; ``validation`` chooses
the checkpoint (``best.pt``) and stops early, and may be empty, in which case nothing is selected
and the last epoch's weights are the result; ``test`` is what inference, evaluation and the
tables report. A checkpoint chosen on the cases it is scored on would make every reported Dice
optimistic, so a case is in exactly one part.

The ids are sorted first and then permuted by a ``numpy.random.Generator`` seeded with
``seed``, so the same ids and seed give the same split on every machine whatever order a
layout scanner returned them in. The permutation is cut train, validation, test, unused in that
order, so a two-part scheme (no validation) keeps the test cases of the same seed. The papers'
splits (docs: the protocol table): Brügger et al. 80 % train / 20 % validation of BraTS 2018,
reported on the online validation set; locally ``fraction:0.8,validation:0.1`` keeps the 80 %
for training and splits the rest into selection and a local test part. Pendse et al. 329 / 40
(``counts:329,40``: the paper's 330 of "370" does not exist), the invertible-residual paper
80 / 20 on BraTS 2020 and 9 / 1 subjects on iSeg (``counts:9,1``), both without selection.

The split file is JSON::

    {"format": 2, "seed": 0, "scheme": "fraction:0.8,validation:0.1",
     "train": [...], "validation": [...], "test": [...], "unused": [...], "excluded_unlabelled": [...]}

``unused`` lists labelled cases that a ``counts`` scheme left out of every part.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revunet.atomic import write_text_atomic
from revunet.catalog import SPLIT_PARTS

SPLIT_FORMAT = 2
# The parts of a split file, in the order the seeded permutation is cut.
ROLES = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitScheme:
    """How many cases each part gets: a training ``fraction`` (with an optional ``validation``
    fraction; the test part is the rest), or explicit ``counts`` (train, test) or (train, validation, test)."""

    fraction: float | None = None
    counts: tuple[int, ...] | None = None
    validation: float | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.counts is None):
            raise ValueError("a split scheme needs exactly one of a training fraction or counts")
        if self.fraction is not None:
            if not 0 < self.fraction < 1:
                raise ValueError(f"the training fraction must lie strictly between 0 and 1, got {self.fraction}")
            if self.validation is not None and not 0 < self.validation < 1 - self.fraction:
                raise ValueError(
                    f"the validation fraction must lie strictly between 0 and {1 - self.fraction:g} "
                    f"(what training leaves, less a test part), got {self.validation}"
                )
        if self.counts is not None:
            if self.validation is not None:
                raise ValueError("with counts, give the validation count as the middle of three counts")
            if len(self.counts) not in (2, 3) or any(not isinstance(c, (int, np.integer)) for c in self.counts):
                raise ValueError(f"counts must be two or three integers (train, [validation,] test), got {self.counts}")
            if any(c < 1 for c in self.counts):
                raise ValueError(f"every count must be at least 1, got {self.counts}")

    def __str__(self) -> str:
        if self.fraction is not None:
            validation = f",validation:{self.validation:g}" if self.validation is not None else ""
            return f"fraction:{self.fraction:g}{validation}"
        assert self.counts is not None
        return "counts:" + ",".join(str(c) for c in self.counts)

    @property
    def selects(self) -> bool:
        """Whether the scheme has a validation part (a checkpoint is chosen on it)."""
        return self.validation is not None or (self.counts is not None and len(self.counts) == 3)

    def sizes(self, n: int) -> tuple[int, int, int]:
        """Number of training, validation and test cases out of ``n``."""
        if self.counts is not None:
            train, validation, test = self.counts if len(self.counts) == 3 else (self.counts[0], 0, self.counts[1])
            if train + validation + test > n:
                raise ValueError(
                    f"split {self} needs {train + validation + test} labelled cases but only {n} are available"
                )
            return train, validation, test
        assert self.fraction is not None
        train = math.floor(self.fraction * n + 0.5)
        validation = 0 if self.validation is None else math.floor(self.validation * n + 0.5)
        test = n - train - validation
        if train < 1 or test < 1 or (self.validation is not None and validation < 1):
            raise ValueError(
                f"split {self} of {n} cases leaves an empty part ({train} train, {validation} validation, {test} test)"
            )
        return train, validation, test


def parse_scheme(scheme: str | float | Sequence[int] | SplitScheme) -> SplitScheme:
    """``"fraction:0.8"``, ``"fraction:0.8,validation:0.1"``, ``"counts:329,40"``, ``"counts:228,28,29"``,
    ``0.8`` or ``(329, 40)`` → :class:`SplitScheme`."""
    if isinstance(scheme, SplitScheme):
        return scheme
    if isinstance(scheme, (int, float)) and not isinstance(scheme, bool):
        return SplitScheme(fraction=float(scheme))
    if isinstance(scheme, str):
        parsed = _parse_text(scheme)
        if parsed is None:
            raise ValueError(
                "split scheme must look like 'fraction:0.8', 'fraction:0.8,validation:0.1', 'counts:329,40' "
                f"or 'counts:228,28,29', got {scheme!r}"
            )
        return parsed
    return SplitScheme(counts=tuple(int(c) for c in scheme))


def _parse_text(text: str) -> SplitScheme | None:
    """The scheme a text names, or None when it names none (its numbers are checked by the scheme)."""
    kind, _, value = text.partition(":")
    if kind == "counts":
        try:
            counts = tuple(int(part) for part in value.split(","))
        except ValueError:
            return None
        return SplitScheme(counts=counts) if len(counts) in (2, 3) else None
    if kind != "fraction":
        return None
    fraction_text, _, rest = value.partition(",")
    name, _, validation_text = rest.partition(":")
    if rest and name != "validation":
        return None
    try:
        fraction = float(fraction_text)
        validation = float(validation_text) if rest else None
    except ValueError:
        return None
    return SplitScheme(fraction=fraction, validation=validation)


def make_split(
    case_ids: Iterable[str], scheme: str | float | Sequence[int] | SplitScheme, seed: int
) -> dict[str, list[str]]:
    """Split ``case_ids`` into ``{"train", "validation", "test", "unused"}`` lists.

    Deterministic in (set of ids, scheme, seed); each list is sorted. ``validation`` is empty for
    a scheme without selection; ``unused`` is non-empty only when counts add up to fewer than the cases.
    """
    ids = [str(case_id) for case_id in case_ids]
    duplicates = sorted(case_id for case_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''}")
    ordered = sorted(ids)
    sizes = parse_scheme(scheme).sizes(len(ordered))
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in permutation]
    parts: dict[str, list[str]] = {}
    start = 0
    for role, size in zip(ROLES, sizes):
        parts[role] = sorted(shuffled[start : start + size])
        start += size
    parts["unused"] = sorted(shuffled[start:])
    return parts


@dataclass(frozen=True)
class Split:
    """A split file read back: its three parts and how it was made."""

    train: list[str]
    validation: list[str]
    test: list[str]
    seed: int
    scheme: str
    unused: list[str] = field(default_factory=list)
    excluded_unlabelled: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[str]:
        """Case ids of one part (:data:`revunet.catalog.SPLIT_PARTS`): ``train``, ``validation``,
        ``test``, or ``all``: every labelled case the split lists (train, validation, test, unused), each once."""
        parts = {
            "train": self.train,
            "validation": self.validation,
            "test": self.test,
            "all": [*self.train, *self.validation, *self.test, *self.unused],
        }
        if name not in parts:
            raise ValueError(f"unknown split part {name!r}; expected one of {SPLIT_PARTS}")
        return [str(case_id) for case_id in parts[name]]


def split_document(
    parts: Mapping[str, list[str]],
    scheme: str | float | Sequence[int] | SplitScheme,
    seed: int,
    excluded_unlabelled: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON object written for a split (see the module docstring)."""
    return {
        "format": SPLIT_FORMAT,
        "seed": int(seed),
        "scheme": str(parse_scheme(scheme)),
        **{role: list(parts.get(role, [])) for role in ROLES},
        "unused": list(parts.get("unused", [])),
        "excluded_unlabelled": sorted(excluded_unlabelled),
    }


def write_split(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Write a split document atomically."""
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def read_split(path: str | os.PathLike[str]) -> Split:
    """Read a split file written by ``revunet split``; a file of the older two-part format (one
    held-out list that both chose and reported) is refused, so it cannot leak into a new run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != SPLIT_FORMAT:
            raise ValueError(
                f"split format {data.get('format', 1)}, expected {SPLIT_FORMAT} (train / validation / test); "
                "draw it again with `revunet split`"
            )
        return Split(
            train=list(data["train"]),
            validation=list(data["validation"]),
            test=list(data["test"]),
            seed=int(data["seed"]),
            scheme=str(data["scheme"]),
            unused=list(data.get("unused", [])),
            excluded_unlabelled=list(data.get("excluded_unlabelled", [])),
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"no split file at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a split file written by `revunet split` ({error})") from None
