#!/usr/bin/env bash
# Install MoGe's code (MoGe-1 and MoGe-2: the `moge` module) into a Python environment, without
# the dependencies its package declares but its inference never imports.
#
#   scripts/install_moge.sh [PYTHON]      # PYTHON defaults to `python3`; e.g. .venv/bin/python
#
# MoGe is on the package registry as `dlr-moge` (with `dlr-utils3d==1.3`, imported as `utils3d`).
# Its metadata requires torchvision (which replaces a CPU torch with a multi-GB CUDA build), gradio,
# matplotlib, moderngl and dlr-pipeline; building MoGe-1/MoGe-2 and running `MoGeModel.infer`
# imports none of them. What that path does import is measured in docs/data.md ("Teachers") and
# installed by the second line. The two pip lines are the whole install; CI runs this script.
set -euo pipefail
PY="${1:-python3}"
"$PY" -m pip install -q --no-deps "dlr-moge==2.0.0" "dlr-utils3d==1.3"
"$PY" -m pip install -q "huggingface_hub>=0.23" "scipy>=1.10" "opencv-python-headless>=4.8,<5"
"$PY" -c "import moge.model.v1, moge.model.v2, utils3d; utils3d.pt.depth_map_to_point_map" \
  || { echo "install_moge.sh: moge does not import after the install" >&2; exit 1; }
