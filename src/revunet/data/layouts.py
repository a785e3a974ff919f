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
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from revunet.catalog import TASK_MODALITIES
from revunet.data.case_table import case_table_columns
from revunet.data.labels import LABEL_MAPS, LAYOUT_TASKS

# How deep find_cases looks through folders that hold a single sub-folder and nothing it recognises.
_WRAPPER_DEPTH = 2
_IGNORED_FOLDERS = {"__MACOSX"}


class LayoutError(ValueError):
    """A folder does not hold a recognised dataset, or one of its cases lacks a file."""


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
    def rows(self, root: Path) -> list[dict[str, str]]:
        """One case-table row per case (unsorted); LayoutError when a case lacks a file."""

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

    def rows(self, root: Path) -> list[dict[str, str]]:
        rows = []
        for folder in self._case_folders(root):
            case_id = folder.name
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
            rows.append(self.row(case_id, files, str(label) if label else ""))
        return rows


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

    def rows(self, root: Path) -> list[dict[str, str]]:
        rows = []
        for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", None)):
            if not (root / images).is_dir():
                continue
            for path in _visible(root / images):
                case_id = _nifti_stem(path.name)
                if case_id is None or not path.is_file():
                    continue
                path = path.resolve()
                files = {modality: f"{path}#{channel}" for modality, channel in MSD_CHANNELS.items()}
                label = ""
                if labels is not None:
                    candidates = [root / labels / f"{case_id}{suffix}" for suffix in (".nii.gz", ".nii")]
                    existing = [p for p in candidates if p.is_file()]
                    if not existing:
                        raise LayoutError(
                            f"case {case_id}: no label file for {path}; expected {candidates[0].resolve()} "
                            "(every imagesTr case has one in the Decathlon)"
                        )
                    label = str(existing[0].resolve())
                rows.append(self.row(case_id, files, label))
        return rows


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

    def rows(self, root: Path) -> list[dict[str, str]]:
        found: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
        for path in _visible(root):
            match = _ISEG_FILE.fullmatch(path.name)
            if match and path.is_file():
                subject, role, _ = match.groups()
                found[subject][role.lower()].append(path.resolve())
        rows = []
        for subject, roles in found.items():
            files: dict[str, str] = {}
            for role in ("t1", "t2", "label"):
                paths = roles.get(role, [])
                if len(paths) > 1:
                    names = ", ".join(p.name for p in paths)
                    raise LayoutError(
                        f"case {subject}: several {role} files in {root.resolve()}: {names}; expected exactly one"
                    )
                if not paths:
                    if role == "label":
                        continue
                    raise LayoutError(
                        f"case {subject}: no {role} file in {root.resolve()}; expected {subject}-{role.upper()}.hdr and "
                        f"{subject}-{role.upper()}.img (or {subject}-{role.upper()}.nii.gz)"
                    )
                path = paths[0]
                if path.suffix.lower() == ".hdr":
                    data_file = next(
                        (path.with_suffix(s) for s in (".img", ".IMG") if path.with_suffix(s).is_file()), None
                    )
                    if data_file is None:
                        raise LayoutError(
                            f"case {subject}: {role} header {path} has no data file; expected {path.with_suffix('.img')}"
                        )
                files[role] = str(path)
            label = files.pop("label", "")
            rows.append(self.row(subject, files, label))
        return rows


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
            label_keys=("seg", "Segm"),  # case 355: W39_1998.09.19_Segm.nii in some copies
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


def find_cases(root: str | os.PathLike[str], layout: str = "auto") -> pd.DataFrame:
    """The case table of a dataset folder: one row per case, sorted by case id, absolute paths.

    Only file names are inspected; :func:`revunet.data.io.load_case` reads and validates a case's volumes.
    """
    name, folder = _resolve(root, layout)
    rows = LAYOUTS[name].rows(folder)
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
