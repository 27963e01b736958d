"""A teacher as an evaluation model: ``fin3r eval monodepth --teacher SPEC``.

:func:`teacher_predictor` wraps a :class:`~fin3r.teachers.base.Teacher` into the monocular
evaluation's predictor interface (``predict(image (3, H, W)) -> {MoGe key: map (H, W)}``), so a
teacher is scored on the same benchmarks, alignment variants and metrics as a student. What the
teacher's label is known up to decides which map it fills (the scoring then derives the others
exactly as for a student):

=====================  ===========================================================
``depth_kind``         predictor keys
=====================  ===========================================================
``metric``             ``depth_metric`` and ``depth_scale_invariant`` (the same map)
``scale``              ``depth_scale_invariant``
``affine``             ``depth_affine_invariant``
``affine_disparity``   ``disparity_affine_invariant`` (scored in disparity only)
=====================  ===========================================================

Pixels the teacher leaves undefined (sky, MoGe's mask) are filled with its farthest labelled
value (depth kinds) or its smallest disparity, so every ground-truth pixel is scored; a teacher
that labels nothing in an image gets depth 1 (and fails that image's metrics honestly).
The oracle teacher reads ground truth and cannot be evaluated this way.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fin3r.errors import InputError
from fin3r.teachers.base import Teacher

__all__ = ["teacher_predictor", "PREDICTOR_KEYS"]

PREDICTOR_KEYS = {
    "metric": ("depth_metric", "depth_scale_invariant"),
    "scale": ("depth_scale_invariant",),
    "affine": ("depth_affine_invariant",),
    "affine_disparity": ("disparity_affine_invariant",),
}


def teacher_predictor(teacher: Teacher) -> Callable[[Tensor], dict[str, Tensor]]:
    """``predict(image (3, H, W) in [0, 1]) -> {key: (H, W)}`` for the monocular evaluation."""
    if teacher.needs_ground_truth:
        raise InputError(f"{teacher.name} reads the ground truth: it is not a model and cannot be evaluated")
    keys = PREDICTOR_KEYS[teacher.depth_kind]
    disparity = teacher.depth_kind == "affine_disparity"

    @torch.no_grad()
    def predict(image: Tensor) -> dict[str, Tensor]:
        out = teacher.predict(image[None].float())
        value, mask = out.depth[0].float().cpu(), out.mask[0].cpu()
        if mask.any():
            fill = value[mask].min() if disparity else value[mask].max()
        else:
            fill = torch.tensor(1.0)
        value = torch.where(mask, value, fill)
        return {k: value for k in keys}

    return predict
