#!/usr/bin/env bash
# Install the monocular teachers' own packages into a Python environment, without the
# dependencies those packages declare but their inference never imports.
#
#   scripts/install_teachers.sh [PYTHON] [moge] [da3]    # PYTHON defaults to python3; both by default
#   scripts/install_teachers.sh .venv/bin/python moge    # MoGe only
#
# MoGe (MoGe-1 and MoGe-2, module `moge`) is on the registry as `dlr-moge` with `dlr-utils3d==1.3`
# (module `utils3d`). Its metadata requires torchvision (which replaces a CPU torch with a
# multi-GB CUDA build), gradio, matplotlib, moderngl and dlr-pipeline; building MoGe-1/MoGe-2 and
# running `MoGeModel.infer` imports none of them: it imports torch, numpy, scipy, opencv and
# huggingface_hub (the second pip line; measured, see docs/data.md "Teachers").
#
# Depth Anything 3 (module `depth_anything_3`) is on the registry as `depth-anything-3`; it
# declares torchvision, xformers, open3d, gradio, moviepy, ... and numpy<2. Its network classes
# and presets import only addict, omegaconf and einops (plus torch, numpy, safetensors, pyyaml);
# its high-level API imports torchvision, which fin3r does not use.
#
# These pip lines are the whole install; CI runs this script.
set -euo pipefail
PY="${1:-python3}"
shift || true
WHICH=("$@")
[ ${#WHICH[@]} -eq 0 ] && WHICH=(moge da3)
for t in "${WHICH[@]}"; do
  case "$t" in
    moge)
      "$PY" -m pip install -q --no-deps "dlr-moge==2.0.0" "dlr-utils3d==1.3"
      "$PY" -m pip install -q "huggingface_hub>=0.23" "scipy>=1.10" "opencv-python-headless>=4.8,<5"
      "$PY" -c "import moge.model.v1, moge.model.v2, utils3d; utils3d.pt.depth_map_to_point_map" \
        || { echo "install_teachers.sh: moge does not import after the install" >&2; exit 1; } ;;
    da3)
      "$PY" -m pip install -q --no-deps "depth-anything-3==0.1.1"
      "$PY" -m pip install -q "addict>=2.4" "omegaconf>=2.3" "einops>=0.7" "safetensors>=0.4"
      "$PY" -c "import depth_anything_3.model, depth_anything_3.cfg, depth_anything_3.registry" 2>/dev/null \
        || { echo "install_teachers.sh: depth_anything_3 does not import after the install" >&2; exit 1; } ;;
    *) echo "install_teachers.sh: unknown teacher '$t' (moge, da3)" >&2; exit 2 ;;
  esac
done
