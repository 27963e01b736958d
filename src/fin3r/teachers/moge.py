"""``moge:<model.pt>[#options]`` teachers: MoGe-1 and MoGe-2 through MoGe's own package.

Install (MoGe's registry package declares torchvision, gradio, ... that its inference never
imports, so it goes in without them; ``scripts/install_teachers.sh`` runs exactly these lines)::

    pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3
    pip install 'fin3r[moge]'          # huggingface_hub, scipy, opencv: what MoGe's infer imports

The checkpoint is a local ``model.pt`` in MoGe's format, ``{"model_config": dict, "model":
state_dict}`` (what ``MoGeModel.from_pretrained`` reads), loaded with ``weights_only=True``; nothing
is ever downloaded. Its config tells the version: MoGe-2 configs have a ``neck``
(``moge.model.v2.MoGeModel``), MoGe-1 configs do not (``moge.model.v1.MoGeModel``).

Labels are exactly what ``MoGeModel.infer`` returns, with Fin3R's labelling settings
(``apply_mask=True, force_projection=True``, ``resolution_level=9`` unless ``num_tokens`` is
given, fp16 autocast on CUDA only):

- ``depth``: MoGe-1 -> depth up to one scale per image (``depth_kind="scale"``; ``infer`` has
  already recovered the affine point map's z-shift); MoGe-2 with a ``scale_head`` -> metric depth
  (``"metric"``: ``infer`` multiplies by the predicted metric scale, which the label keeps), MoGe-2
  without one -> ``"scale"``;
- ``mask``: MoGe's binary mask (sky / undefined pixels, ``inf`` in MoGe's depth, are False);
- ``extras["intrinsics"] (B, 3, 3)``: normalised intrinsics (principal point 0.5, 0.5);
- ``extras["normals"] (B, H, W, 3)``: MoGe-2's unit normals when the checkpoint has a
  ``normal_head`` (zero outside the mask, as ``infer`` returns them).

Options after ``#``: ``resolution_level=0..9``, ``num_tokens=N`` (overrides the level),
``fp16=0|1`` (default: 1 on CUDA), ``mask=0|1`` (``apply_mask``), ``force_projection=0|1``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError, Fin3rError, InputError
from fin3r.io import safe_torch_load
from fin3r.teachers.base import Teacher, TeacherOutput
from fin3r.teachers.spec import parse_bool, parse_options, split_path_options

log = logging.getLogger(__name__)

MOGE_INSTALL = ("pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3 && pip install 'fin3r[moge]' "
                "(scripts/install_teachers.sh in a checkout)")


def _resolution_level(text: str) -> int:
    level = int(text)
    if not 0 <= level <= 9:
        raise ValueError("resolution_level must be in 0..9")
    return level


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


MOGE_OPTIONS = {"resolution_level": _resolution_level, "num_tokens": _positive_int, "fp16": parse_bool,
                "mask": parse_bool, "force_projection": parse_bool}


def read_moge_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor], int]:
    """``(model_config, state_dict, version)`` of a MoGe ``model.pt``; :class:`CheckpointError`
    naming the file for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"moge teacher: no checkpoint file at {path}")
    ckpt = safe_torch_load(path, what="a MoGe checkpoint")  # weights_only; names the file on any error
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"moge teacher: {path} is not in MoGe's format "
                              "({'model_config': dict, 'model': state_dict})")
    state = ckpt["model"]
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"moge teacher: {path}: 'model' must map parameter names to tensors")
    config = dict(ckpt["model_config"])
    return config, state, 2 if "neck" in config else 1


def moge_depth_kind(config: dict[str, Any], version: int) -> str:
    """``"metric"`` for MoGe-2 with a scale head, else ``"scale"``."""
    return "metric" if version == 2 and config.get("scale_head") else "scale"


