"""Stand-ins of the official training releases: their case counts, file names and quirks.

``revunet synth --release`` writes what a lab will point the paper preset at, so that its data
stages (case table, splits) can be rehearsed before any GPU time is spent:

* BraTS 2020 (``--layout brats2020``): 369 cases ``BraTS20_Training_001..369`` with
  ``name_mapping.csv`` (HGG except cases 260-335, LGG, as in the release), and the release's
  quirk: case 355's label is ``BraTS20_Training_355/W39_1998.09.19_Segm.nii`` (uncompressed)
  instead of ``BraTS20_Training_355_seg.nii.gz``.
* BraTS 2018 (``--layout brats2018``): 285 cases, 210 in ``HGG/`` and 75 in ``LGG/``, uncompressed
  ``.nii``, case folders named like the release's three families (``Brats18_2013_2_1``,
  ``Brats18_CBICA_AAB_1``, ``Brats18_TCIA01_131_1``): plausible and unique, not the real names.
* iSeg 2019 (``--layout iseg``): its 10 subjects, which the ordinary writer already produces.

The default voxel is the coarsest allowed (8 mm). Subjects are reused from a pool: at 8 mm one
takes about 0.06 s to generate and encode on a busy 2-core machine, so 369 distinct ones took
26 s and 285 took 20 s, too slow for a test that writes both; a release needs names, counts, layout
and quirks, not anatomy variety. A BraTS release is therefore built from a pool of 20 distinct
subjects, the seed's first 12 HGG and first 8 LGG ones (:data:`POOL_SIZES`), written in turn under
the case names of their grade (about 3.5 s a release): each copy's images and label come from one
subject and agree, and name_mapping.csv, the HGG/LGG folders and the tumours agree on the grade
(LGG subjects have no enhancing tumour).
"""

from __future__ import annotations

import gzip
import itertools
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from revunet.data.labels import BRATS_LABELS, check_label_values
from revunet.data.synth.files import NAME_MAPPING_COLUMNS, nifti_bytes, nifti_gz_bytes
from revunet.data.synth.subjects import MAX_SPACING, make_brats_subject
from revunet.data.synth.tumour import case_plan

RELEASE_SPACING = MAX_SPACING
RELEASE_SUBJECTS = {"brats2020": 369, "brats2018": 285, "iseg": 10}
BRATS2020_LGG = range(260, 336)  # case numbers filed as LGG in the release's name_mapping.csv
BRATS2020_QUIRK_CASE = 355
BRATS2020_QUIRK_LABEL = "W39_1998.09.19_Segm.nii"
BRATS2018_GRADES = {"HGG": 210, "LGG": 75}
_ROLES = ("flair", "t1", "t1ce", "t2", "seg")
POOL_SIZES = {"HGG": 12, "LGG": 8}  # distinct subjects of each grade a BraTS release is made of
# The 2013 cases of BraTS 2018: numbers 0-29, these ten filed as LGG, the other twenty as HGG.
_BRATS2013_LGG = (0, 1, 6, 8, 9, 15, 16, 24, 28, 29)
# TCIA sites of each grade and how many of its cases are TCIA ones (the rest: 2013, then CBICA).
_TCIA_SITES = {"HGG": (1, 2, 3, 4, 5, 6, 8), "LGG": (9, 10, 12, 13)}  # no site in both grades
_TCIA_CASES = {"HGG": 102, "LGG": 65}

Encoder = Callable[[np.ndarray, np.ndarray], bytes]


def release_size(layout: str, n_subjects: int | None, spacing: float | None) -> tuple[int, float]:
    """``(subjects, spacing)`` of a release stand-in; ValueError when ``n_subjects`` names another count."""
    expected = RELEASE_SUBJECTS[layout]
    if n_subjects is not None and int(n_subjects) != expected:
        raise ValueError(
            f"the {layout} release has {expected} subjects; --release fixes the count, so drop --subjects {n_subjects}"
        )
    return expected, RELEASE_SPACING if spacing is None else float(spacing)


def brats2020_cases() -> list[tuple[str, str]]:
    """``(case id, grade)`` of the 369 BraTS 2020 training cases, in order."""
    return [(f"BraTS20_Training_{n:03d}", "LGG" if n in BRATS2020_LGG else "HGG") for n in range(1, 370)]


def _cbica_codes(count: int) -> list[str]:
    """``count`` distinct three-letter CBICA codes starting with A (AAB first), spread over the alphabet."""
    pairs = ["A" + a + b for a, b in itertools.product(string.ascii_uppercase, repeat=2)]
    return [pairs[(1 + 7 * k) % len(pairs)] for k in range(count)]  # 7 is prime to 676: all distinct


