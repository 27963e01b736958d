"""VGGT replay: its training loss (depth, point and camera terms), simplified where stated."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fin3r.losses import replay_targets
from fin3r.models.heads.camera import cameras_to_pose_encoding


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


def vggt_criterion(
    pred: Any,
    gt: dict[str, Tensor],
    K: Tensor,
    alpha: float = 0.2,
    camera_weight: float = 5.0,
    valid_range: float = 0.98,
) -> tuple[Tensor, dict[str, float]]:
    """VGGT's training loss (the official ``training/loss.py``), simplified where stated.

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


def vggt_replay_loss(pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """VGGT's criterion on a replay batch (:func:`vggt_criterion`)."""
    gt, _ = replay_targets(pred, batch)
    return vggt_criterion(pred, gt, batch["K"], alpha)


__all__ = ["vggt_criterion", "vggt_replay_loss"]
