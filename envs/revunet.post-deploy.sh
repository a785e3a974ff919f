#!/usr/bin/env bash
# Runs once inside the freshly created conda environment (Snakemake's post-deploy hook),
# from the workflow's working directory: install this checkout of revunet without touching
# the dependencies conda resolved. REVUNET_SOURCE overrides where the checkout is.
set -euo pipefail
source_dir=${REVUNET_SOURCE:-$PWD}
if [ ! -f "$source_dir/pyproject.toml" ]; then
    echo "revunet post-deploy: no pyproject.toml in $source_dir; set REVUNET_SOURCE to the revunet checkout" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e "$source_dir"
