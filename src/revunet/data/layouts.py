"""Recognising real dataset folders and listing their cases as a case table.

Accepted layouts (``layout`` names; file names may end in ``.nii`` or ``.nii.gz``):

- ``brats2018``: ``HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``LGG/...`` (validation
  data: ``Brats18_*/`` case folders directly in the root).
- ``brats2020``: ``BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz``
  (``name_mapping.csv`` is ignored; case 355's label may be named ``W39_1998.09.19_Segm.nii``).
- ``brats2021``: ``BraTS2021_NNNNN/BraTS2021_NNNNN_{flair,t1,t1ce,t2,seg}.nii.gz``.
- ``brats2023``: ``BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
- ``msd``: Decathlon Task01, ``imagesTr/BRATS_NNN.nii.gz`` (4-D), ``labelsTr/``, ``imagesTs/``.
- ``iseg``: ``subject-N-{T1,T2,label}.hdr/.img`` Analyze pairs in one folder.

The table's columns and its CSV file are :mod:`revunet.data.case_table`'s; one row is read by
:func:`revunet.data.io.load_case`.

Hidden files (``.DS_Store``, macOS ``._*`` forks) and ``__MACOSX`` folders are ignored. A
folder that holds nothing but one sub-folder (an archive's wrapper) is looked into.
"""

from __future__ import annotations

import os
import re
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from revunet.catalog import TASK_MODALITIES
from revunet.data.case_table import broken_cases_message, case_table_columns
from revunet.data.labels import LABEL_MAPS, LAYOUT_TASKS

# How deep find_cases looks through folders that hold a single sub-folder and nothing it recognises.
_WRAPPER_DEPTH = 2
_IGNORED_FOLDERS = {"__MACOSX"}


class LayoutError(ValueError):
    """A folder does not hold a recognised dataset, or one of its cases lacks a file."""


class LayoutNote(UserWarning):
    """A case read by other than its layout's usual file names (BraTS 2020 case 355's label): a warning."""


class BrokenCasesError(LayoutError):
    """Some cases of a dataset folder lack a file (or have several for one modality).

    ``broken`` holds ``(case id, what is wrong)`` for every such case, not only the first.
    """

    def __init__(self, broken: list[tuple[str, str]], message: str | None = None) -> None:
        super().__init__(message or "\n".join(text for _, text in broken))
        self.broken = broken


# --------------------------------------------------------------------------- file names


