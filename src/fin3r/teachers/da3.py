"""``da3:<folder>[#options]`` teachers: Depth Anything 3 through its own package's network classes.

Install (the registry package ``depth-anything-3`` declares torchvision, xformers, open3d, gradio,
... and ``numpy<2``; its network imports none of them)::

    pip install --no-deps depth-anything-3==0.1.1
    pip install addict omegaconf einops

``scripts/install_teachers.sh`` runs exactly these lines. DA3's high-level API
(``depth_anything_3.api.DepthAnything3``: ``from_pretrained`` and ``inference``) imports
torchvision at import time, so fin3r does not use it: it reads the same folder the API's
``save_pretrained`` writes (``config.json`` = ``{"model_name": <preset>}``, ``model.safetensors`` =
the API object's state dict, keys ``model.<network>``), builds the network exactly as the API does
(``load_config(MODEL_REGISTRY[model_name])`` + ``create_object``, the package's own YAML presets and
classes) and loads the weights strictly. Nothing is downloaded.

Preprocessing follows DA3's input processor (``upper_bound_resize``): the long side to
``process_res`` (504), each side rounded to the nearest multiple of 14, ImageNet normalisation
(one resize here -- area when shrinking, bicubic when enlarging -- where DA3 resizes the uint8
image twice with OpenCV). The depth is resized back to the input (bilinear); sky pixels (DA3's
sky head, ``sky >= 0.3`` as in DA3's own sky handling) are not labelled.

What the label is known up to (``depth_kind``), by preset family:

- ``da3mono-*``: relative depth. fin3r declares it ``"affine"`` (depth up to scale *and* shift):
  the weaker assumption, under which the loss's scale + shift fit is right whether or not the
  model's depth carries a shift.
- ``da3metric-*``: depth in metres for a camera of focal 300 px at the network's input; metric
  with the focal: ``depth * f / 300`` (DA3's ``apply_metric_scaling``). With ``#focal=<px>`` (the
  labelled image's focal in pixels) the label is ``"metric"``; without it the focal is unknown
  and the label is ``"scale"``.
- ``da3-*`` (any-view) single-view: depth up to scale (``"scale"``).
Nested presets (``da3nested-*``, two networks in one) are refused: not a monocular teacher.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.data.views import DEPTH_KINDS
from fin3r.errors import CheckpointError, Fin3rError
from fin3r.teachers.base import Teacher, TeacherOutput
from fin3r.teachers.spec import parse_options, split_path_options

__all__ = ["DA3Teacher", "da3_teacher_from_spec", "da3_input_size", "da3_depth_kind", "DA3_INSTALL"]

DA3_INSTALL = "pip install --no-deps depth-anything-3==0.1.1 && pip install addict omegaconf einops"
DA3_PATCH = 14
DA3_METRIC_FOCAL = 300.0  # DA3's apply_metric_scaling: metric depth = output * focal / 300
SKY_THRESHOLD = 0.3  # DA3's compute_sky_mask: non-sky where sky < 0.3


def da3_input_size(height: int, width: int, process_res: int = 504) -> tuple[int, int]:
    """DA3's ``upper_bound_resize``: long side to ``process_res`` (sides rounded), then each side to
    the nearest multiple of 14 (ties upward)."""
    scale = process_res / float(max(height, width))
    h, w = (height, width) if max(height, width) == process_res else (max(1, round(height * scale)), max(1, round(width * scale)))

    def nearest(x: int) -> int:
        down = (x // DA3_PATCH) * DA3_PATCH
        up = down + DA3_PATCH
        return max(1, up if abs(up - x) <= abs(x - down) else down)

    return nearest(h), nearest(w)


def da3_depth_kind(model_name: str, focal_known: bool) -> str:
    if model_name.startswith("da3nested"):
        raise CheckpointError(f"da3 teacher: {model_name!r} is a nested (any-view + metric) preset, not a monocular "
                              "teacher; use a da3mono-* or da3metric-* folder")
    if model_name.startswith("da3mono"):
        return "affine"
    if model_name.startswith("da3metric"):
        return "metric" if focal_known else "scale"
    return "scale"


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number")
    return value


def _process_res(text: str) -> int:
    value = int(text)
    if not DA3_PATCH <= value <= 4096:
        raise ValueError(f"must be in {DA3_PATCH}..4096")
    return value


def _kind(text: str) -> str:
    if text not in DEPTH_KINDS:
        raise ValueError(f"must be one of {DEPTH_KINDS}")
    return text


DA3_OPTIONS = {"process_res": _process_res, "focal": _positive_float, "kind": _kind}


class DA3Teacher(Teacher):
    """Depth Anything 3 from a local folder (see the module docstring).

    Args:
        folder: what DA3's ``save_pretrained`` writes (``config.json``, ``model.safetensors``).
        process_res: the network input's long side (DA3's default 504).
        focal: the labelled images' focal length in pixels (metric presets: makes the label metric).
        depth_kind: override the kind the preset implies.
        device: where the network runs.
    """

    def __init__(self, folder: str | Path, process_res: int = 504, focal: float | None = None,
                 depth_kind: str | None = None, device: str | torch.device = "cpu"):
        try:
            from depth_anything_3.cfg import create_object, load_config
            from depth_anything_3.registry import MODEL_REGISTRY
        except ImportError as e:
            raise Fin3rError(f"da3:<folder> teachers need Depth Anything 3's package ({e}): {DA3_INSTALL}") from None
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise CheckpointError(f"da3 teacher: {folder} is not a saved Depth Anything 3 model "
                                  "(needs config.json and model.safetensors)")
        try:
            model_name = json.loads(config_path.read_text())["model_name"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"da3 teacher: {config_path}: no model_name ({type(e).__name__}: {e})") from None
        if not isinstance(model_name, str) or model_name not in MODEL_REGISTRY:
            raise CheckpointError(f"da3 teacher: {config_path}: unknown preset {model_name!r} "
                                  f"(this depth-anything-3 knows {sorted(MODEL_REGISTRY)})")
        kind = depth_kind or da3_depth_kind(model_name, focal is not None)
        try:
            state = load_file(str(weights_path))
        except Exception as e:  # safetensors raises several types for corrupt files
            raise CheckpointError(f"da3 teacher: {weights_path} is not a readable safetensors file ({e})") from None
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
        self.model = create_object(load_config(MODEL_REGISTRY[model_name]))
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"da3 teacher: {weights_path} does not fit the {model_name} network: "
                                  f"{str(e).splitlines()[0]}") from None
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        self.model_name, self.process_res, self.focal = model_name, int(process_res), focal
        self.depth_kind = kind
        self.name = f"da3:{folder.resolve().name}"
        try:
            from importlib.metadata import version

            self.version = f"depth-anything-3-{version('depth-anything-3')}/{model_name}"
        except Exception:
            self.version = model_name
        self.folder = folder

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(da3={"folder": str(self.folder), "model_name": self.model_name, "process_res": self.process_res,
                         "focal": self.focal})
        return meta

    def _predict(self, img: Tensor, **_: Any) -> TeacherOutput:
        B, _, H, W = img.shape
        h, w = da3_input_size(H, W, self.process_res)
        x = img.to(self.device)
        if (h, w) != (H, W):
            shrink = h * w < H * W
            x = F.interpolate(x, size=(h, w), mode="area" if shrink else "bicubic",
                              **({} if shrink else {"align_corners": False})).clamp(0, 1)
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
        out = self.model(((x - mean) / std)[:, None])  # (B, N=1, 3, h, w): one view per image
        depth = out["depth"][:, 0].float()
        if self.focal is not None and self.model_name.startswith("da3metric"):
            depth = depth * (self.focal * w / W) / DA3_METRIC_FOCAL
        depth = F.interpolate(depth[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        mask = torch.isfinite(depth) & (depth > 0)
        if "sky" in out:
            sky = F.interpolate(out["sky"][:, :1].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
            mask &= sky < SKY_THRESHOLD
        depth = torch.where(mask, depth, torch.zeros_like(depth))
        return TeacherOutput(depth.cpu(), mask.cpu(), self.depth_kind)


def da3_teacher_from_spec(rest: str, device: str | torch.device = "cpu") -> DA3Teacher:
    """``"<folder>[#process_res=504,focal=<px>,kind=<depth_kind>]"``."""
    folder, opts = split_path_options(rest, "da3")
    o = parse_options(opts, DA3_OPTIONS, "da3")
    return DA3Teacher(folder, process_res=o.get("process_res", 504), focal=o.get("focal"),
                      depth_kind=o.get("kind"), device=device)
