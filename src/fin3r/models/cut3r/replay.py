"""CUT3R replay: ``ConfLoss(Regr3DPose(L21, '?avg_dis'), alpha)``, simplified (see
:func:`cut3r_replay_loss`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fin3r.geometry import matrix_to_quaternion
from fin3r.losses import replay_targets
from fin3r.models.croco.replay import avg_dis_factor


def _pose_loss(pred_rel: Tensor, gt_rel: Tensor, pred_factor: Tensor, gt_factor: Tensor) -> Tensor:
    """CUT3R's pose term: ``mean||t̂/ν̂ − t/ν|| + mean||q̂ − q||`` (quaternion sign fixed, w >= 0)."""
    t_pred = pred_rel[..., :3, 3] / pred_factor.view(-1, 1, 1)
    t_gt = gt_rel[..., :3, 3] / gt_factor.view(-1, 1, 1)
    q_pred = matrix_to_quaternion(pred_rel[..., :3, :3])
    q_gt = matrix_to_quaternion(gt_rel[..., :3, :3])
    return (t_pred - t_gt).norm(dim=-1).mean() + (q_pred - q_gt).norm(dim=-1).mean()


def cut3r_pointmap_pose_loss(pred: Any, gt: dict[str, Tensor], metric: Tensor, alpha: float = 0.2):
    """CUT3R ``ConfLoss(Regr3DPose(L21, '?avg_dis'), alpha)`` simplified:

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


def cut3r_replay_loss(pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """CUT3R's criterion on a replay batch (:func:`cut3r_pointmap_pose_loss`)."""
    gt, metric = replay_targets(pred, batch)
    return cut3r_pointmap_pose_loss(pred, gt, metric, alpha)


__all__ = ["cut3r_pointmap_pose_loss", "cut3r_replay_loss"]
