"""π3 replay: its own training loss (yyfz/Pi3, ``training`` branch, ``Pi3Loss``), on fin3r's
multi-view ground truth.

Per sample, with ``S`` views and ``valid`` pixels:

1. **Normalisation.** Ground truth: points in view 0's frame and camera translations divided by
   the mean distance of the valid points to view 0's camera. Prediction: π3's local points and
   camera translations divided by the mean norm of its valid local points.
2. **Local points** (scale-invariant): one optimal scale ``s`` per sample, the minimiser of the
   weighted L1 ``Σ w |s x − y|`` over the coordinates of up to 4096 valid points (resampled by
   nearest index, as the official ``prepare_ROE``), no gradient through it, negative scales
   flipped; ``w = 1 / max(z, 0.1 · mean_valid z)`` of the ground truth per view. Loss: mean over
   valid points of ``w · |s · local − local_gt|`` (each coordinate).
3. **Normals**: the angle between predicted and ground-truth normals of the four triangles of every
   2x2 pixel cell (clamped to [1°, 90°], smoothed below 3°), away from ground-truth depth edges
   (relative 3%), mean over cells / (4 · max(H, W)). The official code applies it to its high- and
   middle-quality datasets; fin3r's replay data are rendered or synthetic, so it is on.
4. **Confidence** (the official third stage): BCE of π3's confidence logits against "the scaled
   local point is within 0.02 (mean L1) of the ground truth" on valid pixels, weight 0.05. The
   official sky term (a SegFormer sky mask) is not reproduced.
5. **Camera** (affine-invariant): for every ordered pair ``i != j`` the relative pose
   ``inv(P_i) P_j`` of the prediction (translations times ``s``) against the ground truth's:
   ``100 · Huber_0.1(t) + mean rotation angle`` (radians), weight 0.1. Skipped for one view.

``L = local + normal + 0.05 · conf + 0.1 · camera``. The ``alpha`` of fin3r's replay interface
(the weight of ``−log conf`` in confidence-weighted regressions) does not enter π3's loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.errors import InputError
from fin3r.geometry import invert_rigid
from fin3r.losses import replay_targets

#: points per sample for the optimal-scale fit (the official ``local_align_res``)
ALIGN_POINTS = 4096
#: the confidence target: within this mean L1 of the ground truth (official ``expected_dist_thresh``)
CONF_THRESHOLD = 0.02


def mean_valid_norm(pts: Tensor, valid: Tensor) -> Tensor:
    """``pts (B, S, H, W, 3)``, ``valid (B, S, H, W)`` -> ``(B,)`` mean norm of the valid points
    (``Σ ||p|| / (count + 1e-8)``, as π3's normalisation)."""
    b = pts.shape[0]
    dist = torch.where(valid, pts.norm(dim=-1), torch.zeros_like(pts[..., 0]))
    return dist.reshape(b, -1).sum(1) / (valid.reshape(b, -1).sum(1).to(pts.dtype) + 1e-8)


def resample_valid(values: Tensor, valid: Tensor, count: int = ALIGN_POINTS) -> Tensor:
    """``values (S, H, W, C)`` of one sample, ``valid (S, H, W)`` -> ``(count, C)``: the valid entries
    picked at evenly spaced indices ``floor(i · n / count)`` (repeats when ``n < count``; ones
    when nothing is valid)."""
    picked = values[valid]
    n = picked.shape[0]
    if n == 0:
        return values.new_ones(count, values.shape[-1])
    step = torch.tensor(n / count, dtype=torch.float32)  # float32 index arithmetic, as F.interpolate(nearest)
    index = (torch.arange(count, dtype=torch.float32) * step).floor().long().to(values.device)
    return picked[index.clamp_max(n - 1)]


def l1_scale(x: Tensor, y: Tensor, w: Tensor, eps: float = 1e-7) -> Tensor:
    """The ``a`` minimising ``Σ_i w_i |a x_i − y_i|`` per row: ``x, y, w (B, n)`` -> ``(B,)``.

    The weighted median of ``y_i / x_i`` with weights ``w_i |x_i|`` (the first ratio, in increasing
    order, where the cumulative weight reaches half the total); ``|x|`` below ``eps`` counts as
    ``eps`` in the ratio."""
    sign = torch.sign(x)
    x, y = x * sign, y * sign
    ratio, order = (y / x.clamp_min(eps)).sort(dim=-1)
    cum = torch.gather(x * w, -1, order).cumsum(-1)
    slope = 2 * cum - cum[..., -1:]  # d/da of the objective just right of each sorted ratio
    first = torch.searchsorted(slope, torch.zeros_like(slope[..., :1]), side="left").clamp_max(x.shape[-1] - 1)
    return ratio.gather(-1, first).squeeze(-1)


def optimal_local_scale(pred: Tensor, gt: Tensor, weight: Tensor, valid: Tensor) -> Tensor:
    """``(B,)`` scales aligning ``pred`` to ``gt`` local points ``(B, S, H, W, 3)`` in weighted L1
    (``weight (B, S, H, W)``), fitted on :func:`resample_valid` points; no gradient; negative
    scales flipped."""
    with torch.no_grad():
        scales = []
        for b in range(pred.shape[0]):
            p = resample_valid(pred[b], valid[b])
            g = resample_valid(gt[b], valid[b])
            w = resample_valid(weight[b][..., None], valid[b])[:, 0]
            scales.append(l1_scale(p.reshape(1, -1), g.reshape(1, -1), w[:, None].expand(-1, 3).reshape(1, -1))[0])
        scale = torch.stack(scales)
        return torch.where(scale <= 0, -scale, scale)


def depth_edges(depth: Tensor, rtol: float, kernel: int = 3) -> Tensor:
    """``(..., H, W)`` bool: pixels whose ``kernel x kernel`` neighbourhood spans more than ``rtol``
    of their depth (``(max − min) / depth > rtol``)."""
    shape = depth.shape
    d = depth.reshape(-1, 1, *shape[-2:])
    span = F.max_pool2d(d, kernel, stride=1, padding=kernel // 2) + F.max_pool2d(-d, kernel, stride=1,
                                                                                padding=kernel // 2)
    return ((span / d).nan_to_num() > rtol).reshape(shape)


def _cell_normals(p: Tensor) -> list[Tensor]:
    """The normals of the four corner triangles of every 2x2 cell of ``p (..., H, W, 3)``, each
    ``(..., H-1, W-1, 3)``, apex at the right-down, right-up, left-up and left-down corner."""
    lu, ru, ld, rd = p[..., :-1, :-1, :], p[..., :-1, 1:, :], p[..., 1:, :-1, :], p[..., 1:, 1:, :]
    return [
        torch.cross(ru - rd, ld - rd, dim=-1),
        torch.cross(lu - ru, rd - ru, dim=-1),
        torch.cross(ld - lu, ru - lu, dim=-1),
        torch.cross(rd - ld, lu - ld, dim=-1),
    ]


def _cell_masks(m: Tensor) -> list[Tensor]:
    """Validity of the triangles of :func:`_cell_normals`: all three corners valid."""
    lu, ru, ld, rd = m[..., :-1, :-1], m[..., :-1, 1:], m[..., 1:, :-1], m[..., 1:, 1:]
    return [ru & ld & rd, lu & rd & ru, ld & ru & lu, rd & lu & ld]


def normal_loss(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """π3's normal term on local points ``(B, S, H, W, 3)`` (see the module docstring)."""
    mask = valid & ~depth_edges(gt[..., 2], rtol=0.03)
    lo, hi, beta = math.radians(1), math.radians(90), math.radians(3)
    total = pred.new_zeros(pred.shape[:-3] + (pred.shape[-3] - 1, pred.shape[-2] - 1))
    for n_pred, n_gt, m in zip(_cell_normals(pred), _cell_normals(gt), _cell_masks(mask)):
        angle = torch.atan2(torch.cross(n_pred, n_gt, dim=-1).norm(dim=-1) + 1e-12, (n_pred * n_gt).sum(-1))
        angle = angle.clamp(lo, hi)
        smooth = torch.where(angle < beta, 0.5 * angle.square() / beta, angle - 0.5 * beta)
        total = total + m * smooth
    return total.mean() / (4 * max(pred.shape[-3:-1]))


def scale_translations(poses: Tensor, factor: Tensor) -> Tensor:
    """``poses (B, S, 4, 4)`` with their translations multiplied by ``factor (B,)`` (out of place)."""
    t = poses[..., :3, 3:] * factor.view(-1, 1, 1, 1)
    return torch.cat((torch.cat((poses[..., :3, :3], t), dim=-1), poses[..., 3:, :]), dim=-2)


def rotation_angle(R_a: Tensor, R_b: Tensor, eps: float = 1e-6) -> Tensor:
    """Angle (radians) of ``R_a^T R_b`` for ``(..., 3, 3)`` rotations, the cosine clamped into
    ``[-1 + eps, 1 - eps]``."""
    trace = (R_a.transpose(-1, -2) @ R_b).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((trace - 1) / 2).clamp(-1 + eps, 1 - eps))


def camera_loss(pred_poses: Tensor, gt_poses: Tensor, translation_weight: float = 100.0) -> tuple[Tensor, Tensor]:
    """``(Huber_0.1 of relative translations, mean relative rotation angle)`` over every ordered pair
    of distinct views; poses ``(B, S, 4, 4)`` camera-to-world, in any common frame each."""
    S = pred_poses.shape[1]
    off = ~torch.eye(S, dtype=torch.bool, device=pred_poses.device)
    rel_pred = (invert_rigid(pred_poses)[:, :, None] @ pred_poses[:, None])[:, off]  # (B, S(S-1), 4, 4)
    rel_gt = (invert_rigid(gt_poses)[:, :, None] @ gt_poses[:, None])[:, off]
    trans = F.huber_loss(rel_pred[..., :3, 3], rel_gt[..., :3, 3], reduction="mean", delta=0.1)
    rot = rotation_angle(rel_pred[..., :3, :3], rel_gt[..., :3, :3]).mean()
    return trans, rot


def pi3_criterion(local_points: Tensor, camera_poses: Tensor, gt: dict[str, Tensor], conf_logits: Tensor | None = None,
                  normal_weight: float = 1.0, conf_weight: float = 0.05,
                  camera_weight: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """π3's loss (module docstring) from its raw outputs.

    Args:
        local_points: ``(B, S, H, W, 3)`` predicted points in each view's own frame.
        camera_poses: ``(B, S, 4, 4)`` predicted camera-to-world (any world frame).
        gt: :func:`fin3r.losses.views_ground_truth` of the batch (``pts3d``, ``pts3d_self``,
            ``valid``, ``rel_pose``).
        conf_logits: ``(B, S, H, W)`` confidence logits, or None (no confidence term).
        normal_weight, conf_weight, camera_weight: term weights (official 1, 0.05, 0.1).
    """
    valid = gt["valid"]
    local_points = local_points.float()
    camera_poses = camera_poses.float()
    if local_points.shape != gt["pts3d_self"].shape:
        raise InputError(f"pi3 replay: local points {tuple(local_points.shape)} do not match the ground "
                         f"truth {tuple(gt['pts3d_self'].shape)}")
    shape = (-1, 1, 1, 1, 1)
    gt_factor = mean_valid_norm(gt["pts3d"], valid).clamp_min(1e-8)
    gt_local = gt["pts3d_self"] / gt_factor.view(shape)
    gt_poses = scale_translations(gt["rel_pose"], 1.0 / gt_factor)
    pred_factor = mean_valid_norm(local_points, valid).clamp_min(1e-8)
    local = local_points / pred_factor.view(shape)
    poses = scale_translations(camera_poses, 1.0 / pred_factor)

    z = gt_local[..., 2]
    with torch.no_grad():
        mean_z = (torch.where(valid, z, torch.zeros_like(z)).sum((-2, -1), keepdim=True)
                  / (valid.sum((-2, -1), keepdim=True).to(z.dtype) + 1e-7))
        weight = 1.0 / (torch.maximum(z, 0.1 * mean_z) + 1e-6)
    scale = optimal_local_scale(local, gt_local, weight, valid)
    aligned = scale.view(shape) * local
    err = (aligned[valid] - gt_local[valid]).abs() * weight[valid][:, None]  # (n, 3)
    stats: dict[str, float] = {}
    if err.numel() == 0:
        loss = local.sum() * 0.0
        stats["local"] = 0.0
    else:
        loss = err.mean()
        stats["local"] = float(loss.detach())
    if normal_weight:
        normal = normal_loss(aligned, gt_local, valid)
        loss = loss + normal_weight * normal
        stats["normal"] = float(normal.detach())
    if conf_logits is not None and conf_weight and err.numel():
        target = (err.detach().mean(-1) < CONF_THRESHOLD).float()
        conf = F.binary_cross_entropy_with_logits(conf_logits.float()[valid], target)
        loss = loss + conf_weight * conf
        stats["conf"] = float(conf.detach())
    if camera_weight and poses.shape[1] > 1:
        trans, rot = camera_loss(scale_translations(poses, scale), gt_poses)
        cam = 100.0 * trans + rot
        loss = loss + camera_weight * cam
        stats.update(camera_trans=float(trans.detach()), camera_rot=float(rot.detach()))
    stats["scale"] = float(scale.mean())
    return loss, stats


def pi3_replay_loss(pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """π3's criterion on a replay batch: ``pred`` is :meth:`Pi3.predict_views` of ``batch["img"]``
    (its ``extras`` carry ``local_points`` and ``conf_logits``; ``cam2world`` the poses).
    ``alpha`` is accepted for the common replay interface and not used."""
    gt, _ = replay_targets(pred, batch)
    if "local_points" not in pred.extras or pred.cam2world is None:
        raise InputError("pi3 replay: the prediction lacks local points or camera poses (use Pi3.predict_views)")
    return pi3_criterion(pred.extras["local_points"], pred.cam2world, gt, pred.extras.get("conf_logits"))


__all__ = ["pi3_criterion", "pi3_replay_loss", "l1_scale", "optimal_local_scale", "normal_loss", "camera_loss",
           "depth_edges", "mean_valid_norm", "resample_valid", "rotation_angle", "scale_translations"]
