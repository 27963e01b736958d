"""Fin3R training losses: confidence-weighted monocular distillation and the replay targets.

Pure functions (no parameters, no state); what each function implements is written in its
docstring.

**Distillation** (:func:`distillation_loss`). Per image, the student depth ``D`` is aligned to the
mean-normalised teacher depth ``T̄ = T / mean_Ω(T)`` in closed form -- scale ``s`` (or scale and
shift) by least squares, **with gradient through the solution**, so the loss is exactly invariant
to a global rescale of the student and cannot shrink or grow it -- then

    L = mean_images [ mean_{p ∈ Ω} ( β_p ρ(s D_p − T̄_p) − λ log β_p ) ]

with ``β`` the student's own confidence (``>= 1``), ``ρ(e) = e²`` (paper) or ``|e|`` and
``λ = 0.2``. Images with fewer than ``min_valid`` valid pixels are skipped.

What the teacher's depth is known up to (``depth_kind``) decides the alignment:

=====================  =====================================================  ===================
``depth_kind``         the teacher label holds                                 student is aligned
=====================  =====================================================  ===================
``"metric"``           metres (metric scale is *not* imposed; see below)       scale, in depth
``"scale"``            depth up to an unknown scale (MoGe-1, the oracle)       scale, in depth
``"affine"``           depth up to scale and shift (raw affine-invariant)       scale + shift, depth
``"affine_disparity"`` inverse depth up to scale and shift (Depth Anything,    scale + shift, in
                       MiDaS "relative" outputs: ``a/z + b``)                  disparity ``1/D``
=====================  =====================================================  ===================

For ``"affine_disparity"`` the residual is measured in (normalised) disparity, where the teacher's
invariance holds: converting an affine-invariant disparity to depth needs the unknown shift and
would fabricate geometry. ``align="affine"`` upgrades a scale-class teacher to scale + shift
alignment; asking for ``align="scale"`` with an affine teacher is an error (the residual would
contain the teacher's unknown shift). Metric teachers are aligned in scale too: Fin3R leaves the
absolute scale to the frozen decoder and the replay loss (MASt3R/CUT3R replay on metric samples).

**Replay**: each base model's own training criterion on multi-view ground truth, applied to replay
batches only, lives in its family package (``ModelFamily.replay_loss``; dispatched by
:func:`fin3r.models.registry.replay_loss`): DUSt3R ``ConfLoss(Regr3D(L21, 'avg_dis'), alpha=0.2)``,
MASt3R the same with ``'?avg_dis'`` (metric samples are supervised in metric scale), CUT3R
``Regr3DPose`` (self + cross pointmaps and a pose term), VGGT depth + point + camera terms. This
module holds what they share: :func:`views_ground_truth`, :func:`metric_flags`,
:func:`replay_targets`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from fin3r.data.views import DEPTH_KINDS
from fin3r.errors import InputError
from fin3r.geometry import (
    align_scale,
    align_scale_shift,
    depth_to_points,
    relative_pose,
    transform_points,
)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over ``dims`` where ``mask``; returns ``(mean, count)`` (mean 0 where empty)."""
    m = mask.to(x.dtype)
    count = m.sum(dim=dims)
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dim=dims)
    return total / count.clamp_min(1.0), count


