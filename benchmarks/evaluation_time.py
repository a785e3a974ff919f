"""How much time do the lesion-wise metrics add to `revunet evaluate` on a demo-size prediction set?

Writes the demo's synthetic BraTS data (20 subjects, 3 mm, 80 x 80 x 52) into a temporary folder,
makes predictions that are the references moved by one voxel plus scattered false blobs (so that
every region has lesions to match and the whole tumour has false positives), then times, over
every case and region, the whole-volume scores (:func:`region_scores`) and the lesion-wise ones
(:func:`lesion_scores`, given the region's HD95 as `revunet evaluate` does), best of three.

    PYTHONPATH=src python benchmarks/evaluation_time.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from revunet.cli import main
from revunet.data.case_table import read_case_table
from revunet.evaluation.lesions import lesion_scores
from revunet.evaluation.metrics import region_scores
from revunet.tasks import TASKS


def region_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, reference) masks of every case and region of a fresh synthetic dataset."""
    main(["synth", "--task", "brats", "--subjects", "20", "--out", str(root / "raw")])
    main(["cases", str(root / "raw"), "--out", str(root / "cases.csv")])
    rng = np.random.default_rng(0)
    pairs = []
    for label_path in read_case_table(root / "cases.csv")["label"]:
        image = nib.load(label_path)
        reference = np.asarray(image.dataobj).astype(np.uint8).reshape(image.shape[:3])
        prediction = np.roll(reference, 1, axis=0)
        noise = ndimage.gaussian_filter(rng.standard_normal(reference.shape), 1.0)
        prediction[(noise / noise.std() > 4.2) & (prediction == 0)] = 2
        brats = TASKS["brats"]
        pairs += list(zip(brats.region_stack(prediction), brats.region_stack(reference), strict=True))
    return pairs


def best_of_three(score, cases) -> float:
    """Seconds of the fastest of three passes of ``score(*case)`` over every case."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for case in cases:
            score(*case)
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    spacing = (3.0, 3.0, 3.0)
    with tempfile.TemporaryDirectory() as folder:
        pairs = region_pairs(Path(folder))
    whole = best_of_three(lambda p, r: region_scores(p, r, spacing), pairs)
    with_hd95 = [(p, r, region_scores(p, r, spacing)["hd95"]) for p, r in pairs]
    lesion = best_of_three(lambda p, r, h: lesion_scores(p, r, spacing, region_hd95=h), with_hd95)
    print(
        f"{len(pairs)} case x region pairs: whole-volume scores {whole:.3f} s, lesion-wise {lesion:.3f} s "
        f"(+{100 * lesion / whole:.0f} % of the scoring, reading the files not counted)"
    )
