"""Scoring a model on held-out pairs of the synthetic world (the demo's evaluation), and the one
definition of *edge pixels* that ``fin3r demo`` and ``fin3r eval world`` share (:func:`edge_mask`).

Per scene (the unit of the paired statistics of :mod:`fin3r.eval.paired`), :func:`evaluate_world`
reports monocular AbsRel / delta1 (scale-invariant), AbsRel on edge pixels, the multi-view
pointmap error, the relative-pose error and the encoder token norms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm import tqdm

from fin3r.data.world_views import WorldViews, blur_depth, pair_batch
from fin3r.diagnose import token_norms
from fin3r.eval.alignment import absrel_scaled
from fin3r.eval.metrics import abs_rel, delta1, pose_auc, pose_errors
from fin3r.eval.relpose import solve_pnp
from fin3r.geometry import align_scale, relative_pose


#: the coarse resolution of :func:`edge_mask` when none is given: the supervision pool of the
#: packaged demo base
EDGE_POOL = 16


def edge_mask(depth: Tensor, valid: Tensor, pool: int = EDGE_POOL, thresh: float = 0.05) -> Tensor:
    """Depth-edge pixels: where the low-resolution depth (:func:`blur_depth` with ``pool``) differs
    from the sharp depth by more than ``thresh`` relative -- the detail a coarse model lacks.
    ``depth, valid (..., H, W) -> (..., H, W)`` bool."""
    low = blur_depth(depth, valid, pool)
    return valid & ((low - depth).abs() > thresh * depth.clamp_min(1e-6))


@torch.no_grad()
def mean_token_norms(model, img: Tensor, batch: int = 64) -> tuple[Tensor, Tensor]:
    """Per-image mean L2 norm of the encoder tokens, after and before the encoder's final norm
    (``fin3r.diagnose.token_norms``): ``img (B, 3, H, W) -> (post (B,), pre (B,))``."""
    norms = token_norms(model, img, batch)
    return norms["post"].reshape(img.shape[0], -1).mean(1), norms["pre"].reshape(img.shape[0], -1).mean(1)


@torch.no_grad()
def evaluate_world(
    model,
    eval_views: WorldViews,
    edge_pool: int = 8,
    batch: int = 32,
    progress: bool = False,
) -> dict:
    """Score ``model`` on held-out pairs (views 0 and 1 of every scene of ``eval_views``).

    Per scene (the unit of the paired statistics; both views count for the monocular figures):

    - ``abs_rel``, ``delta1``: monocular depth (``predict_mono``) after the AbsRel-optimal scale
      (scale-invariant), against the *sharp* ground truth, mean of the two views;
    - ``edge_abs_rel``: the same AbsRel restricted to :func:`edge_mask` pixels;
    - ``pose_err``: relative pose error (max of rotation and translation-direction angle, degrees)
      of view 1 w.r.t. view 0: PnP-RANSAC (``fin3r.eval.relpose.solve_pnp``, the ``fin3r eval``
      protocol) on view 1's points in view 0's frame from the pair prediction, with the true
      intrinsics; summarised as AUC@5/10/20;
    - ``mv_err``: multi-view pointmap error ``mean ||s P - G|| / mean ||G||`` of both views in view
      0's frame with one least-squares scale ``s``;
    - ``norm_post``, ``norm_pre``: mean encoder token norm after / before the encoder's final norm.

    Returns:
        ``{"per_scene": {metric: (N,) float64 tensor}, "summary": {metric: mean},
        "pose_auc": {"auc5", "auc10", "auc20"}, "n_scenes", "n_views"}``.
    """
    model.eval()
    n = eval_views.num_scenes
    keys = ("abs_rel", "delta1", "edge_abs_rel", "mv_err", "pose_err", "norm_post", "norm_pre")
    per = {k: torch.zeros(n, dtype=torch.float64) for k in keys}
    starts = range(0, n, batch)
    if progress:
        starts = tqdm(starts, desc="evaluate", unit="batch", leave=False)
    for s0 in starts:
        scene = torch.arange(s0, min(n, s0 + batch))
        zeros, ones = torch.zeros_like(scene), torch.ones_like(scene)
        pair = pair_batch(eval_views, scene, zeros, ones)
        B = scene.numel()
        img = pair["img"].flatten(0, 1)  # (2B, 3, H, W)
        mono = model.predict_mono(img)
        depth_gt = pair["depth"].flatten(0, 1)
        valid = pair["valid"].flatten(0, 1)
        edges = edge_mask(depth_gt, valid, edge_pool)
        post, pre = mean_token_norms(model, img)
        views_pred = model.predict_views(pair["img"])
        scale = align_scale(views_pred.pts3d, pair["pts3d"], pair["valid"])
        err = (scale[:, None, None, None, None] * views_pred.pts3d - pair["pts3d"]).norm(dim=-1)
        gt_norm = pair["pts3d"].norm(dim=-1)
        mv_valid = pair["valid"].float()
        mv = (err * mv_valid).flatten(1).sum(1) / (gt_norm * mv_valid).flatten(1).sum(1).clamp_min(1e-12)
        T_gt = relative_pose(pair["cam2world"][:, 1], pair["cam2world"][:, 0])  # cam 0 -> cam 1
        for k in range(B):
            i = int(scene[k])
            ar, d1, ea = [], [], []
            for v in (2 * k, 2 * k + 1):
                m = valid[v]
                pred = absrel_scaled(mono.depth[v], depth_gt[v], m)
                ar.append(abs_rel(pred, depth_gt[v], m))
                d1.append(delta1(pred, depth_gt[v], m))
                if edges[v].any():
                    ea.append(abs_rel(pred, depth_gt[v], edges[v]))
            per["abs_rel"][i] = sum(ar) / 2
            per["delta1"][i] = sum(d1) / 2
            per["edge_abs_rel"][i] = sum(ea) / len(ea) if ea else math.nan
            T_pred = solve_pnp(views_pred.pts3d[k, 1].double().numpy(), pair["K"][k, 1].double().numpy())
            per["pose_err"][i] = float(pose_errors(torch.from_numpy(T_pred).float(), T_gt[k])["max"])
            per["mv_err"][i] = float(mv[k])
            per["norm_post"][i] = float(post[2 * k : 2 * k + 2].mean())
            per["norm_pre"][i] = float(pre[2 * k : 2 * k + 2].mean())
    summary = {k: float(torch.nanmean(v)) for k, v in per.items() if k != "pose_err"}
    aucs = pose_auc(per["pose_err"], (5, 10, 20))
    summary.update(auc5=aucs[0], auc10=aucs[1], auc20=aucs[2])
    return {"per_scene": per, "summary": summary, "n_scenes": n, "n_views": 2 * n}


def floor_figures(eval_views: WorldViews, pool: int) -> dict:
    """The figures of the blurred ground truth itself (what a perfect coarse model would score):
    ``{"abs_rel", "delta1", "edge_abs_rel"}`` on views 0 and 1 of every scene."""
    depth = eval_views.depth[:, :2].flatten(0, 1)
    valid = eval_views.valid[:, :2].flatten(0, 1)
    low = blur_depth(depth, valid, pool)
    edges = edge_mask(depth, valid, pool)
    ar, d1, ea = [], [], []
    for v in range(depth.shape[0]):
        m = valid[v]
        pred = absrel_scaled(low[v], depth[v], m)
        ar.append(abs_rel(pred, depth[v], m))
        d1.append(delta1(pred, depth[v], m))
        if edges[v].any():
            ea.append(abs_rel(pred, depth[v], edges[v]))
    return {
        "abs_rel": sum(ar) / len(ar),
        "delta1": sum(d1) / len(d1),
        "edge_abs_rel": sum(ea) / max(len(ea), 1),
        "edge_fraction": float(edges.float().mean()),
    }


__all__ = ["EDGE_POOL", "edge_mask", "mean_token_norms", "evaluate_world", "floor_figures"]
