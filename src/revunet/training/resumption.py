"""Resume or start over: a run continues from ``last.pt`` exactly when nothing it depends on changed.

What a run depends on: its :class:`~revunet.experiments.recipe.Experiment` and its inputs, the
split file and the preprocessed files of every case the split names. ``last.pt`` stores their
fingerprint (:func:`input_fingerprint`: size, modification time and a BLAKE2 digest per file).
A rerun compares: a file whose size and time are unchanged keeps its digest unread, any other
is read again, so data copied to a new scratch folder (new times, same bytes) still resumes,
while re-preprocessed data (new bytes) starts over. Every decision is said in the log.

Under torchrun each process fingerprints its share of the cases before the process group
forms (:func:`own_share`), and rank 0 decides on the gathered shares (:func:`merged`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revunet.data.preprocess import meta_path, npz_path
from revunet.data.splits import read_split
from revunet.experiments.recipe import Experiment, read_experiment
from revunet.training.distributed import Processes
from revunet.training.errors import TrainError
from revunet.training.state import OUTPUT_FILES, TrainingState, stored_inputs

Fingerprint = dict[str, Any]  # {"split": entry, "cases": {case: {"npz": entry, "json": entry}}}
FileEntry = list[Any]  # [size, mtime_ns, digest]


def _file_entry(path: Path, previous: Sequence[Any] | None) -> FileEntry:
    status = path.stat()
    if previous is not None and list(previous[:2]) == [status.st_size, status.st_mtime_ns]:
        return list(previous)
    with open(path, "rb") as stream:
        digest = hashlib.file_digest(stream, "blake2b").hexdigest()
    return [status.st_size, status.st_mtime_ns, digest]


def input_fingerprint(
    preprocessed: Path, split_path: Path, previous: Mapping[str, Any] | None = None, share: tuple[int, int] = (0, 1)
) -> Fingerprint:
    """The fingerprint of the split file and of the preprocessed files of the cases it names.

    ``previous`` (an earlier fingerprint) lets unchanged files skip their digest. ``share``
    ``(rank, world_size)`` keeps only the cases rank, rank + W, ... of the sorted list.
    """
    rank, world_size = share
    previous = previous or {}
    old_cases = previous.get("cases", {})
    try:
        split = read_split(split_path)
        cases: dict[str, dict[str, FileEntry]] = {}
        for case in sorted({*split.train, *split.validation})[rank::world_size]:
            old = old_cases.get(case, {})
            cases[case] = {
                "npz": _file_entry(npz_path(preprocessed, case), old.get("npz")),
                "json": _file_entry(meta_path(preprocessed, case), old.get("json")),
            }
    except (FileNotFoundError, ValueError) as error:
        raise TrainError(str(error)) from None
    return {"split": _file_entry(split_path, previous.get("split")), "cases": cases}


def own_share(out: Path, preprocessed: Path, split_path: Path, restart: bool, processes: Processes) -> Fingerprint:
    """This process's share of the inputs' fingerprint, taken before the process group forms.

    Why: hashing a split's preprocessed files (tens of GB on real data) takes minutes on
    cluster storage. Rank 0 doing it alone inside the process group kept the other ranks
    waiting in a collective until NCCL's timeout ended the job. So each rank hashes a W-th
    of the cases before joining: whoever finishes first waits in the group's rendezvous
    (bounded by :func:`~revunet.training.distributed.process_group_timeout`) for a W-th of
    the reading at most, and gathering the shares afterwards takes no time.
    ``last.pt``'s fingerprint spares unchanged files their digest (not on ``--restart``).
    """
    previous = None if restart else stored_inputs(out / "last.pt")
    return input_fingerprint(preprocessed, split_path, previous, (processes.rank, processes.world_size))


def merged(shares: Sequence[Fingerprint]) -> Fingerprint:
    """One fingerprint from every rank's share: the one a single process takes."""
    cases = {case: entry for share in shares for case, entry in share["cases"].items()}
    return {"split": shares[0]["split"], "cases": dict(sorted(cases.items()))}


def changed_inputs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, by the bytes (digests), in words."""
    changes = []
    if old["split"][2] != new["split"][2]:
        changes.append("the split file")
    old_cases, new_cases = old["cases"], new["cases"]
    added = sorted(set(new_cases) - set(old_cases))
    removed = sorted(set(old_cases) - set(new_cases))
    edited = sorted(
        case
        for case in set(old_cases) & set(new_cases)
        if any(old_cases[case][kind][2] != new_cases[case][kind][2] for kind in ("npz", "json"))
    )
    for words, cases in (("new cases", added), ("cases left out", removed), ("changed cases", edited)):
        if cases:
            shown = ", ".join(cases[:3]) + (f" (+{len(cases) - 3} more)" if len(cases) > 3 else "")
            changes.append(f"{words}: {shown}")
    return changes


def _differences(old: Experiment, new: Experiment) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


@dataclass(frozen=True)
class Decision:
    """Resume from ``state`` (None: start afresh) and why (a line for the log, or empty)."""

    state: TrainingState | None
    message: str


def _load(out: Path) -> tuple[TrainingState | None, str | None]:
    """``last.pt`` if readable; an unreadable one is moved aside (and said why)."""
    last = out / "last.pt"
    if not last.is_file():
        if (out / "summary.json").is_file():
            return None, "summary.json says the run finished but last.pt is missing"
        return None, None
    try:
        return TrainingState.load(last), None
    except (ValueError, FileNotFoundError) as error:
        aside = last.with_name("last.pt.unreadable")
        last.replace(aside)
        return None, f"{error}; moved it to {aside.name}"


def _problem(out: Path, state: TrainingState | None, experiment: Experiment, inputs: Fingerprint) -> str | None:
    """Why ``state`` (or the folder's ``experiment.json``) cannot be continued, or None."""
    previous = state.experiment if state is not None else None
    if previous is None and (out / "experiment.json").is_file():
        previous = read_experiment(out / "experiment.json")  # a run stopped before its first checkpoint
    if previous is not None and previous != experiment:
        return f"the experiment changed (keys: {', '.join(_differences(previous, experiment))})"
    if state is not None and state.inputs is not None and (changes := changed_inputs(state.inputs, inputs)):
        return f"the inputs changed ({'; '.join(changes)})"
    return None


def decide(out: Path, experiment: Experiment, inputs: Fingerprint, restart: bool) -> Decision:
    """Resume, confirm a finished run, or start over (deleting the old training outputs); rank 0 only.

    ``inputs`` is the inputs' current fingerprint (:func:`own_share`, :func:`merged`).
    """
    state, problem = (None, "--restart") if restart else _load(out)
    problem = problem or _problem(out, state, experiment, inputs)
    if problem is not None:
        discard(out)
        return Decision(None, f"{out}: {problem}: starting over")
    return Decision(state, "")


def discard(out: Path) -> None:
    """Delete a run folder's training outputs (``last.pt``, ``best.pt``, ``log.csv``, ``summary.json``)."""
    for name in ("last.pt", *OUTPUT_FILES):
        (out / name).unlink(missing_ok=True)
