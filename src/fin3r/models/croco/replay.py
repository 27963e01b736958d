"""DUSt3R / MASt3R replay: the official ``ConfLoss(Regr3D(L21, norm_mode), alpha)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fin3r.errors import InputError
from fin3r.losses import fp32, replay_targets


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
    pts3d_pred = fp32(pts3d_pred)
    conf = fp32(conf)
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


def dust3r_replay_loss(pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """DUSt3R's criterion on a replay batch: ``avg_dis`` (scale-invariant)."""
    gt, _ = replay_targets(pred, batch)
    return dust3r_conf_regr3d_loss(pred.pts3d, pred.conf, gt["pts3d"], gt["valid"], alpha, "avg_dis")


def mast3r_replay_loss(pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """MASt3R's criterion on a replay batch: ``?avg_dis`` (metric samples supervised in metres)."""
    gt, metric = replay_targets(pred, batch)
    return dust3r_conf_regr3d_loss(pred.pts3d, pred.conf, gt["pts3d"], gt["valid"], alpha, "?avg_dis", metric)


__all__ = ["avg_dis_factor", "dust3r_conf_regr3d_loss", "dust3r_replay_loss", "mast3r_replay_loss"]
