"""``moge:<checkpoint>`` teachers: MoGe-1 / MoGe-2 through the ``moge`` package (optional extra).

``pip install 'fin3r[moge]'`` (or MoGe's own instructions) provides ``moge``. The checkpoint is a
local ``model.pt`` (``{"model_config": ..., "model": state_dict}``, loaded with
``weights_only=True``); its config tells the version: MoGe-2 configs have a ``neck``. MoGe-1
predicts depth up to scale (``depth_kind="scale"``; the affine point map's z-shift is recovered
inside ``infer``); MoGe-2 with a scale head predicts metric depth (``"metric"``; its absolute scale
is less reliable than its shape, and the scale-aligned loss ignores it anyway).

``infer`` runs with ``apply_mask=True, force_projection=True`` (as in Fin3R's labelling recipe);
masked pixels (sky, undefined) are ``inf`` in MoGe's output and become ``mask = False`` here.
The normalised intrinsics MoGe recovers are returned in ``extras["intrinsics"]`` ``(B, 3, 3)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError, Fin3rError
from fin3r.io import safe_torch_load
from fin3r.teachers.base import Teacher, TeacherOutput


class MoGeTeacher(Teacher):
    """MoGe from a local checkpoint.

    Args:
        checkpoint: path to MoGe's ``model.pt``.
        resolution_level: MoGe's 0-9 token budget knob (9 = most tokens, finest detail).
        num_tokens: explicit token count (overrides ``resolution_level``).
        use_fp16: half-precision inference (CUDA).
    """

    def __init__(self, checkpoint: str | Path, resolution_level: int = 9, num_tokens: int | None = None,
                 use_fp16: bool = True, device: str | torch.device = "cpu"):
        try:
            import moge  # noqa: F401
        except ImportError as e:
            raise Fin3rError("moge:<checkpoint> teachers need the MoGe package: pip install 'fin3r[moge]' "
                             "(see https://github.com/microsoft/MoGe)") from e
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"moge teacher: no checkpoint file at {path}")
        ckpt = safe_torch_load(path, what="a MoGe checkpoint")
        try:
            config = dict(ckpt["model_config"])
        except Exception as e:
            raise CheckpointError(f"moge teacher: {path} is not a MoGe checkpoint ({e})") from e
        version = 2 if "neck" in config else 1
        if version == 2:
            from moge.model.v2 import MoGeModel
        else:
            from moge.model.v1 import MoGeModel
        self.model = MoGeModel(**config)
        missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=False)
        if unexpected:
            raise CheckpointError(f"moge teacher: {path} has keys the MoGe-{version} model lacks: {unexpected[:5]}")
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.moge_version = version
        self.depth_kind = "metric" if version == 2 and "scale_head" in config and config["scale_head"] else "scale"
        self.name = f"moge{version}:{path.parent.name + '/' if path.parent.name else ''}{path.name}"
        try:
            from importlib.metadata import version as pkg_version

            self.version = f"moge-{pkg_version('moge')}"
        except Exception:
            self.version = f"moge-v{version}"
        self.infer_kwargs = {"resolution_level": resolution_level, "num_tokens": num_tokens, "apply_mask": True,
                             "force_projection": True, "use_fp16": use_fp16 and self.device.type == "cuda"}

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(moge={"model_version": self.moge_version, **{k: v for k, v in self.infer_kwargs.items()}})
        return meta

    def _predict(self, img: Tensor, **_: Any) -> TeacherOutput:
        out = self.model.infer(img.to(self.device), **self.infer_kwargs)
        depth = out["depth"].float()
        mask = torch.isfinite(depth) & (depth > 0)
        if "mask" in out:
            mask &= out["mask"].bool()
        depth = torch.where(mask, depth, torch.zeros_like(depth)).cpu()
        extras = {"intrinsics": out["intrinsics"].float().cpu()} if "intrinsics" in out else {}
        return TeacherOutput(depth, mask.cpu(), self.depth_kind, extras)


__all__ = ["MoGeTeacher"]
