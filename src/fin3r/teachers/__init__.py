"""Monocular teachers behind one interface (:class:`Teacher`, :class:`TeacherOutput`).

``load_teacher(spec)`` understands:

- ``"oracle"`` or ``"oracle:noise=0.02,blur=1.5,pool=4,seed=0,scale=0.5-2"`` -- the synthetic
  world's ground truth (NOT a model; see :mod:`fin3r.teachers.oracle`);
- ``"moge:<model.pt>[#options]"`` -- MoGe-1/2 through MoGe's package (:mod:`fin3r.teachers.moge`);
- ``"da3:<folder>[#options]"`` -- Depth Anything 3 through its package (:mod:`fin3r.teachers.da3`);
- ``"hf:<folder>"`` (options ``#kind=...,size=HxW``) -- a transformers depth model saved locally
  (extra ``fin3r[hf]``); ``"depthpro:<folder>"`` -- the same for a Depth Pro folder (checked);
- ``"ensemble:<spec>,<spec>,..."`` -- the per-pixel median of aligned members with an agreement
  confidence (:mod:`fin3r.teachers.ensemble`).
"""

from __future__ import annotations

from typing import Any

from fin3r.data.views import DEPTH_KINDS
from fin3r.errors import InputError
from fin3r.teachers.base import Teacher, TeacherOutput

__all__ = ["DEPTH_KINDS", "Teacher", "TeacherOutput", "load_teacher"]


def _parse_oracle(rest: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"oracle option {part!r} is not key=value")
        try:
            if key in ("noise", "blur"):
                kwargs[key] = float(value)
            elif key in ("pool", "seed"):
                kwargs[key] = int(value)
            elif key == "scale":
                lo, _, hi = value.partition("-")
                kwargs["scale_range"] = (float(lo), float(hi or lo))
            else:
                raise InputError(f"unknown oracle option {key!r} (noise, blur, pool, seed, scale=lo-hi)")
        except ValueError as e:
            raise InputError(f"oracle option {part!r}: {e}") from e
    return kwargs


def load_teacher(spec: str, device: Any = "cpu") -> Teacher:
    """A teacher from its spec string (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "oracle":
        from fin3r.teachers.oracle import OracleTeacher

        return OracleTeacher(**_parse_oracle(rest))
    if kind == "moge":
        from fin3r.teachers.moge import moge_teacher_from_spec

        return moge_teacher_from_spec(rest, device=device)
    if kind in ("hf", "depthpro"):
        from fin3r.teachers.hf_depth import hf_teacher_from_spec

        if not rest:
            raise InputError(f"{kind} teacher: give the model folder, {kind}:<folder>")
        return hf_teacher_from_spec(rest, device=device, require_model_type="depth_pro" if kind == "depthpro" else None)
    if kind == "da3":
        from fin3r.teachers.da3 import da3_teacher_from_spec

        return da3_teacher_from_spec(rest, device=device)
    if kind == "ensemble":
        from fin3r.teachers.ensemble import ensemble_from_spec

        return ensemble_from_spec(rest, lambda member: load_teacher(member, device=device))
    raise InputError(f"unknown teacher {spec!r}: use oracle[:opts], moge:<model.pt>, da3:<folder>, hf:<folder>, depthpro:<folder>, "
                     "ensemble:<spec>,<spec>,...")
