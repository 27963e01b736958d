"""Fin3R training losses: confidence-weighted monocular distillation and per-model replay.

Pure functions (no parameters, no state). Formulas and their reasoning are in
``shared/research/training.md`` §C; what each function implements is written in its docstring.

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

**Replay** (:func:`replay_loss`): each base model's own training criterion on multi-view ground
truth, applied to replay batches only -- DUSt3R ``ConfLoss(Regr3D(L21, 'avg_dis'), alpha=0.2)``
(:func:`dust3r_conf_regr3d_loss`), MASt3R the same with ``'?avg_dis'`` (metric samples are
supervised in metric scale), CUT3R ``Regr3DPose`` (self + cross pointmaps and a pose term),
VGGT depth + point + camera terms (:func:`vggt_replay_loss`, simplified where stated).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from fin3r.errors import InputError
from fin3r.geometry import (
    align_scale,
    align_scale_shift,
    depth_to_points,
    matrix_to_quaternion,
    relative_pose,
    transform_points,
)

DEPTH_KINDS = ("metric", "scale", "affine", "affine_disparity")

# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over ``dims`` where ``mask``; returns ``(mean, count)`` (mean 0 where empty)."""
    m = mask.to(x.dtype)
    count = m.sum(dim=dims)
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dim=dims)
    return total / count.clamp_min(1.0), count


def _fp32(x: Tensor) -> Tensor:
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
) -> tuple[Tensor, dict[str, float]]:
    """Confidence-weighted, alignment-invariant distillation of a teacher's depth (training.md §C.4-C.5).

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

    depth = _fp32(depth)
    conf = _fp32(conf)
    target = _fp32(teacher_depth.detach()).to(depth.dtype)
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

    if use_affine:
        scale, shift = align_scale_shift(student_m, target_n, valid)
        aligned = scale.view(-1, 1, 1) * student_m + shift.view(-1, 1, 1)
    else:
        scale = align_scale(student_m, target_n, valid).clamp(*scale_clamp)
        aligned = scale.view(-1, 1, 1) * student_m

    residual = _rho(aligned - target_n, rho)
    conf_safe = torch.where(valid, conf, torch.ones_like(conf))
    per_pixel = conf_safe * residual - lam * torch.log(conf_safe)
    per_image, _ = masked_mean(per_pixel, valid, dims)
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
# replay: the CroCo family (DUSt3R / MASt3R / CUT3R)
# ---------------------------------------------------------------------------------------------


def avg_dis_factor(pts3d: Tensor, valid: Tensor) -> Tensor:
    """DUSt3R ``avg_dis`` normaliser: mean distance to the origin over the valid points of every
    view, ``pts3d (B, S, H, W, 3)``, ``valid (B, S, H, W)`` -> ``(B,)`` (clipped at 1e-8)."""
    dist = torch.where(valid, pts3d.norm(dim=-1), torch.zeros_like(pts3d[..., 0]))
    b = pts3d.shape[0]
    total = dist.reshape(b, -1).sum(1)
    count = valid.reshape(b, -1).sum(1).to(pts3d.dtype)
    return (total / (count + 1e-8)).clamp_min(1e-8)


def dust3r_conf_regr3d_loss(
    pts3d_pred: Tensor,
    conf: Tensor,
    pts3d_gt: Tensor,
    valid: Tensor,
    alpha: float = 0.2,
    norm_mode: str = "avg_dis",
    metric: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DUSt3R's ``ConfLoss(Regr3D(L21, norm_mode), alpha)`` on ``S`` views.

    Args:
        pts3d_pred: ``(B, S, H, W, 3)`` predicted points in view 0's frame.
        conf: ``(B, S, H, W)`` confidences ``>= 1``.
        pts3d_gt: ``(B, S, H, W, 3)`` ground-truth points in view 0's frame.
        valid: ``(B, S, H, W)`` bool.
        alpha: weight of ``−log conf``.
        norm_mode: ``"avg_dis"`` (prediction and ground truth each divided by their own mean
            distance; scale-invariant) or ``"?avg_dis"`` (MASt3R/CUT3R: for samples flagged
            ``metric`` the prediction is divided by the *ground truth's* factor, so metric scale is
            supervised).
        metric: ``(B,)`` bool, which samples are metric (only read with ``"?avg_dis"``).

    Returns:
        ``(loss, stats)``. As the official code: per view, the mean over all valid pixels of the
        batch of ``conf·||P̃ − X̃||₂ − alpha·log conf``, summed over views.
    """
    if pts3d_pred.shape != pts3d_gt.shape or pts3d_pred.ndim != 5:
        raise InputError(
            f"replay loss: pts3d_pred {tuple(pts3d_pred.shape)} and pts3d_gt {tuple(pts3d_gt.shape)} "
            "must both be (B, S, H, W, 3)"
        )
    if norm_mode not in ("avg_dis", "?avg_dis"):
        raise InputError(f"replay loss: norm_mode must be 'avg_dis' or '?avg_dis', got {norm_mode!r}")
    pts3d_pred = _fp32(pts3d_pred)
    conf = _fp32(conf)
    valid = valid.bool() & torch.isfinite(pts3d_gt).all(-1)
    gt = torch.where(valid[..., None], pts3d_gt.to(pts3d_pred.dtype), torch.zeros_like(pts3d_pred))
    gt_factor = avg_dis_factor(gt, valid)
    pred_factor = avg_dis_factor(pts3d_pred, valid)
    if norm_mode == "?avg_dis" and metric is not None:
        pred_factor = torch.where(metric.to(pred_factor.device).bool(), gt_factor, pred_factor)
    shape = (-1, 1, 1, 1, 1)
    pred_n = pts3d_pred / pred_factor.view(shape)
    gt_n = gt / gt_factor.view(shape)
    dist = (pred_n - gt_n).norm(dim=-1)  # (B, S, H, W)
    total = pts3d_pred.new_zeros(())
    per_view = []
    for v in range(pts3d_pred.shape[1]):
        m = valid[:, v]
        if m.any():
            c = conf[:, v][m]
            term = (c * dist[:, v][m] - alpha * torch.log(c)).mean()
        else:
            term = pts3d_pred.sum() * 0.0
        per_view.append(term)
        total = total + term
    with torch.no_grad():
        stats = {
            "regr": float(dist[valid].mean()) if valid.any() else 0.0,
            "conf": float(conf[valid].mean()) if valid.any() else 0.0,
        }
        for v, term in enumerate(per_view):
            stats[f"view{v}"] = float(term.detach())
    return total, stats


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