def fp32(x: Tensor) -> Tensor:
    """Losses are computed in at least fp32 (autocast outputs may be bf16/fp16); fp64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def _rho(e: Tensor, rho: str) -> Tensor:
    if rho == "sq":
        return e * e
    if rho == "abs":
        return e.abs()
    raise InputError(f"distillation rho must be 'sq' or 'abs', got {rho!r}")


# ---------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------


def distillation_loss(
    depth: Tensor,
    conf: Tensor,
    teacher_depth: Tensor,
    teacher_mask: Tensor,
    depth_kind: str = "scale",
    lam: float = 0.2,
    rho: Literal["sq", "abs"] = "sq",
    align: Literal["auto", "scale", "affine"] = "auto",
    min_valid: int = 100,
    far_quantile: float | None = 0.98,
    scale_clamp: tuple[float, float] = (1e-4, 1e4),
    teacher_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Confidence-weighted, alignment-invariant distillation of a teacher's depth (``docs/training.md``).

    Args:
        depth: ``(B, H, W)`` student depth (any positive scale).
        conf: ``(B, H, W)`` student confidence ``β >= 1`` (gradient flows into it).
        teacher_depth: ``(B, H, W)`` teacher label (depth, or disparity for ``"affine_disparity"``);
            no gradient.
        teacher_mask: ``(B, H, W)`` bool, where the teacher label is defined.
        depth_kind: what the label is known up to; see the module docstring.
        lam: weight ``λ`` of ``−log β``.
        rho: ``"sq"`` (``e²``, the paper) or ``"abs"`` (``|e|``, the base models' convention).
        align: ``"auto"`` (from ``depth_kind``), ``"scale"`` or ``"affine"`` (scale + shift).
        min_valid: images with fewer valid pixels are skipped (they add nothing to the mean).
        far_quantile: per image, drop the teacher's farthest pixels above this quantile (sky leaks);
            ``None`` keeps all.
        scale_clamp: the solved scale is clamped into this range (degenerate images).
        teacher_weight: optional ``(B, H, W)`` per-pixel weight in [0, 1] of the teacher's label
            (the ensemble teacher's agreement, ``<key>.conf.png`` in the label cache): each
            image's loss is the ``teacher_weight``-weighted mean of its pixel terms, so pixels
            where the teachers disagree count less; the closed-form alignment is weighted alike.
            ``None`` = all 1 (the paper).

    Returns:
        ``(loss, stats)``: a scalar (0 attached to the graph when every image is skipped) and
        floats ``residual`` (mean ρ), ``conf`` (mean β), ``valid_frac``, ``images`` (used).
    """
    if depth.ndim != 3 or depth.shape != conf.shape or depth.shape != teacher_depth.shape:
        raise InputError(
            "distillation_loss: depth, conf and teacher_depth must all be (B, H, W); got "
            f"{tuple(depth.shape)}, {tuple(conf.shape)}, {tuple(teacher_depth.shape)}"
        )
    if depth_kind not in DEPTH_KINDS:
        raise InputError(f"distillation_loss: depth_kind {depth_kind!r} is not one of {DEPTH_KINDS}")
    affine_teacher = depth_kind in ("affine", "affine_disparity")
    if align == "scale" and affine_teacher:
        raise InputError(
            f"distillation_loss: a teacher with depth_kind={depth_kind!r} is known only up to scale "
            "and shift; align='scale' would fit its unknown shift. Use align='auto' or 'affine'."
        )
    if align not in ("auto", "scale", "affine"):
        raise InputError(f"distillation_loss: align must be 'auto', 'scale' or 'affine', got {align!r}")
    use_affine = affine_teacher or align == "affine"

    depth = fp32(depth)
    conf = fp32(conf)
    target = fp32(teacher_depth.detach()).to(depth.dtype)
    student = depth
    finite_student = torch.isfinite(depth)
    if depth_kind == "affine_disparity":  # 1/D: only positive depths have a disparity
        finite_student = finite_student & (depth > 0)
        student = 1.0 / depth.clamp_min(1e-6)
        valid = teacher_mask.bool() & torch.isfinite(target) & (target >= 0) & finite_student
    else:
        valid = teacher_mask.bool() & torch.isfinite(target) & (target > 0) & finite_student
    valid = valid & torch.isfinite(conf)
    target = torch.where(valid, target, torch.zeros_like(target))

    if far_quantile is not None and 0 < far_quantile < 1:
        with torch.no_grad():
            # "far" = large depth, or small disparity
            far_key = target if depth_kind != "affine_disparity" else -target
            keyed = torch.where(valid, far_key, torch.full_like(far_key, float("nan")))
            q = torch.nanquantile(keyed.flatten(1), far_quantile, dim=1)
            valid = valid & ~(far_key > q.view(-1, 1, 1))

    dims = (1, 2)
    count = valid.sum(dims)
    used = count >= max(min_valid, 2)
    with torch.no_grad():  # teacher normalisation: a constant per image
        mu, _ = masked_mean(target.abs(), valid, dims)
        mu = torch.where(used & (mu > 0), mu, torch.ones_like(mu))
    target_n = target / mu.view(-1, 1, 1)
    student_m = torch.where(valid, student, torch.zeros_like(student))
    pixel_w = None
    if teacher_weight is not None:
        if teacher_weight.shape != depth.shape:
            raise InputError(f"distillation_loss: teacher_weight {tuple(teacher_weight.shape)} must be {tuple(depth.shape)}")
        pixel_w = torch.nan_to_num(fp32(teacher_weight.detach()).to(depth.dtype), nan=0.0).clamp(0, 1)
        pixel_w = torch.where(valid, pixel_w, torch.zeros_like(pixel_w))

    if use_affine:
        scale, shift = align_scale_shift(student_m, target_n, valid, pixel_w)
        aligned = scale.view(-1, 1, 1) * student_m + shift.view(-1, 1, 1)
    else:
        scale = align_scale(student_m, target_n, valid, pixel_w).clamp(*scale_clamp)
        aligned = scale.view(-1, 1, 1) * student_m

    residual = _rho(aligned - target_n, rho)
    conf_safe = torch.where(valid, conf, torch.ones_like(conf))
    per_pixel = conf_safe * residual - lam * torch.log(conf_safe)
    if pixel_w is None:
        per_image, _ = masked_mean(per_pixel, valid, dims)
    else:
        per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
        per_image = (pixel_w * per_pixel).sum(dims) / pixel_w.sum(dims).clamp_min(1e-6)
    n_used = int(used.sum())
    if n_used == 0:
        loss = (depth.sum() + conf.sum()) * 0.0
        loss = torch.nan_to_num(loss, nan=0.0)
    else:
        loss = per_image[used].mean()
    with torch.no_grad():
        res_img, _ = masked_mean(residual, valid, dims)
        conf_img, _ = masked_mean(conf_safe, valid, dims)
        stats = {
            "residual": float(res_img[used].mean()) if n_used else 0.0,
            "conf": float(conf_img[used].mean()) if n_used else 0.0,
            "valid_frac": float(valid.float().mean()),
            "images": float(n_used),
        }
    return loss, stats


