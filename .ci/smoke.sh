#!/usr/bin/env bash
# The smoke run of three paper experiments, one per paper, at their full sizes on synthetic
# 1 mm data (docs/smoke-run.md), then checks that what it wrote says so: every
# table marked SMOKE RUN, BraTS volumes of 240x240x155 in the 2018 layout, the smoke table's
# measured and predicted peaks and seconds per step filled in.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
experiments=${REVUNET_SMOKE_SELECT:-bruegger_rev_1_1_128,invres_iseg_unet3d,pendse_mbconv_deeper}
started=$SECONDS
snakemake --cores 2 --config preset=paper smoke=true "select=[$experiments]" ${REVUNET_SMOKE_CONFIG:+"$REVUNET_SMOKE_CONFIG"} \
    > /tmp/revunet-smoke.log 2>&1 || { tail -n 60 /tmp/revunet-smoke.log; exit 1; }
echo "smoke run of $experiments: $((SECONDS - started)) s"
python - "$experiments" <<'PY'
import glob
import sys

import nibabel as nib
import pandas as pd

names = sys.argv[1].split(",")
tables = sorted(glob.glob("results/smoke/tables/*.md"))
unmarked = [t for t in tables if not open(t, encoding="utf-8").read().startswith("**SMOKE RUN")]
assert tables and not unmarked, f"tables without the smoke mark: {unmarked}"
shape = nib.load(glob.glob("results/smoke/data/brats2018/raw/*/HGG/*/*_t1.nii")[0]).shape
assert shape == (240, 240, 155), shape
smoke = pd.read_csv("results/smoke/tables/smoke.csv").set_index("experiment").loc[names]
print(smoke[["input", "processes", "step_s", "compiled_step_s", "measured_peak_mib", "predicted_peak_mib"]])
for column in ("step_s", "measured_peak_mib", "predicted_peak_mib", "test_mean_dice"):
    assert smoke[column].notna().all(), f"smoke.csv: {column} missing for {smoke.index[smoke[column].isna()].tolist()}"
print("smoke run: every table marked, volumes 240x240x155, peaks and step times recorded")
PY
