"""nnU-Net's ResEnc M / L / XL presets on BraTS-shaped data: their training peak, and the reversible counterpart's.

nnU-Net's own planners (``nnUNetPlannerResEncM``, ``L``, ``XL``) plan a dataset of synthetic
BraTS-like stand-ins (``revunet synth --spacing 1``: 240x240x155 at 1 mm, four modalities),
converted to nnU-Net's raw format and fingerprinted by nnU-Net. For each preset's
``3d_fullres`` configuration the script measures, with the fake-tensor accounting of
``revunet nnunet-plans`` (nnU-Net's loss with deep supervision, SGD, half-precision autocast):

* the preset's own network at its planned patch and batch (beside nnU-Net's published VRAM),
* the reversible counterpart (``ReversibleResEncUNet``) at the same patch and batch,
* the patch and batch ``revunet nnunet-plans --budget-gib 11`` gives the reversible network.

Usage: ``python benchmarks/nnunet_resenc.py --standins DIR --work DIR --out benchmarks/results/nnunet-resenc.csv``
(about a minute on 2 cores, most of it the 11 GiB searches; needs the ``nnunet`` extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

DATASET_ID = 990
PRESETS = {"M": "nnUNetPlannerResEncM", "L": "nnUNetPlannerResEncL", "XL": "nnUNetPlannerResEncXL"}
# nnU-Net's documentation/resenc_presets.md: the VRAM each preset used in its benchmark (GB).
PUBLISHED_VRAM_GB = {"M": 9.1, "L": 22.7, "XL": 36.6}
BUDGET_GIB = 11.0
BRATS2021_CASES = 1251  # the training cases of BraTS 2021 (nnU-Net's Dataset137), on which the presets were benchmarked
CONFIGURATION = "3d_fullres"
GIB = 2**30


def plan(standins: Path, work: Path) -> Path:
    """The stand-ins in nnU-Net's raw format, fingerprinted and planned by each ResEnc preset."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    from revunet.integrations.nnunet.raw import write_raw_dataset

    if not list((work / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*")):
        write_raw_dataset(standins, work / "nnUNet_raw", DATASET_ID, "BraTSStandIns")
    extract_fingerprints([DATASET_ID], num_processes=2, clean=False, show_progress_bar=False)
    stand_for_brats2021(next((work / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*")) / "dataset.json")
    for planner in PRESETS.values():
        plan_experiments([DATASET_ID], planner)
    return next((work / "nnUNet_preprocessed").glob(f"Dataset{DATASET_ID}_*"))


def stand_for_brats2021(dataset_json: Path) -> None:
    """The stand-ins planned as BraTS 2021's training set: ``numTraining`` 1251.

    The planners cap the batch at the dataset's voxels per patch (``numTraining`` times the median
    image); five stand-ins would cap ResEnc L and XL at 3. The fingerprint (spacing, median shape,
    intensities) stays the stand-ins' own.
    """
    content = json.loads(dataset_json.read_text())
    content["numTraining"] = BRATS2021_CASES
    dataset_json.write_text(json.dumps(content, indent=4))


def measure(preprocessed: Path) -> list[dict[str, object]]:
    """One row per preset: planned patch and batch, peaks of the original and reversible networks, 11 GiB sizing."""
    from revunet.integrations.nnunet.plans import read_json, size_plans

    dataset = read_json(preprocessed / "dataset.json", "dataset.json")
    rows = []
    for preset in PRESETS:
        plans = read_json(preprocessed / f"nnUNetResEncUNet{preset}Plans.json", "plans")
        started = time.perf_counter()
        # both networks at the plans' step, and each sized to the budget
        _, (sized,) = size_plans(plans, dataset, int(BUDGET_GIB * GIB), configurations=[CONFIGURATION])
        original = sized.original
        rows.append(
            {
                "preset": preset,
                "patch": "x".join(map(str, original.patch)),
                "batch": original.batch,
                "published_vram_gb": PUBLISHED_VRAM_GB[preset],
                "original_gib": round(sized.original_peak / GIB, 2),
                "reversible_gib": round(sized.reversible_peak_same_patch / GIB, 2),
                "original_at_11gib": _step(sized.original_sized),
                "reversible_at_11gib": _step(sized.sized),
                "reversible_peak_at_11gib": round(sized.sized_peak / GIB, 2),
                "patch_gained_at_11gib": None if sized.patch_gained is None else round(sized.patch_gained, 2),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def _step(step: object) -> str:
    """A step's patch and batch as ``AxBxC/N``, or ``none`` where nothing fits."""
    if step is None:
        return "none"
    return "x".join(map(str, step.patch)) + f"/{step.batch}"  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standins", type=Path, required=True, help="a `revunet synth --spacing 1` BraTS folder")
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net's raw and preprocessed folders go here")
    parser.add_argument("--out", type=Path, required=True, help="the results CSV")
    args = parser.parse_args()
    rows = measure(plan(args.standins, args.work))
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