def mono_distillation_loss(
    pred: Any, teacher_depth: Tensor, teacher_mask: Tensor, depth_kind: str = "scale", **kwargs: Any
) -> tuple[Tensor, dict[str, float]]:
    """:func:`distillation_loss` averaged over every head of a ``MonoPrediction``.

    DUSt3R/MASt3R fill ``depth_aux``/``conf_aux`` with the second head of the duplicated pair
    (``(I, I)``: identity relative pose, so the same teacher supervises both heads).
    ``kwargs`` go to :func:`distillation_loss`.
    """
    heads = [(pred.depth, pred.conf)] + list(zip(pred.depth_aux, pred.conf_aux))
    losses, stats = [], []
    for depth, conf in heads:
        loss, st = distillation_loss(depth, conf, teacher_depth, teacher_mask, depth_kind, **kwargs)
        losses.append(loss)
        stats.append(st)
    total = torch.stack(losses).mean()
    merged = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    merged["images"] = stats[0]["images"]
    merged["heads"] = float(len(heads))
    return total, merged


# ---------------------------------------------------------------------------------------------
# replay: ground truth from a views batch
# ---------------------------------------------------------------------------------------------


def views_ground_truth(batch: dict[str, Any]) -> dict[str, Tensor]:
    """Ground truth of a multi-view batch in the frame of view 0.

    ``batch``: ``depth (B, S, H, W)`` (0 = invalid), ``valid (B, S, H, W)``, ``K (B, S, 3, 3)``,
    ``cam2world (B, S, 4, 4)``. Returns ``pts3d (B, S, H, W, 3)`` (view-0 frame), ``pts3d_self``
    (each view's own frame), ``valid`` and ``rel_pose (B, S, 4, 4)`` (camera v -> camera 0).
    """
    depth = batch["depth"].float()
    valid = batch["valid"].bool() & torch.isfinite(depth) & (depth > 0)
    pts_self = depth_to_points(torch.where(valid, depth, torch.zeros_like(depth)), batch["K"].float())
    c2w = batch["cam2world"].float()
    rel = relative_pose(c2w[:, :1].expand_as(c2w), c2w)  # inv(c2w_0) @ c2w_v
    pts = transform_points(rel, pts_self)
    return {"pts3d": pts, "pts3d_self": pts_self, "valid": valid, "rel_pose": rel, "depth": depth}


def metric_flags(batch: dict[str, Any], batch_size: int, device: torch.device) -> Tensor:
    """``(B,)`` bool: which samples carry metric ground truth (``depth_kind == "metric"``)."""
    kinds = batch.get("depth_kind", "metric")
    if isinstance(kinds, str):
        kinds = [kinds] * batch_size
    flat = []
    for k in kinds:  # a views sample may carry one kind per view
        flat.append(k if isinstance(k, str) else k[0])
    return torch.tensor([k == "metric" for k in flat], dtype=torch.bool, device=device)


def replay_targets(pred: Any, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
    """``(ground truth (views_ground_truth), metric flags (B,))`` of a replay batch, after checking
    that the prediction's point maps have the batch's shape; the start of every family's replay
    criterion (``ModelFamily.replay_loss``)."""
    gt = views_ground_truth(batch)
    if pred.pts3d.shape != gt["pts3d"].shape:
        raise InputError(
            f"replay_loss: prediction pts3d {tuple(pred.pts3d.shape)} does not match the batch's "
            f"ground truth {tuple(gt['pts3d'].shape)}"
        )
    return gt, metric_flags(batch, gt["valid"].shape[0], gt["valid"].device)


__all__ = [
    "DEPTH_KINDS",
    "distillation_loss",
    "fp32",
    "masked_mean",
    "metric_flags",
    "mono_distillation_loss",
    "replay_targets",
    "views_ground_truth",
]