def _pose_loss(pred_rel: Tensor, gt_rel: Tensor, pred_factor: Tensor, gt_factor: Tensor) -> Tensor:
    """CUT3R's pose term: ``mean||t̂/ν̂ − t/ν|| + mean||q̂ − q||`` (quaternion sign fixed, w >= 0)."""
    t_pred = pred_rel[..., :3, 3] / pred_factor.view(-1, 1, 1)
    t_gt = gt_rel[..., :3, 3] / gt_factor.view(-1, 1, 1)
    q_pred = matrix_to_quaternion(pred_rel[..., :3, :3])
    q_gt = matrix_to_quaternion(gt_rel[..., :3, :3])
    return (t_pred - t_gt).norm(dim=-1).mean() + (q_pred - q_gt).norm(dim=-1).mean()


def cut3r_replay_loss(pred: Any, gt: dict[str, Tensor], metric: Tensor, alpha: float = 0.2):
    """CUT3R ``ConfLoss(Regr3DPose(L21, '?avg_dis'), alpha)`` (training.md B.3), simplified:

    - cross points (``pred.pts3d``, view-0 frame) and self points (``pred.extras["pts3d_self"]``
      with ``extras["conf_self"]``, each view's own frame) are normalised by plain ``avg_dis``
      factors of the cross points (official: confidence-weighted over self + cross); metric samples
      use the ground-truth factor for the prediction;
    - loss ``= 2 · mean(per view & self/cross terms) + pose`` as the official; the pose term is
      added when ``pred.cam2world`` is given. No RGB or sky term.
    """
    valid = gt["valid"]
    pts_gt = torch.where(valid[..., None], gt["pts3d"], torch.zeros_like(gt["pts3d"]))
    gt_factor = avg_dis_factor(pts_gt, valid)
    pred_factor = avg_dis_factor(pred.pts3d.float(), valid)
    pred_factor = torch.where(metric, gt_factor, pred_factor)
    shape = (-1, 1, 1, 1, 1)
    terms = []
    pairs = [(pred.pts3d, pred.conf, gt["pts3d"])]
    if "pts3d_self" in pred.extras:
        pairs.append((pred.extras["pts3d_self"], pred.extras.get("conf_self", pred.conf), gt["pts3d_self"]))
    for p, c, g in pairs:
        dist = (p.float() / pred_factor.view(shape) - g / gt_factor.view(shape)).norm(dim=-1)
        for v in range(p.shape[1]):
            m = valid[:, v]
            if m.any():
                cv = c[:, v].float()[m]
                terms.append((cv * dist[:, v][m] - alpha * torch.log(cv)).mean())
    loss = 2 * torch.stack(terms).mean() if terms else pred.pts3d.sum() * 0.0
    stats = {"pointmap": float(loss.detach())}
    if pred.cam2world is not None:
        pose = _pose_loss(pred.cam2world.float(), gt["rel_pose"], pred_factor, gt_factor)
        loss = loss + pose
        stats["pose"] = float(pose.detach())
    return loss, stats


