"""Seeded train / held-out splits that do not depend on how the cases were listed.

The ids are sorted first and then permuted by a ``numpy.random.Generator`` seeded with
``seed``, so the same ids and seed give the same split on every machine whatever order a
layout scanner returned them in. The papers' splits: Brügger et al. 80 % / 20 %
(``fraction:0.8``), Pendse et al. 330 / 40 of BraTS 2020 (``counts:330,40``), the
invertible-U-Net paper 80 / 20 on BraTS and 9 / 1 subjects on iSeg (``counts:9,1``).

The split file is JSON::

    {"seed": 0, "scheme": "fraction:0.8", "held_out": "validation",
     "train": [...], "validation": [...], "unused": [...], "excluded_unlabelled": [...]}

``held_out`` names the key of the held-out list: ``"validation"`` (default) or ``"test"``.
``unused`` lists labelled cases that a ``counts`` scheme left out of both parts.
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

HELD_OUT_NAMES = ("validation", "test")


@dataclass(frozen=True)
class SplitScheme:
    """Either a training fraction (the rest is held out) or explicit (train, held-out) counts."""

    fraction: float | None = None
    counts: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.counts is None):
            raise ValueError("a split scheme needs exactly one of a training fraction or (train, held-out) counts")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise ValueError(f"the training fraction must lie strictly between 0 and 1, got {self.fraction}")
        if self.counts is not None:
            if len(self.counts) != 2 or any(not isinstance(c, (int, np.integer)) for c in self.counts):
                raise ValueError(f"counts must be two integers (train, held-out), got {self.counts}")
            if any(c < 1 for c in self.counts):
                raise ValueError(f"both counts must be at least 1, got {self.counts}")

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"fraction:{self.fraction:g}"
        assert self.counts is not None
        return f"counts:{self.counts[0]},{self.counts[1]}"

    def sizes(self, n: int) -> tuple[int, int]:
        """Number of training and held-out cases out of ``n``."""
        if self.counts is not None:
            train, held = self.counts
            if train + held > n:
                raise ValueError(f"split {self} needs {train + held} labelled cases but only {n} are available")
            return train, held
        assert self.fraction is not None
        train = math.floor(self.fraction * n + 0.5)
        if train < 1 or train > n - 1:
            raise ValueError(f"split {self} of {n} cases leaves an empty part ({train} train, {n - train} held out)")
        return train, n - train


def parse_scheme(scheme: str | float | Sequence[int] | SplitScheme) -> SplitScheme:
    """``"fraction:0.8"``, ``"counts:330,40"``, ``0.8`` or ``(330, 40)`` → :class:`SplitScheme`."""
    if isinstance(scheme, SplitScheme):
        return scheme
    if isinstance(scheme, (int, float)) and not isinstance(scheme, bool):
        return SplitScheme(fraction=float(scheme))
    if isinstance(scheme, str):
        kind, _, value = scheme.partition(":")
        try:
            numbers = [float(part) if kind == "fraction" else int(part) for part in value.split(",")]
        except ValueError:
            numbers = []
        if kind == "fraction" and len(numbers) == 1:
            return SplitScheme(fraction=numbers[0])
        if kind == "counts" and len(numbers) == 2:
            return SplitScheme(counts=(int(numbers[0]), int(numbers[1])))
        raise ValueError(f"split scheme must look like 'fraction:0.8' or 'counts:330,40', got {scheme!r}")
    return SplitScheme(counts=tuple(scheme))  # type: ignore[arg-type]


def make_split(
    case_ids: Iterable[str],
    scheme: str | float | Sequence[int] | SplitScheme,
    seed: int,
    held_out_name: str = "validation",
) -> dict[str, list[str]]:
    """Split ``case_ids`` into ``{"train": [...], held_out_name: [...], "unused": [...]}``.

    Deterministic in (set of ids, scheme, seed); each list is sorted. ``unused`` is
    non-empty only when counts add up to fewer than the cases given.
    """
    if held_out_name not in HELD_OUT_NAMES:
        raise ValueError(f"the held-out part is called one of {HELD_OUT_NAMES}, not {held_out_name!r}")
    ids = [str(case_id) for case_id in case_ids]
    duplicates = sorted(case_id for case_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''}")
    ordered = sorted(ids)
    n_train, n_held = parse_scheme(scheme).sizes(len(ordered))
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in permutation]
    return {
        "train": sorted(shuffled[:n_train]),
        held_out_name: sorted(shuffled[n_train : n_train + n_held]),
        "unused": sorted(shuffled[n_train + n_held :]),
    }


@dataclass(frozen=True)
class Split:
    """A split file read back: the two parts and how it was made."""

    train: list[str]
    held_out: list[str]
    held_out_name: str
    seed: int
    scheme: str
    unused: list[str] = field(default_factory=list)
    excluded_unlabelled: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[str]:
        """Case ids of one part (:data:`revunet.catalog.SPLIT_PARTS`): ``held_out``, ``train``, or
        ``all``: every labelled case the split lists (train, held-out, then unused), each once."""
        parts = {"held_out": self.held_out, "train": self.train, "all": [*self.train, *self.held_out, *self.unused]}
        if name not in parts:
            raise ValueError(f"unknown split part {name!r}; expected one of {SPLIT_PARTS}")
        return [str(case_id) for case_id in parts[name]]


def split_document(
    parts: Mapping[str, list[str]],
    scheme: str | float | Sequence[int] | SplitScheme,
    seed: int,
    held_out_name: str = "validation",
    excluded_unlabelled: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON object written for a split (see the module docstring)."""
    return {
        "seed": int(seed),
        "scheme": str(parse_scheme(scheme)),
        "held_out": held_out_name,
        "train": list(parts["train"]),
        held_out_name: list(parts[held_out_name]),
        "unused": list(parts.get("unused", [])),
        "excluded_unlabelled": sorted(excluded_unlabelled),
    }


def write_split(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Write a split document atomically."""
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def read_split(path: str | os.PathLike[str]) -> Split:
    """Read a split file written by ``revunet split``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        name = data.get("held_out", "validation")
        return Split(
            train=list(data["train"]),
            held_out=list(data[name]),
            held_out_name=name,
            seed=int(data["seed"]),
            scheme=str(data["scheme"]),
            unused=list(data.get("unused", [])),
            excluded_unlabelled=list(data.get("excluded_unlabelled", [])),
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"no split file at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a split file written by `revunet split` ({error!r})") from None
