"""Monocular teachers behind one interface (:class:`Teacher`, :class:`TeacherOutput`).

``load_teacher(spec)`` understands:

- ``"oracle"`` or ``"oracle:noise=0.02,blur=1.5,pool=4,seed=0,scale=0.5-2"`` -- the synthetic
  world's ground truth (NOT a model; see :mod:`fin3r.teachers.oracle`);
- ``"moge:<checkpoint.pt>"`` -- MoGe-1/2 (extra ``fin3r[moge]``);
- ``"hf:<folder>"`` (options ``#kind=...,size=HxW``) -- a transformers depth model saved locally
  (extra ``fin3r[hf]``).
"""

from __future__ import annotations

from typing import Any

from fin3r.errors import InputError
from fin3r.teachers.base import TEACHER_DEPTH_KINDS, Teacher, TeacherOutput

__all__ = ["Teacher", "TeacherOutput", "TEACHER_DEPTH_KINDS", "load_teacher"]


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
        from fin3r.teachers.moge import MoGeTeacher

        if not rest:
            raise InputError("moge teacher: give the checkpoint, moge:<path/to/model.pt>")
        return MoGeTeacher(rest, device=device)
    if kind == "hf":
        from fin3r.teachers.hf_depth import hf_teacher_from_spec

        if not rest:
            raise InputError("hf teacher: give the model folder, hf:<folder>")
        return hf_teacher_from_spec(rest, device=device)
    raise InputError(f"unknown teacher {spec!r}: use oracle[:opts], moge:<checkpoint>, hf:<folder>")
