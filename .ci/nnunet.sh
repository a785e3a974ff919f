#!/usr/bin/env bash
# The nnU-Net v2 integration (docs/nnunet.md): install the `nnunet` extra into .venv with the
# constraints (torch stays at the pinned build), check the dependency tree, report the versions,
# then run the tests marked `nnunet`, nnU-Net's own pipeline end to end on CPU among them.
# About 2 minutes on 2 cores; needs .venv from `.ci/setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
pinned=$(sed -n 's/^torch==//p' constraints.txt)
python -m pip install --quiet -c constraints.txt -e ".[nnunet]"
python -m pip check
python - "$pinned" <<'PY'
import sys
from importlib.metadata import version

import torch

packages = ("nnunetv2", "dynamic-network-architectures", "batchgeneratorsv2", "acvl-utils", "timm", "torchvision")
print("nnunet extra:", ", ".join(f"{name} {version(name)}" for name in ("torch", "numpy", *packages)))
if not torch.__version__.startswith(sys.argv[1]):
    sys.exit(f"the nnunet extra replaced torch {sys.argv[1]} by {torch.__version__}")
PY
python -m pytest -q -p no:cacheprovider -n 2 -m nnunet --durations 8
