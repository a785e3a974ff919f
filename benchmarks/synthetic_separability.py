"""How well does a voxel-by-voxel classifier segment the synthetic datasets?

The synthetic data must not be separable from intensities alone, otherwise a U-Net has nothing
to learn from context and the experiments compare nothing. This script writes the default
synthetic datasets (``revunet synth`` defaults) into a temporary folder, reads them back from
disk, z-scores each modality over its non-zero voxels (as the pipeline does), and fits a
quadratic discriminant: one multivariate Gaussian over the modality intensities per class,
with class frequencies as priors, trained on the first half of the subjects and tested on the
second half. It prints Dice per region: WT, TC, ET for BraTS; CSF, GM, WM for iSeg.

Run from the repository root:

    .venv/bin/python benchmarks/synthetic_separability.py [--spacing 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from revunet.data.labels import ISEG_DISK_VALUES
from revunet.data.synth.generate import (
    DEFAULT_SPACING,
    DEFAULT_SUBJECTS,
    brats_case_id,
    write_dataset,
)
from revunet.tasks import TASKS


def _read(path: Path) -> np.ndarray:
    data = np.asanyarray(nib.load(path).dataobj)
    return data[..., 0] if data.ndim == 4 else data


def _zscore(images: list[np.ndarray]) -> np.ndarray:
    """(voxels, modalities) features of the brain voxels (non-zero in any modality), each modality z-scored."""
    brain = np.any([image != 0 for image in images], axis=0)
    columns = []
    for image in images:
        values = image[brain].astype(np.float64)
        nonzero = values[values != 0]
        columns.append((values - nonzero.mean()) / nonzero.std())
    return np.stack(columns, axis=1), brain


def load_brats(root: Path, n_subjects: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    cases = []
    for index in range(n_subjects):
        case = brats_case_id(index)
        images = [_read(root / case / f"{case}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
        features, brain = _zscore(images)
        label = _read(root / case / f"{case}_seg.nii.gz").astype(np.uint8)
        cases.append((features, label[brain], label))
    return cases


def load_iseg(root: Path, n_subjects: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    lookup = np.zeros(256, dtype=np.uint8)
    for disk, canonical in ISEG_DISK_VALUES.items():
        lookup[disk] = canonical
    cases = []
    for number in range(1, n_subjects + 1):
        images = [_read(root / f"subject-{number}-{m}.hdr") for m in ("T1", "T2")]
        features, brain = _zscore(images)
        label = lookup[_read(root / f"subject-{number}-label.hdr")]
        cases.append((features, label[brain], label))
    return cases


class GaussianClassifier:
    """Quadratic discriminant analysis: a full-covariance Gaussian per class and class-frequency priors."""

    def fit(self, features: np.ndarray, labels: np.ndarray) -> GaussianClassifier:
        self.classes = np.unique(labels)
        self.terms = []
        for value in self.classes:
            x = features[labels == value]
            mean = x.mean(axis=0)
            covariance = np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])
            inverse = np.linalg.inv(covariance)
            constant = np.log(len(x) / len(features)) - 0.5 * np.linalg.slogdet(covariance)[1]
            self.terms.append((mean, inverse, constant))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        scores = []
        for mean, inverse, constant in self.terms:
            centred = features - mean
            scores.append(constant - 0.5 * np.einsum("ij,jk,ik->i", centred, inverse, centred))
        return self.classes[np.argmax(scores, axis=0)]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(prediction, truth).sum() / total


def evaluate(cases: list, regions, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Per region: (mean Dice over test subjects, Dice pooled over all test voxels)."""
    half = len(cases) // 2
    train, test = cases[:half], cases[half:]
    model = GaussianClassifier().fit(np.concatenate([c[0] for c in train]), np.concatenate([c[1] for c in train]))
    per_subject: dict[str, list[float]] = {name: [] for name in names}
    pooled = {name: [0, 0] for name in names}
    for features, truth, _ in test:
        predicted = regions(model.predict(features))
        actual = regions(truth)
        for name, p, t in zip(names, predicted, actual):
            per_subject[name].append(dice(p, t))
            pooled[name][0] += 2 * int(np.logical_and(p, t).sum())
            pooled[name][1] += int(p.sum() + t.sum())
    return {name: (float(np.mean(per_subject[name])), pooled[name][0] / max(pooled[name][1], 1)) for name in names}


def _print(task: str, results: dict[str, tuple[float, float]]) -> None:
    print(f"{task}: region  mean Dice over test subjects  pooled Dice")
    for name, (mean, pooled) in results.items():
        print(f"{task}: {name:>6}  {mean:26.3f}  {pooled:11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brats-subjects", type=int, default=DEFAULT_SUBJECTS["brats"])
    parser.add_argument("--iseg-subjects", type=int, default=DEFAULT_SUBJECTS["iseg"])
    parser.add_argument("--keep", help="write the datasets here (kept) instead of a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.keep) if args.keep else Path(scratch)
        for task, n, loader, regions, names in (
            ("brats", args.brats_subjects, load_brats, TASKS["brats"].region_stack, ("WT", "TC", "ET")),
            (
                "iseg",
                args.iseg_subjects,
                load_iseg,
                lambda lab: np.stack([lab == 1, lab == 2, lab == 3]),
                ("CSF", "GM", "WM"),
            ),
        ):
            start = time.perf_counter()
            summary = write_dataset(task, out, n, args.spacing, args.seed, force=True)
            print(f"{summary.describe()} (wall {time.perf_counter() - start:.1f} s)")
            _print(task, evaluate(loader(summary.root, n), regions, names))


if __name__ == "__main__":
    main()