def _visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` that are data, sorted: no hidden files, no macOS resource forks."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS)


def _nifti_stem(name: str) -> str | None:
    """``name`` without ``.nii``/``.nii.gz``, or None when it is not a NIfTI file name."""
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _describe(folder: Path, limit: int = 12) -> str:
    """What a folder holds, for error messages: the first entries, folders marked with '/'."""
    entries = sorted(folder.iterdir())
    if not entries:
        return f"{folder} is empty"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return f"{folder} holds {len(entries)} entries: {', '.join(shown)}{more}"


# --------------------------------------------------------------------------- layouts


class Layout(ABC):
    """One on-disk dataset convention: how to recognise it and how to list its cases."""

    name: str
    task: str
    expects: str  # the file names it expects, relative to the root
    example: str  # one concrete example path, relative to the root

    @abstractmethod
    def matches(self, root: Path) -> bool:
        """Whether ``root`` has this layout's tell-tale structure (cheap; reads no volume)."""

    @abstractmethod
    def cases(self, root: Path) -> list[tuple[str, Any]]:
        """``(case id, what case_row needs)`` for every case in ``root``, found by name only."""

    @abstractmethod
    def case_row(self, case_id: str, found: Any) -> dict[str, str]:
        """The case-table row of one case; LayoutError when it lacks a file or has several."""

    def rows(self, root: Path, exclude: Collection[str] = ()) -> list[dict[str, str]]:
        """One case-table row per case not in ``exclude`` (unsorted).

        Every case is looked at on its own, so one that lacks a file does not hide the next: a
        :class:`BrokenCasesError` lists all of them. Excluded cases are never looked into.
        """
        rows, broken = [], []
        for case_id, found in self.cases(root):
            if case_id in exclude:
                continue
            try:
                rows.append(self.case_row(case_id, found))
            except LayoutError as error:
                broken.append((case_id, str(error)))
        if broken:
            raise BrokenCasesError(broken)
        return rows

    def row(self, case_id: str, files: dict[str, str], label: str) -> dict[str, str]:
        return {"case_id": case_id, "task": self.task, "layout": self.name, **files, "label": label}


@dataclass(frozen=True)
class CaseFolderLayout(Layout):
    """BraTS challenge layouts: one folder per case, one file per modality named ``<case><sep><key>``."""

    name: str
    expects: str
    example: str
    folder_pattern: str  # case folders directly in the root
    separator: str
    modality_keys: dict[str, str]  # canonical modality -> key in the file name
    label_keys: tuple[str, ...] = ("seg",)
    group_folders: tuple[str, ...] = ()  # folders whose every sub-folder is a case (BraTS 2018 HGG/LGG)
    task: str = field(default="brats")
    odd_label: bool = False  # a lone NIfTI file of another name is the label (BraTS 2020 case 355)

    def _case_folders(self, root: Path) -> list[Path]:
        folders = [p for p in _visible(root) if p.is_dir() and re.fullmatch(self.folder_pattern, p.name)]
        for group in self.group_folders:
            if (root / group).is_dir():
                folders += [p for p in _visible(root / group) if p.is_dir()]
        return folders

    def matches(self, root: Path) -> bool:
        return any((root / group).is_dir() for group in self.group_folders) or any(
            p.is_dir() and re.fullmatch(self.folder_pattern, p.name) for p in _visible(root)
        )

    def _find(self, case_id: str, stems: list[tuple[str, Path]], keys: tuple[str, ...], what: str) -> Path | None:
        endings = tuple(f"{self.separator}{key}".lower() for key in keys)
        found = [path for stem, path in stems if stem.lower().endswith(endings)]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise LayoutError(
                f"case {case_id}: several {what} files in {found[0].parent}: {names}; expected exactly one"
            )
        return found[0] if found else None

    def cases(self, root: Path) -> list[tuple[str, Any]]:
        return [(folder.name, folder) for folder in self._case_folders(root)]

    def case_row(self, case_id: str, found: Any) -> dict[str, str]:
        folder: Path = found
        stems = [(stem, p.resolve()) for p in _visible(folder) if (stem := _nifti_stem(p.name)) is not None]
        files = {}
        for modality, key in self.modality_keys.items():
            path = self._find(case_id, stems, (key,), modality)
            if path is None:
                raise LayoutError(
                    f"case {case_id}: no {modality} file in {folder.resolve()}; "
                    f"expected {case_id}{self.separator}{key}.nii.gz (or .nii)"
                )
            files[modality] = str(path)
        label = self._find(case_id, stems, self.label_keys, "label")
        if label is None and self.odd_label:
            label = self._odd_label(case_id, folder, [p for _, p in stems if str(p) not in files.values()])
        return self.row(case_id, files, str(label) if label else "")

    def _odd_label(self, case_id: str, folder: Path, others: list[Path]) -> Path | None:
        """With no ``<case>_seg`` file, the case's only other NIfTI file is its label (BraTS 2020 case 355's
        ``W39_1998.09.19_Segm.nii``), with a :class:`LayoutNote`; several are an error, none unlabelled."""
        expected, names = f"{case_id}{self.separator}{self.label_keys[0]}.nii.gz", ", ".join(p.name for p in others)
        where = f"case {case_id}: no {expected} in {folder.resolve()}"
        if len(others) > 1:
            raise LayoutError(f"{where}, and {len(others)} other NIfTI files that could be its label: {names}")
        if others:
            warnings.warn(f"{where}; took the only other NIfTI file, {names}, as its label", LayoutNote, stacklevel=2)
        return others[0] if others else None


# Decathlon Task01 channel order (FLAIR, T1w, T1gd, T2w) as indices of the canonical modalities.
MSD_CHANNELS = {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0}


@dataclass(frozen=True)
class DecathlonLayout(Layout):
    """Medical Segmentation Decathlon Task01_BrainTumour: 4-D images, separate label folder."""

    name: str = "msd"
    task: str = "brats"
    expects: str = (
        "imagesTr/BRATS_NNN.nii.gz (4-D, channels FLAIR, T1w, T1gd, T2w) with labelsTr/BRATS_NNN.nii.gz; "
        "imagesTs/BRATS_NNN.nii.gz unlabelled"
    )
    example: str = "imagesTr/BRATS_001.nii.gz"

    def matches(self, root: Path) -> bool:
        return (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir()

    def cases(self, root: Path) -> list[tuple[str, Any]]:
        found = []
        for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", None)):
            if not (root / images).is_dir():
                continue
            for path in _visible(root / images):
                case_id = _nifti_stem(path.name)
                if case_id is not None and path.is_file():
                    found.append((case_id, (path.resolve(), root / labels if labels else None)))
        return found

    def case_row(self, case_id: str, found: Any) -> dict[str, str]:
        path, labels = found
        files = {modality: f"{path}#{channel}" for modality, channel in MSD_CHANNELS.items()}
        label = ""
        if labels is not None:
            candidates = [labels / f"{case_id}{suffix}" for suffix in (".nii.gz", ".nii")]
            existing = [p for p in candidates if p.is_file()]
            if not existing:
                raise LayoutError(
                    f"case {case_id}: no label file for {path}; expected {candidates[0].resolve()} "
                    "(every imagesTr case has one in the Decathlon)"
                )
            label = str(existing[0].resolve())
        return self.row(case_id, files, label)


_ISEG_FILE = re.compile(r"(subject-\d+)-(t1|t2|label)\.(hdr|nii|nii\.gz)", re.IGNORECASE)


@dataclass(frozen=True)
class ISegLayout(Layout):
    """iSeg 2017/2019: Analyze pairs ``subject-N-{T1,T2,label}.hdr/.img`` in one folder."""

    name: str = "iseg"
    task: str = "iseg"
    expects: str = "subject-N-{T1,T2,label}.hdr/.img (Analyze pairs; test subjects have no label)"
    example: str = "subject-1-T1.hdr"

    def matches(self, root: Path) -> bool:
        return any(_ISEG_FILE.fullmatch(p.name) for p in _visible(root) if p.is_file())

    def cases(self, root: Path) -> list[tuple[str, Any]]:
        found: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
        for path in _visible(root):
            match = _ISEG_FILE.fullmatch(path.name)
            if match and path.is_file():
                subject, role, _ = match.groups()
                found[subject][role.lower()].append(path.resolve())
        return [(subject, (roles, root.resolve())) for subject, roles in found.items()]

    def case_row(self, case_id: str, found: Any) -> dict[str, str]:
        roles, root = found
        files: dict[str, str] = {}
        for role in ("t1", "t2", "label"):
            paths = roles.get(role, [])
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                raise LayoutError(f"case {case_id}: several {role} files in {root}: {names}; expected exactly one")
            if not paths:
                if role == "label":
                    continue
                raise LayoutError(
                    f"case {case_id}: no {role} file in {root}; expected {case_id}-{role.upper()}.hdr and "
                    f"{case_id}-{role.upper()}.img (or {case_id}-{role.upper()}.nii.gz)"
                )
            path = paths[0]
            if path.suffix.lower() == ".hdr":
                data_file = next((path.with_suffix(s) for s in (".img", ".IMG") if path.with_suffix(s).is_file()), None)
                if data_file is None:
                    raise LayoutError(
                        f"case {case_id}: {role} header {path} has no data file; expected {path.with_suffix('.img')}"
                    )
            files[role] = str(path)
        label = files.pop("label", "")
        return self.row(case_id, files, label)


_BRATS_KEYS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        CaseFolderLayout(
            name="brats2018",
            expects="HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz and LGG/... (validation: Brats18_*/ case folders)",
            example="HGG/Brats18_2013_2_1/Brats18_2013_2_1_t1.nii.gz",
            folder_pattern=r"Brats18_.+",
            separator="_",
            modality_keys=_BRATS_KEYS,
            group_folders=("HGG", "LGG"),
        ),
        CaseFolderLayout(
            name="brats2020",
            expects="BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz (optional name_mapping.csv)",
            example="BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz",
            folder_pattern=r"BraTS20_(Training|Validation|Testing)_\d+",
            separator="_",
            modality_keys=_BRATS_KEYS,
            odd_label=True,  # case 355's label is W39_1998.09.19_Segm.nii in the release
        ),
        CaseFolderLayout(
            name="brats2021",
            expects="BraTS2021_NNNNN/BraTS2021_NNNNN_{flair,t1,t1ce,t2,seg}.nii.gz",
            example="BraTS2021_00000/BraTS2021_00000_flair.nii.gz",
            folder_pattern=r"BraTS2021_\d+",
            separator="_",
            modality_keys=_BRATS_KEYS,
        ),
        CaseFolderLayout(
            name="brats2023",
            expects="BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz",
            example="BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz",
            folder_pattern=r"BraTS-GLI-\d+-\d+",
            separator="-",
            modality_keys={"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
        ),
        DecathlonLayout(),
        ISegLayout(),
    )
}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)
assert LAYOUT_NAMES == tuple(LAYOUT_TASKS) == tuple(LABEL_MAPS) and all(
    LAYOUTS[n].task == LAYOUT_TASKS[n] for n in LAYOUT_NAMES
)


def _expectations() -> str:
    lines = [
        f"  {name:<10} {layout.expects}\n  {'':<10} e.g. <root>/{layout.example}" for name, layout in LAYOUTS.items()
    ]
    return "\n".join(lines)


def _resolve(root: str | os.PathLike[str], layout: str) -> tuple[str, Path]:
    """The layout of ``root`` and the folder that holds it (``root`` or a wrapper sub-folder)."""
    if layout != "auto" and layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; expected 'auto' or one of {', '.join(LAYOUT_NAMES)}")
    top = Path(root).expanduser()
    if not top.exists():
        raise FileNotFoundError(f"dataset folder {top} does not exist")
    if not top.is_dir():
        raise NotADirectoryError(f"dataset path {top} is not a folder; expected the folder that holds the cases")
    if not any(top.iterdir()):
        raise LayoutError(
            f"dataset folder {top} is empty; expected one of these layouts (file names relative to the folder):\n"
            f"{_expectations() if layout == 'auto' else _expectations_of(layout)}"
        )
    candidates = LAYOUT_NAMES if layout == "auto" else (layout,)
    folder = top
    searched = []
    for _ in range(_WRAPPER_DEPTH + 1):
        searched.append(folder)
        matching = [name for name in candidates if LAYOUTS[name].matches(folder)]
        if len(matching) == 1:
            return matching[0], folder.resolve()
        if len(matching) > 1:
            raise LayoutError(
                f"{folder} matches several layouts ({', '.join(matching)}); pass the layout explicitly (--layout)"
            )
        subfolders = [p for p in _visible(folder) if p.is_dir()]
        if len(subfolders) != 1:
            break
        folder = subfolders[0]
    looked_for = "any known layout" if layout == "auto" else f"layout {layout}"
    inside = f", and inside its only sub-folder {', '.join(str(p) for p in searched[1:])}" if len(searched) > 1 else ""
    raise LayoutError(
        f"found no dataset in {top}{inside} (looked for {looked_for}).\nExpected file names, relative to the folder:\n"
        f"{_expectations() if layout == 'auto' else _expectations_of(layout)}\nWhat is there: {_describe(top)}"
    )


def _expectations_of(layout: str) -> str:
    spec = LAYOUTS[layout]
    return f"  {layout:<10} {spec.expects}\n  {'':<10} e.g. <root>/{spec.example}"


def detect_layout(root: str | os.PathLike[str]) -> str:
    """The name of the layout ``root`` holds; a LayoutError lists what each layout expects otherwise."""
    return _resolve(root, "auto")[0]


def find_cases(
    root: str | os.PathLike[str],
    layout: str = "auto",
    exclude: Collection[str] = (),
    exclude_key: str | None = None,
) -> pd.DataFrame:
    """The case table of a dataset folder: one row per case, sorted by case id, absolute paths.

    Cases in ``exclude`` are left out (and never looked into); an id that names no case is a
    LayoutError naming ``exclude_key`` (where the ids came from: a config key or an option).
    Every case lacking a file is listed in one :class:`BrokenCasesError`, with the two fixes.
    Only file names are inspected; :func:`revunet.data.io.load_case` reads and validates a case's volumes.
    """
    name, folder = _resolve(root, layout)
    known = {case_id for case_id, _ in LAYOUTS[name].cases(folder)}
    unknown = [case_id for case_id in exclude if case_id not in known]
    if unknown:
        examples = ", ".join(sorted(known)[:3])
        raise LayoutError(
            f"{exclude_key or 'exclude'}: no case {', '.join(map(repr, unknown))} in {folder} "
            f"({len(known)} cases, e.g. {examples}); expected ids from that folder"
        )
    try:
        rows = LAYOUTS[name].rows(folder, set(exclude))
    except BrokenCasesError as error:
        header = f"{len(error.broken)} case(s) of {folder} lack a file"
        message = broken_cases_message(header, error.broken, "put the missing file in place", exclude_key)
        raise BrokenCasesError(error.broken, message) from None
    if not rows and exclude:
        raise LayoutError(f"{exclude_key or 'exclude'}: every case of {folder} is excluded; nothing is left")
    if not rows:
        raise LayoutError(
            f"{folder} looks like layout {name} but holds no case; expected {LAYOUTS[name].expects}, "
            f"e.g. <root>/{LAYOUTS[name].example}. What is there: {_describe(folder)}"
        )
    table = pd.DataFrame(rows, columns=case_table_columns(LAYOUTS[name].task))
    duplicated = table[table["case_id"].duplicated(keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]["case_id"]
        places = [
            row[TASK_MODALITIES[LAYOUTS[name].task][0]] for _, row in duplicated.iterrows() if row["case_id"] == first
        ]
        raise LayoutError(
            f"case id {first} occurs {len(places)} times in {folder}: {', '.join(places)}; case ids must be unique"
        )
    return table.sort_values("case_id", kind="stable").reset_index(drop=True)