class MoGeTeacher(Teacher):
    """MoGe-1 / MoGe-2 from a local checkpoint (see the module docstring).

    Args:
        checkpoint: MoGe's ``model.pt``.
        resolution_level: MoGe's 0-9 token-budget knob (9 = most tokens, finest detail).
        num_tokens: explicit token count (overrides ``resolution_level``).
        use_fp16: fp16 autocast (MoGe's own switch); ``None`` = on CUDA only.
        apply_mask, force_projection: passed to ``infer`` (Fin3R's labelling: both True).
        device: where the model runs.
    """

    def __init__(self, checkpoint: str | Path, resolution_level: int = 9, num_tokens: int | None = None,
                 use_fp16: bool | None = None, apply_mask: bool = True, force_projection: bool = True,
                 device: str | torch.device = "cpu"):
        try:
            import moge.model.v1  # noqa: F401
            import moge.model.v2  # noqa: F401
        except ImportError as e:
            raise Fin3rError(f"moge:<model.pt> teachers need MoGe's package ({e}): {MOGE_INSTALL}") from None
        path = Path(checkpoint)
        config, state, version = read_moge_checkpoint(path)
        if version == 2:
            from moge.model.v2 import MoGeModel
        else:
            from moge.model.v1 import MoGeModel
        try:
            self.model = MoGeModel(**config)
        except Exception as e:  # a config MoGe cannot build: bad keys, bad backbone name, bad sizes
            raise CheckpointError(f"moge teacher: {path}: MoGe-{version} cannot be built from its model_config "
                                  f"({type(e).__name__}: {e})") from None
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"moge teacher: {path}: weights do not fit the MoGe-{version} model ({e})") from None
        if missing:
            raise CheckpointError(f"moge teacher: {path} lacks {len(missing)} weights of the MoGe-{version} model "
                                  f"(e.g. {missing[:3]})")
        if unexpected:
            if version == 1:  # MoGe-1's from_pretrained loads strictly
                raise CheckpointError(f"moge teacher: {path} has keys the MoGe-1 model lacks: {unexpected[:5]}")
            log.warning("moge teacher: %s: %d keys the MoGe-2 model does not use are ignored (as MoGe does), e.g. %s",
                        path, len(unexpected), unexpected[:3])
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        self.moge_version = version
        self.depth_kind = moge_depth_kind(config, version)
        self.has_normals = version == 2 and bool(config.get("normal_head"))
        self.name = f"moge{version}:{path.parent.name + '/' if path.parent.name else ''}{path.name}"
        try:
            from importlib.metadata import version as pkg_version

            self.version = f"dlr-moge-{pkg_version('dlr-moge')}/v{version}"
        except Exception:
            self.version = f"moge-v{version}"
        self.checkpoint = path
        self.infer_kwargs = {"resolution_level": int(resolution_level), "num_tokens": num_tokens,
                             "apply_mask": bool(apply_mask), "force_projection": bool(force_projection),
                             "use_fp16": (self.device.type == "cuda") if use_fp16 is None else bool(use_fp16)}
        self.precision = "fp16" if self.infer_kwargs["use_fp16"] else "fp32"

    def set_precision(self, precision: str) -> "MoGeTeacher":
        """fp16 = MoGe's own switch (``use_fp16``: fp16 autocast around its network, fp32 geometry
        after it); fp32 = off. bf16 is refused: ``infer`` opens its own autocast context, which
        (disabled) switches an outer bf16 autocast off, and bf16 weights meet antialiased resizes
        torch lacks in bf16 on CPU."""
        if precision == "bf16":
            raise InputError(f"{self.name}: MoGe runs in fp16 (its own use_fp16 switch) or fp32, not bf16")
        super().set_precision(precision)
        self.infer_kwargs["use_fp16"] = precision == "fp16"
        return self

    def _autocast(self):
        return contextlib.nullcontext()  # MoGe's infer manages its own precision (set_precision)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(moge={"model_version": self.moge_version, "checkpoint": str(self.checkpoint), **self.infer_kwargs})
        return meta

    def _predict(self, img: Tensor, **_: Any) -> TeacherOutput:
        out = self.model.infer(img.to(self.device), **self.infer_kwargs)
        depth = out["depth"].float()
        mask = torch.isfinite(depth) & (depth > 0)
        if "mask" in out and self.infer_kwargs["apply_mask"]:  # mask=0: label every finite pixel
            mask &= out["mask"].bool()
        depth = torch.where(mask, depth, torch.zeros_like(depth)).cpu()
        extras: dict[str, Any] = {}
        if "intrinsics" in out:
            extras["intrinsics"] = out["intrinsics"].float().cpu()
        if "normal" in out:
            extras["normals"] = torch.where(mask[..., None].to(out["normal"].device), out["normal"].float(),
                                            torch.zeros_like(out["normal"].float())).cpu()
        return TeacherOutput(depth, mask.cpu(), self.depth_kind, extras)


def moge_teacher_from_spec(rest: str, device: str | torch.device = "cpu") -> MoGeTeacher:
    """``"<model.pt>[#resolution_level=..,num_tokens=..,fp16=..,mask=..,force_projection=..]"``."""
    path, opts = split_path_options(rest, "moge")
    o = parse_options(opts, MOGE_OPTIONS, "moge")
    return MoGeTeacher(path, resolution_level=o.get("resolution_level", 9), num_tokens=o.get("num_tokens"),
                       use_fp16=o.get("fp16"), apply_mask=o.get("mask", True),
                       force_projection=o.get("force_projection", True), device=device)


__all__ = ["MoGeTeacher", "moge_teacher_from_spec", "read_moge_checkpoint", "moge_depth_kind", "MOGE_INSTALL"]