# ---------------------------------------------------------------------------------------------
# replay: VGGT
# ---------------------------------------------------------------------------------------------


def _vggt_conf_regression(
    pred: Tensor, gt: Tensor, conf: Tensor, valid: Tensor, alpha: float, valid_range: float
) -> tuple[Tensor, Tensor]:
    """VGGT ``regression_loss``: ``(mean(c·||Δ|| − α log c), mean(||Δ||))`` over the kept pixels.

    ``pred``/``gt``: ``(B, S, H, W, C)``; pixels whose error is above the ``valid_range`` quantile
    (errors clamped to 100 first) are dropped, as the official ``valid_range=0.98``.
    """
    err = (gt - pred).norm(dim=-1)[valid]
    c = conf[valid]
    if err.numel() == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    if 0 < valid_range < 1 and err.numel() > 10:
        with torch.no_grad():
            thr = torch.quantile(err.detach().clamp_max(100.0).float(), valid_range)
        keep = err.detach().clamp_max(100.0) <= thr
        err, c = err[keep], c[keep]
    return (c * err - alpha * torch.log(c)).mean(), err.mean()


def _vggt_gradient_loss(pred: Tensor, gt: Tensor, conf: Tensor, valid: Tensor, alpha: float, scales: int = 3):
    """Multi-scale confidence-weighted L1 of finite differences of ``pred − gt`` (VGGT ``"grad"``)."""
    diff = (pred - gt)  # (N, H, W, C)
    total = pred.new_zeros(())
    for k in range(scales):
        step = 2**k
        d = diff[:, ::step, ::step]
        m = valid[:, ::step, ::step]
        c = conf[:, ::step, ::step]
        if d.shape[1] < 2 or d.shape[2] < 2:
            break
        gx = (d[:, :, 1:] - d[:, :, :-1]).abs().sum(-1)
        mx = m[:, :, 1:] & m[:, :, :-1]
        gy = (d[:, 1:] - d[:, :-1]).abs().sum(-1)
        my = m[:, 1:] & m[:, :-1]
        for g, mm, cc in ((gx, mx, c[:, :, 1:]), (gy, my, c[:, 1:])):
            if mm.any():
                total = total + (cc[mm] * g[mm] - alpha * torch.log(cc[mm])).mean()
    return total / scales


def _vggt_camera_loss(pred: Any, rel_gt: Tensor, K: Tensor, height: int, width: int, gamma: float = 0.6) -> Tensor:
    """VGGT ``camera_loss``: L1 on the pose encoding ``absT_quaR_FoV`` (translation 3, quaternion
    xyzw 4, field of view 2) with weights T 1, R 1, FoV 0.5, each clamped at 100, averaged over the
    camera head's refinement stages with weights ``gamma^(n - 1 - i) / n`` (the last stage counts
    most). ``rel_gt (B, S, 4, 4)``: camera v -> view 0 poses, translations already normalised."""
    from fin3r.models.layers.camera_head import cameras_to_pose_encoding

    enc_gt = cameras_to_pose_encoding(rel_gt, K, (height, width))
    stages = pred.extras.get("pose_enc_list")
    if stages is None:  # a model that reports only cameras: encode its final prediction
        stages = [cameras_to_pose_encoding(pred.cam2world.float(), pred.intrinsics.float(), (height, width))]
    n = len(stages)
    total = enc_gt.new_zeros(())
    for i, enc in enumerate(stages):
        diff = torch.nan_to_num((enc.float() - enc_gt).abs(), nan=0.0, posinf=100.0).clamp_max(100.0)
        term = diff[..., :3].mean() + diff[..., 3:7].mean() + 0.5 * diff[..., 7:].mean()
        total = total + gamma ** (n - 1 - i) * term
    return total / n


