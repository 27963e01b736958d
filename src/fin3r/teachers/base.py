"""The teacher interface: one monocular depth model, one ``predict``.

A teacher maps images ``img (B, 3, H, W)`` in [0, 1] to a :class:`TeacherOutput` at the same
resolution. ``depth_kind`` says what its label is known up to -- the distillation loss and the
label cache act on it (``fin3r.losses`` aligns the student accordingly):

``"metric"``            depth in metres (MoGe-2, metric Depth Anything, ZoeDepth, ...)
``"scale"``             depth up to one positive scale per image (MoGe-1, the oracle)
``"affine"``            depth up to scale and shift
``"affine_disparity"``  *inverse* depth up to scale and shift (Depth Anything / DPT "relative"
                        outputs, ``a / z + b``). ``TeacherOutput.depth`` then holds that
                        disparity (larger = nearer), not depth: turning it into depth needs the
                        unknown shift ``b`` and would invent geometry, so the loss aligns the
                        student's ``1 / D`` to it with a scale and a shift instead.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TeacherOutput:
    """A teacher's labels for a batch.

    Attributes:
        depth: ``(B, H, W)`` float32: depth, or disparity when ``depth_kind == "affine_disparity"``;
            0 where ``mask`` is False.
        mask: ``(B, H, W)`` bool, where the label is defined (not sky / undefined / invalid).
        depth_kind: see the module docstring.
        extras: optional per-teacher outputs (e.g. MoGe ``intrinsics (B, 3, 3)`` normalised).
    """

    depth: Tensor
    mask: Tensor
    depth_kind: str
    extras: dict[str, Any] = field(default_factory=dict)


class Teacher(ABC):
    """Base class. Subclasses set ``name`` (what every report and label sidecar shows),
    ``version`` and ``depth_kind``, and implement :meth:`_predict`."""

    name: str = "teacher"
    version: str = ""
    depth_kind: str = "scale"
    #: True for teachers that read the ground truth (the oracle): ``predict`` then needs it.
    needs_ground_truth: bool = False

    #: inference precision: "fp32", or "fp16" / "bf16" autocast (see :meth:`set_precision`)
    precision: str = "fp32"

    def predict(self, img: Tensor, **ground_truth: Any) -> TeacherOutput:
        """Labels for ``img (B, 3, H, W)`` float in [0, 1] (no gradient). ``ground_truth`` is
        ignored by real teachers; the oracle takes ``depth=``/``valid=`` or ``keys=``. Labels are
        float32 whatever the inference precision."""
        if img.ndim != 4 or img.shape[1] != 3:
            raise InputError(f"{self.name}: img must be (B, 3, H, W), got {tuple(img.shape)}")
        with torch.no_grad(), self._autocast():
            out = self._predict(img.float(), **ground_truth)
        out.depth = out.depth.float()
        if out.depth.shape != (img.shape[0],) + tuple(img.shape[-2:]):
            raise RuntimeError(f"{self.name} returned depth {tuple(out.depth.shape)} for images {tuple(img.shape)}")
        return out

    @abstractmethod
    def _predict(self, img: Tensor, **ground_truth: Any) -> TeacherOutput: ...

    def set_precision(self, precision: str) -> "Teacher":
        """``"fp32"``, ``"fp16"`` or ``"bf16"``: the network runs under that autocast (CUDA, or
        CPU where torch supports it); the label is float32 either way. Recorded in the metadata."""
        if precision not in PRECISIONS:
            raise InputError(f"{self.name}: precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        return self

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device = getattr(self, "device", torch.device("cpu"))
        return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[self.precision])

    def metadata(self) -> dict[str, Any]:
        """What the label cache's sidecar JSON records about the teacher."""
        return {"teacher": self.name, "teacher_version": self.version, "depth_kind": self.depth_kind,
                "is_oracle": self.needs_ground_truth, "precision": self.precision}

    def to(self, device: Any) -> "Teacher":
        """Move the teacher's network (``self.model``, if it has one) to ``device``."""
        if getattr(self, "model", None) is not None:
            self.model.to(device)
        self.device = torch.device(device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, depth_kind={self.depth_kind!r})"
