"""MoGe's per-image scoring of monocular geometry: every alignment variant, with its fallbacks.

:func:`score_mono` takes a prediction dict with MoGe's keys and a :class:`MonoGT` and returns
``{variant: {"rel", "delta1", ...}}``. Which variants are computed follows MoGe's fallback chain
(``research/evaluation.md`` 1.4 / 1.6):

================================  =======================================  ==========================
variant                           prediction used (first present)          alignment
================================  =======================================  ==========================
``depth_metric``                  depth_metric (metric GT only)            none
``depth_scale_invariant``         depth_scale_invariant, depth_metric      L1 relative scale (sample)
``depth_affine_invariant``        depth_affine, depth_scale, depth_metric  L1 relative affine (sample)
``disparity_affine_invariant``    disparity_affine, 1/depth_scale, 1/dm    least squares, all pixels
``depth_median``                  depth_scale_invariant, depth_metric      median ratio (CUT3R)
``points_metric``                 points_metric (metric GT only)           L1 xyz shift (sample)
``points_scale_invariant``        points_scale_invariant, points_metric    L1 relative scale (sample)
``points_affine_invariant``       points_affine, points_scale, points_m    L1 scale + xyz shift
================================  =======================================  ==========================

``depth_median`` is not a MoGe key: it is CUT3R's mono-depth protocol, provided for comparison.
Fits marked "(sample)" are solved on :func:`~fin3r.eval.alignment.alignment_sample_index`'s 64x64
sample of valid pixels; every metric is computed on all valid pixels. When the GT carries an
``edge`` mask (the synthetic world's depth-discontinuity pixels), each depth variant also reports
``rel_edge`` / ``delta1_edge`` on the valid edge pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fin3r.eval import alignment as al
from fin3r.eval import metrics as mt

DEPTH_VARIANTS = (
    "depth_metric",
    "depth_scale_invariant",
    "depth_affine_invariant",
    "disparity_affine_invariant",
    "depth_median",
)
POINT_VARIANTS = ("points_metric", "points_scale_invariant", "points_affine_invariant")
ALL_VARIANTS = DEPTH_VARIANTS + POINT_VARIANTS

__all__ = ["MonoGT", "score_mono", "DEPTH_VARIANTS", "POINT_VARIANTS", "ALL_VARIANTS"]


@dataclass
class MonoGT:
    """Ground truth of one evaluation image at the evaluation resolution.

    Attributes:
        depth: ``(H, W)`` planar depth (any value where ``mask`` is False).
        mask: ``(H, W)`` bool valid pixels.
        points: ``(H, W, 3)`` GT point map in the camera frame (OpenCV); needed for point variants.
        is_metric: whether ``depth`` is in metres (enables ``*_metric`` variants).
        edge: optional ``(H, W)`` bool depth-discontinuity pixels (reported separately).
    """

    depth: Tensor
    mask: Tensor
    points: Tensor | None = None
    is_metric: bool = True
    edge: Tensor | None = None


def _first(pred: dict, *keys: str) -> Tensor | None:
    for k in keys:
        if k in pred and pred[k] is not None:
            return pred[k]
    return None


def _depth_scores(aligned: Tensor, gt: MonoGT, full: bool) -> dict[str, float]:
    out = mt.depth_metrics(aligned, gt.depth, gt.mask, full=full)
    if gt.edge is not None:
        em = gt.edge & gt.mask
        if bool(em.any()):
            out["rel_edge"] = mt.abs_rel(aligned, gt.depth, em)
            out["delta1_edge"] = mt.delta(aligned, gt.depth, em)
    return out


@torch.no_grad()
def score_mono(
    pred: dict[str, Tensor],
    gt: MonoGT,
    variants: Sequence[str] | None = None,
    full: bool = False,
    sample_size: tuple[int, int] = (64, 64),
) -> dict[str, dict[str, float]]:
    """Score one image: ``{variant: {"rel", "delta1", ...}}`` (fractions).

    Args:
        pred: maps at the GT resolution with MoGe's keys (``depth_scale_invariant`` ``(H, W)``,
            ``points_scale_invariant`` ``(H, W, 3)``, ...).
        gt: the ground truth; ``gt.mask`` must have at least one pixel (callers exclude empty ones).
        variants: which variants to compute (default: every one the prediction supports).
        full: also the extra depth metrics (delta2/3, delta103, sq_rel, rmse, log_rmse).
        sample_size: the low-resolution alignment sample.
    """
    want = set(ALL_VARIANTS if variants is None else variants)
    unknown = want - set(ALL_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(ALL_VARIANTS)}")
    mask, gt_depth = gt.mask, gt.depth.float()
    if not bool(mask.any()):
        raise ValueError("score_mono: the ground truth has no valid pixel")
    sm, si = al.alignment_sample_index(mask, sample_size)
    sample = si[sm]  # flat pixel indices of the alignment sample (with repeats)

    def at_sample(x: Tensor) -> Tensor:
        return x.reshape(-1, *x.shape[2:])[sample]

    out: dict[str, dict[str, float]] = {}
    d_metric = _first(pred, "depth_metric")
    d_scale = _first(pred, "depth_scale_invariant", "depth_metric")
    d_affine = _first(pred, "depth_affine_invariant", "depth_scale_invariant", "depth_metric")
    disp = _first(pred, "disparity_affine_invariant")
    if disp is None and d_scale is not None:
        disp = 1 / d_scale
    g_s = at_sample(gt_depth)

    if "depth_metric" in want and d_metric is not None and gt.is_metric:
        out["depth_metric"] = _depth_scores(d_metric.float(), gt, full)
    if "depth_scale_invariant" in want and d_scale is not None:
        d = d_scale.float()
        s, _, _ = al.weighted_l1_scale(at_sample(d), g_s, 1 / g_s)
        out["depth_scale_invariant"] = _depth_scores(d * s, gt, full)
    if "depth_affine_invariant" in want and d_affine is not None:
        d = d_affine.float()
        s, t = al.weighted_l1_affine(at_sample(d), g_s, 1 / g_s)
        out["depth_affine_invariant"] = _depth_scores(d * s + t, gt, full)
    if "disparity_affine_invariant" in want and disp is not None:
        D = disp.float()
        a, b = al.lstsq_affine(D[mask], 1 / gt_depth[mask])
        aligned = 1 / (D * a + b).clamp_min(1 / gt_depth[mask].max().item())
        out["disparity_affine_invariant"] = _depth_scores(aligned, gt, full)
    if "depth_median" in want and d_scale is not None:
        d = d_scale.float()
        s = al.median_scale(d[mask], gt_depth[mask])
        out["depth_median"] = _depth_scores(d * s, gt, full)

    p_metric = _first(pred, "points_metric")
    p_scale = _first(pred, "points_scale_invariant", "points_metric")
    p_affine = _first(pred, "points_affine_invariant", "points_scale_invariant", "points_metric")
    if gt.points is None:
        p_metric = p_scale = p_affine = None
    else:
        gp = gt.points.float()
        gp_s = at_sample(gp)
        w_s = 1 / gp_s.norm(dim=-1)
    if "points_metric" in want and p_metric is not None and gt.is_metric:
        p = p_metric.float()
        shift = al.weighted_l1_shift((gp_s - at_sample(p)).T, w_s[None])  # (3,)
        out["points_metric"] = _point_scores(p + shift, gp, mask)
    if "points_scale_invariant" in want and p_scale is not None:
        p = p_scale.float()
        w3 = w_s[:, None].expand(-1, 3).reshape(-1)
        s, _, _ = al.weighted_l1_scale(at_sample(p).reshape(-1), gp_s.reshape(-1), w3)
        out["points_scale_invariant"] = _point_scores(p * s, gp, mask)
    if "points_affine_invariant" in want and p_affine is not None:
        p = p_affine.float()
        s, shift = al.weighted_l1_points_scale_shift(at_sample(p), gp_s, w_s)
        out["points_affine_invariant"] = _point_scores(p * s + shift, gp, mask)
    return out


def _point_scores(aligned: Tensor, gt_points: Tensor, mask: Tensor) -> dict[str, float]:
    p, g = aligned[mask], gt_points[mask]
    return {"rel": mt.point_rel(p, g), "delta1": mt.point_delta1(p, g)}