def vggt_replay_loss(
    pred: Any,
    gt: dict[str, Tensor],
    K: Tensor,
    alpha: float = 0.2,
    camera_weight: float = 5.0,
    valid_range: float = 0.98,
) -> tuple[Tensor, dict[str, float]]:
    """VGGT's training loss (``training/loss.py``, training.md B.4), simplified where stated.

    Ground truth is normalised as the official ``normalize_camera_extrinsics_and_points_batch``:
    poses and points relative to view 0, then points, depths and translations divided by
    ``Σ_valid ||X|| / (count + 1e-3)``; predictions are not normalised.

    ``L = camera_weight · L_cam + (L_conf + L_reg + L_grad)_depth + (L_conf + L_reg + L_grad)_point``.

    The camera term reads ``pred.extras["pose_enc_list"]`` (every refinement stage) when the model
    gives it. Simplifications (said plainly): the point gradient term is the same multi-scale difference term as for depth (official:
    a normal-consistency term); no per-batch "< 100 valid pixels" early exit.
    """
    valid = gt["valid"]
    b = valid.shape[0]
    pts = torch.where(valid[..., None], gt["pts3d"], torch.zeros_like(gt["pts3d"]))
    avg_scale = pts.norm(dim=-1).reshape(b, -1).sum(1) / (valid.reshape(b, -1).sum(1) + 1e-3)
    avg_scale = avg_scale.clamp_min(1e-8)
    pts_n = pts / avg_scale.view(-1, 1, 1, 1, 1)
    stats: dict[str, float] = {}
    loss = pred.pts3d.new_zeros(()).float()
    flat = lambda t: t.flatten(0, 1)  # noqa: E731  (B, S, ...) -> (B*S, ...)
    if pred.depth is not None:
        depth_gt = (gt["depth"] / avg_scale.view(-1, 1, 1, 1))[..., None]
        d_pred = pred.depth.float()[..., None]
        d_conf = (pred.depth_conf if pred.depth_conf is not None else pred.conf).float()
        conf_term, reg = _vggt_conf_regression(d_pred, depth_gt, d_conf, valid, alpha, valid_range)
        grad = _vggt_gradient_loss(flat(d_pred), flat(depth_gt), flat(d_conf), flat(valid), alpha)
        loss = loss + conf_term + reg + grad
        stats.update(depth_conf=float(conf_term.detach()), depth_reg=float(reg.detach()), depth_grad=float(grad.detach()))
    p_pred = pred.pts3d.float()
    conf_term, reg = _vggt_conf_regression(p_pred, pts_n, pred.conf.float(), valid, alpha, valid_range)
    grad = _vggt_gradient_loss(flat(p_pred), flat(pts_n), flat(pred.conf.float()), flat(valid), alpha)
    loss = loss + conf_term + reg + grad
    stats.update(point_conf=float(conf_term.detach()), point_reg=float(reg.detach()), point_grad=float(grad.detach()))
    if (pred.cam2world is not None and pred.intrinsics is not None) or "pose_enc_list" in pred.extras:
        h, w = valid.shape[-2:]
        rel_gt = gt["rel_pose"].clone()
        rel_gt[..., :3, 3] = rel_gt[..., :3, 3] / avg_scale.view(-1, 1, 1)
        cam = _vggt_camera_loss(pred, rel_gt, K.float(), h, w)
        loss = loss + camera_weight * cam
        stats["camera"] = float(cam.detach())
    return loss, stats


# ---------------------------------------------------------------------------------------------
# replay dispatcher
# ---------------------------------------------------------------------------------------------

REPLAY_FAMILIES = ("dust3r", "mast3r", "cut3r", "vggt")


def replay_loss(family: str, pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """The model family's own multi-view criterion on a replay batch (training.md §C.6).

    Args:
        family: ``"dust3r"``, ``"mast3r"``, ``"cut3r"`` or ``"vggt"`` (``Reconstructor.family``).
        pred: the model's ``ViewsPrediction`` for ``batch["img"] (B, S, 3, H, W)``.
        batch: a collated multi-view batch (``depth``, ``valid``, ``K``, ``cam2world``,
            ``depth_kind``; DESIGN.md sample contract).
        alpha: weight of ``−log conf``.
    """
    if family not in REPLAY_FAMILIES:
        raise InputError(f"replay_loss: unknown model family {family!r} (known: {', '.join(REPLAY_FAMILIES)})")
    gt = views_ground_truth(batch)
    if pred.pts3d.shape != gt["pts3d"].shape:
        raise InputError(
            f"replay_loss: prediction pts3d {tuple(pred.pts3d.shape)} does not match the batch's "
            f"ground truth {tuple(gt['pts3d'].shape)}"
        )
    metric = metric_flags(batch, gt["valid"].shape[0], gt["valid"].device)
    if family == "dust3r":
        return dust3r_conf_regr3d_loss(pred.pts3d, pred.conf, gt["pts3d"], gt["valid"], alpha, "avg_dis")
    if family == "mast3r":
        return dust3r_conf_regr3d_loss(pred.pts3d, pred.conf, gt["pts3d"], gt["valid"], alpha, "?avg_dis", metric)
    if family == "cut3r":
        return cut3r_replay_loss(pred, gt, metric, alpha)
    return vggt_replay_loss(pred, gt, batch["K"], alpha)


__all__ = [
    "DEPTH_KINDS",
    "REPLAY_FAMILIES",
    "avg_dis_factor",
    "cut3r_replay_loss",
    "distillation_loss",
    "dust3r_conf_regr3d_loss",
    "masked_mean",
    "mono_distillation_loss",
    "replay_loss",
    "views_ground_truth",
    "vggt_replay_loss",
]