def _tcia_names(grade: str) -> list[str]:
    """The grade's TCIA case names, dealt round-robin over its sites with distinct numbers per site."""
    sites = _TCIA_SITES[grade]
    return [
        f"Brats18_TCIA{sites[k % len(sites)]:02d}_{(131 + 37 * (k // len(sites))) % 1000:03d}_1"
        for k in range(_TCIA_CASES[grade])
    ]


def brats2018_cases() -> list[tuple[str, str]]:
    """``(case id, grade)`` of 285 BraTS 2018-style training cases: 210 HGG, 75 LGG, sorted within a grade."""
    cases = []
    for grade, total in BRATS2018_GRADES.items():
        numbers = [n for n in range(30) if (n in _BRATS2013_LGG) == (grade == "LGG")]
        names = [f"Brats18_2013_{n}_1" for n in numbers] + _tcia_names(grade)
        names += [f"Brats18_CBICA_{code}_1" for code in _cbica_codes(total - len(names))]
        cases += [(name, grade) for name in sorted(names)]
    return cases


def grade_subjects(cases: list[tuple[str, str]], seed: int, pool: dict[str, int] = POOL_SIZES) -> list[int]:
    """The subject index of each case: the k-th case of a grade gets the seed's (k mod pool)-th subject
    of that grade (the plan that decides a subject's grade is cheap: no subject is made here)."""
    found: dict[str, list[int]] = {grade: [] for grade in pool}
    index = 0
    while any(len(found[grade]) < size for grade, size in pool.items()):
        grade = case_plan(index, seed).grade
        if len(found[grade]) < pool[grade]:
            found[grade].append(index)
        index += 1
    taken = dict.fromkeys(pool, 0)
    indices = []
    for _, grade in cases:
        indices.append(found[grade][taken[grade] % pool[grade]])
        taken[grade] += 1
    return indices


def _case_files(cases: list[tuple[str, str]], seed: int, spacing: float, encode: Encoder) -> Iterator[dict[str, bytes]]:
    """Each case's role -> file bytes; each pool subject is made and encoded once (see :func:`grade_subjects`)."""
    encoded: dict[int, dict[str, bytes]] = {}
    for (case, grade), index in zip(cases, grade_subjects(cases, seed), strict=True):
        if index not in encoded:
            subject = make_brats_subject(index, seed, spacing)
            check_label_values(subject.label, BRATS_LABELS, f"synthetic subject {index} (as {case})")
            assert subject.plan is not None and subject.plan.grade == grade
            volumes = {**subject.images, "seg": subject.label}
            encoded[index] = {role: encode(volumes[role], subject.affine) for role in _ROLES}
        yield encoded[index]


def write_brats2020_release(root: Path, n_subjects: int, spacing: float, seed: int) -> list[str]:
    """The BraTS 2020 training release's 369 cases and name_mapping.csv; names relative to ``root``.

    Files are written plainly, not one by one atomically: ``root`` is a staging folder that is
    renamed into place once complete (:func:`revunet.data.synth.generate.write_dataset`).
    """
    cases = brats2020_cases()
    assert n_subjects == len(cases)
    names = []
    for (case, _), volumes in zip(cases, _case_files(cases, seed, spacing, nifti_gz_bytes), strict=True):
        (root / case).mkdir()
        for role in _ROLES:
            name = f"{case}/{case}_{role}.nii.gz"
            data = volumes[role]
            if role == "seg" and case == f"BraTS20_Training_{BRATS2020_QUIRK_CASE}":
                name, data = f"{case}/{BRATS2020_QUIRK_LABEL}", gzip.decompress(data)
            (root / name).write_bytes(data)
            names.append(name)
    rows = [",".join(NAME_MAPPING_COLUMNS)] + [f"{grade},NA,NA,NA,NA,{case}" for case, grade in cases]
    (root / "name_mapping.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return ["name_mapping.csv", *names]


def write_brats2018_release(root: Path, n_subjects: int, spacing: float, seed: int) -> list[str]:
    """The BraTS 2018 training release's 285 cases under HGG/ and LGG/, uncompressed; names relative to ``root``."""
    cases = brats2018_cases()
    assert n_subjects == len(cases)
    names = []
    for (case, grade), volumes in zip(cases, _case_files(cases, seed, spacing, nifti_bytes), strict=True):
        (root / grade / case).mkdir(parents=True)
        for role in _ROLES:
            name = f"{grade}/{case}/{case}_{role}.nii"
            (root / name).write_bytes(volumes[role])
            names.append(name)
    return names


# layout -> writer of its release; layouts not named here (iseg) use their ordinary writer.
RELEASE_WRITERS = {"brats2020": write_brats2020_release, "brats2018": write_brats2018_release}
