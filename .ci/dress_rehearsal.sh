#!/usr/bin/env bash
# The dress rehearsal of the paper preset's data stages (docs/real-data.md): stand-ins
# of the official training releases (`revunet synth --release`: real case counts, file names and
# quirks, 8 mm voxels) under the folder names config.yaml's paper preset expects in data_root,
# then `snakemake --until split` on them in a throw-away working folder, then checks that every
# split file of the paper preset was written and that its parts add up to the case table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
repo=$PWD
tmp=$(mktemp -d "${TMPDIR:-/tmp}/revunet-rehearsal.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS
for layout in brats2020 brats2018 iseg; do
    revunet synth --layout "$layout" --release --out "$tmp/data"
done
synthesised=$SECONDS
# The results go to $tmp/work/results, never to the repository's results/.
snakemake --snakefile "$repo/Snakefile" --directory "$tmp/work" --configfile "$repo/config.yaml" \
    --cores 2 --config preset=paper "data_root=$tmp/data" --until split \
    > "$tmp/snakemake.log" 2>&1 || { tail -n 60 "$tmp/snakemake.log"; exit 1; }
echo "dress rehearsal: releases written in $((synthesised - started)) s," \
    "snakemake --until split in $((SECONDS - synthesised)) s, $((SECONDS - started)) s in all"
python - "$repo" "$tmp/data" "$tmp/work/results/data" <<'PY'
import json
import os
import sys
from pathlib import Path

import pandas as pd

from revunet.experiments.config_files import check_config, read_workflow_config
from revunet.experiments.plan import plan_workflow

repo, data_root, results = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
# The plan Snakemake made: the same config, preset and data_root, read the way the Snakefile reads them.
config = read_workflow_config(repo / "config.yaml", [repo / "config.yaml"], {"preset": "paper", "data_root": data_root})
plan = plan_workflow(check_config(config, repo / "workflow" / "schemas" / "config.schema.yaml"))
releases = {"MICCAI_BraTS2020_TrainingData": 369, "MICCAI_BraTS_2018_Data_Training": 285, "iSeg-2019-Training": 10}
needed = sorted({(experiment.dataset, experiment.split) for experiment in plan.experiments.values()})
for name, split in needed:
    dataset = plan.datasets[name]
    cases = pd.read_csv(results / name / "cases.csv", dtype=str, keep_default_na=False)
    expected = releases[os.path.basename(str(dataset.path).rstrip("/"))] - len(dataset.exclude_cases)
    assert len(cases) == (cases["label"] != "").sum() == expected, f"{name}: {len(cases)} cases, expected {expected}"
    quirk = cases.loc[cases["case_id"] == "BraTS20_Training_355", "label"].tolist()
    assert all(Path(label).name == "W39_1998.09.19_Segm.nii" for label in quirk), f"{name}: case 355's label {quirk}"
    document = json.loads((results / name / "splits" / f"{split}.json").read_text())
    parts = {key: len(value) for key, value in document.items() if isinstance(value, list)}
    assert sum(parts.values()) == len(cases), f"{name}/{split}: parts {parts} do not add up to {len(cases)} cases"
    counts = dataset.splits[split].counts
    sizes = sorted(size for key, size in parts.items() if size and key not in ("unused", "excluded_unlabelled"))
    assert counts is None or sizes == sorted(counts), f"{name}/{split}: parts {parts}, config counts {counts}"
    print(f"{name}/{split} ({dataset.splits[split].scheme()}): {len(cases)} cases -> {parts}")
print(f"dress rehearsal: the {len(needed)} splits the paper experiments use are in place and add up")
PY
