"""``hf:<folder>`` teachers: any transformers depth-estimation model saved in a local folder.

Loads ``AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)`` (offline;
needs the optional extra ``fin3r[hf]``), preprocesses as the folder's ``preprocessor_config.json``
says (size, ``keep_aspect_ratio``, ``ensure_multiple_of``, mean/std; defaults: 518 px, multiple of
14, ImageNet statistics), and resizes the prediction back to the input resolution (bilinear).

What the output is known up to (``depth_kind``) is decided from the config, and can be forced
with ``hf:<folder>#kind=<depth_kind>``:

- Depth Anything (v1/v2, ``depth_estimation_type="relative"``) and DPT / MiDaS-style models
  predict *relative inverse depth*: ``disparity = a / z + b`` with unknown ``a > 0`` and ``b``.
  The teacher returns that disparity with ``depth_kind="affine_disparity"`` (see
  :mod:`fin3r.teachers.base`); pixels with disparity <= 0 (infinitely far: sky) are masked out.
- Depth Anything ``depth_estimation_type="metric"``, ZoeDepth, GLPN predict metric depth:
  ``depth_kind="metric"``.
- Depth Pro (``DepthProForDepthEstimation``, ``depthpro:<folder>`` checks the folder is one)
  predicts a canonical inverse depth and, with its FoV head (``use_fov_model``), the horizontal
  field of view; the label is what transformers' ``DepthProImageProcessor.
  post_process_depth_estimation`` returns at the input size: ``1 / clamp(resize(pred * W / f))``
  with ``f = W / 2 / tan(fov / 2)``, i.e. metric depth (``"metric"``). Without the FoV head the
  focal is unknown and the same formula without it is depth up to scale (``"scale"``). Its
  processor resizes to a fixed square (1536 x 1536 for the released model, no aspect kept,
  bilinear without antialiasing) after normalising with mean = std = 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.data.views import DEPTH_KINDS
from fin3r.errors import CheckpointError, Fin3rError, InputError
from fin3r.teachers.base import Teacher, TeacherOutput
from fin3r.teachers.spec import parse_options, parse_size, split_path_options

_METRIC_TYPES = {"zoedepth", "glpn"}
_DISPARITY_TYPES = {"dpt"}


def _kind_from_config(config: Any) -> str:
    model_type = getattr(config, "model_type", "")
    if model_type in ("depth_anything", "prompt_depth_anything"):
        return "metric" if getattr(config, "depth_estimation_type", "relative") == "metric" else "affine_disparity"
    if model_type in _METRIC_TYPES:
        return "metric"
    if model_type == "depth_pro":
        return "metric" if getattr(config, "use_fov_model", False) else "scale"
    if model_type in _DISPARITY_TYPES:
        return "affine_disparity"
    raise Fin3rError(f"hf teacher: cannot tell whether a {model_type!r} model predicts metric depth or relative "
                     "disparity; say so with hf:<folder>#kind=metric|scale|affine|affine_disparity")


def _resize_target(h: int, w: int, size: tuple[int, int], keep_aspect: bool, multiple: int) -> tuple[int, int]:
    """The network input size (the DPT/Depth Anything processor rule: with ``keep_aspect`` the
    scale that changes the image least is used for both sides; sides rounded to ``multiple``)."""
    sh, sw = size[0] / h, size[1] / w
    if keep_aspect:
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh

    def fit(x: float) -> int:
        return max(multiple, int(round(x / multiple)) * multiple)

    return fit(sh * h), fit(sw * w)


class HFDepthTeacher(Teacher):
    """A transformers depth model from a local folder (see the module docstring).

    Args:
        folder: directory with ``config.json`` + weights (+ ``preprocessor_config.json``).
        depth_kind: override the kind inferred from the config.
        size: override the processor's target size (height, width).
        device: where the model runs.
    """

    def __init__(self, folder: str | Path, depth_kind: str | None = None, size: tuple[int, int] | None = None,
                 device: str | torch.device = "cpu", require_model_type: str | None = None):
        try:
            import transformers
            from transformers import AutoModelForDepthEstimation
        except ImportError as e:
            raise Fin3rError("hf:<folder> teachers need transformers: pip install 'fin3r[hf]'") from e
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"hf teacher: {folder} is not a saved transformers model (no config.json)")
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises many types for unreadable folders
            raise CheckpointError(f"hf teacher: cannot load a depth-estimation model from {folder}: {e}") from e
        model_type = getattr(self.model.config, "model_type", "")
        if require_model_type is not None and model_type != require_model_type:
            raise CheckpointError(f"hf teacher: {folder} holds a {model_type!r} model, not {require_model_type!r}")
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.is_depth_pro = model_type == "depth_pro"
        self.depth_kind = depth_kind or _kind_from_config(self.model.config)
        if self.depth_kind not in DEPTH_KINDS:
            raise InputError(f"hf teacher: depth kind {self.depth_kind!r} is not one of {DEPTH_KINDS}")
        proc: dict[str, Any] = {}
        if (folder / "preprocessor_config.json").is_file():
            proc = json.loads((folder / "preprocessor_config.json").read_text())
        s = proc.get("size", {"height": 518, "width": 518})
        if isinstance(s, int):
            s = {"height": s, "width": s}
        self.size = tuple(size) if size else (int(s.get("height", s.get("shortest_edge", 518))),
                                               int(s.get("width", s.get("shortest_edge", 518))))
        self.keep_aspect = bool(proc.get("keep_aspect_ratio", not self.is_depth_pro))
        # PIL resample codes: 2 bilinear, 3 bicubic (the DPT / Depth Anything default); Depth Pro's
        # processor resizes tensors without antialiasing
        self.resample = "bilinear" if int(proc.get("resample", 2 if self.is_depth_pro else 3)) == 2 else "bicubic"
        self.antialias = not self.is_depth_pro
        patch = getattr(getattr(self.model.config, "backbone_config", None), "patch_size", None)
        self.multiple = 1 if self.is_depth_pro else int(proc.get("ensure_multiple_of", patch or 14) or 1)
        self.mean = torch.tensor(proc.get("image_mean", [0.485, 0.456, 0.406]), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(proc.get("image_std", [0.229, 0.224, 0.225]), dtype=torch.float32).view(1, 3, 1, 1)
        self.do_normalize = bool(proc.get("do_normalize", True))
        self.name = f"{'depthpro' if self.is_depth_pro else 'hf'}:{folder.resolve().name}"
        self.version = f"{self.model.config.model_type}/transformers-{transformers.__version__}"
        self.folder = folder

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(hf={"folder": str(self.folder), "input_size": list(self.size), "keep_aspect_ratio": self.keep_aspect,
                        "multiple": self.multiple})
        return meta

    @torch.inference_mode()
    def _predict(self, img: Tensor, **_: Any) -> TeacherOutput:
        B, _, H, W = img.shape
        h, w = _resize_target(H, W, self.size, self.keep_aspect, self.multiple)
        x = F.interpolate(img.to(self.device), size=(h, w), mode=self.resample, align_corners=False,
                          antialias=self.antialias and (h < H or w < W)).clamp(0, 1)
        if self.do_normalize:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        out = self.model(pixel_values=x)
        pred = out.predicted_depth
        if pred.ndim == 4:
            pred = pred[:, 0]
        if self.is_depth_pro:
            pred = _depth_pro_depth(pred.float(), getattr(out, "field_of_view", None), H, W)
        else:
            pred = F.interpolate(pred[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        mask = torch.isfinite(pred) & (pred > 0)
        pred = torch.where(mask, pred, torch.zeros_like(pred)).cpu()
        return TeacherOutput(pred, mask.cpu(), self.depth_kind)


def _depth_pro_depth(pred: Tensor, fov_deg: Tensor | None, H: int, W: int) -> Tensor:
    """Depth Pro's canonical inverse depth ``(B, h, w)`` -> depth ``(B, H, W)``, as transformers'
    ``post_process_depth_estimation`` computes it at target size ``(H, W)``."""
    if fov_deg is not None:
        focal = 0.5 * W / torch.tan(0.5 * torch.deg2rad(fov_deg.float().reshape(-1)))
        pred = pred * (W / focal).view(-1, 1, 1)
    pred = F.interpolate(pred[:, None], size=(H, W), mode="bilinear")[:, 0]
    return 1.0 / pred.clamp(1e-4, 1e4)


def _depth_kind(text: str) -> str:
    if text not in DEPTH_KINDS:
        raise ValueError(f"kind must be one of {DEPTH_KINDS}")
    return text


HF_OPTIONS = {"kind": _depth_kind, "size": parse_size}


def hf_teacher_from_spec(rest: str, device: str | torch.device = "cpu",
                         require_model_type: str | None = None) -> HFDepthTeacher:
    """``"<folder>[#kind=<depth_kind>,size=HxW]"``; ``require_model_type`` (``depthpro:``) checks
    the folder's model type."""
    folder, opts = split_path_options(rest, "hf")
    o = parse_options(opts, HF_OPTIONS, "hf")
    return HFDepthTeacher(folder, depth_kind=o.get("kind"), size=o.get("size"), device=device,
                          require_model_type=require_model_type)


__all__ = ["HFDepthTeacher", "hf_teacher_from_spec"]
