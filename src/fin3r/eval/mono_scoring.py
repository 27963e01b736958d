"""MoGe's per-image scoring of monocular geometry: every alignment variant, with its fallbacks.

:func:`score_mono` takes a prediction dict with MoGe's keys and a :class:`MonoGT` and returns
``{variant: {"rel", "delta1", ...}}``. Which variants are computed follows MoGe's fallback chain
(``docs/evaluation.md``):

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

``depth_median`` is not a MoGe key: it is CUT3R's mono-depth protocol, followed exactly
(:func:`~fin3r.eval.cut3r_depth.cut3r_depth_metrics`): valid pixels are MoGe's mask further
restricted to ``gt > 0`` and ``gt < max_depth`` (``median_settings``), the median ratio is taken
in float64 (CUT3R's GT precision) with torch's lower middle value, ``rel`` has no epsilon, and the
aligned prediction is clamped to ``>= 1e-5`` before ``delta*`` and ``log_rmse`` (a negative
prediction is an outlier there, an inlier under MoGe's variants). When the prediction carries
``depth_model_res`` (the model's output before resizing), it is upsampled to the GT with OpenCV's
bicubic interpolation first, as CUT3R's ``eval_metrics.py`` does. Its ``valid_pixels`` are reported
so that benchmark summaries can weight images by them (CUT3R's aggregation).
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
from fin3r.eval.boundary import BOUNDARY_RADII, boundary_f1
from fin3r.eval.cut3r_depth import Cut3rDepthSettings, cut3r_depth_metrics, resize_cubic

DEPTH_VARIANTS = (
    "depth_metric",
    "depth_scale_invariant",
    "depth_affine_invariant",
    "disparity_affine_invariant",
    "depth_median",
)
POINT_VARIANTS = ("points_metric", "points_scale_invariant", "points_affine_invariant")
#: MoGe's other figures: boundary F1 (sharp-boundary benchmarks), field of view (models predicting
#: intrinsics), local point maps (segmented benchmarks, with a point prediction)
EXTRA_METRICS = ("boundary", "fov_x", "local_points")
ALL_VARIANTS = DEPTH_VARIANTS + POINT_VARIANTS + EXTRA_METRICS

__all__ = ["MonoGT", "score_mono", "fov_x_errors", "local_point_scores", "DEPTH_VARIANTS", "POINT_VARIANTS",
           "EXTRA_METRICS", "ALL_VARIANTS"]


@dataclass
class MonoGT:
    """Ground truth of one evaluation image at the evaluation resolution.

    Attributes:
        depth: ``(H, W)`` planar depth (any value where ``mask`` is False).
        mask: ``(H, W)`` bool valid pixels.
        points: ``(H, W, 3)`` GT point map in the camera frame (OpenCV); needed for point variants.
        is_metric: whether ``depth`` is in metres (enables ``*_metric`` variants).
        edge: optional ``(H, W)`` bool depth-discontinuity pixels (reported separately).
        intrinsics: ``(3, 3)`` normalized GT intrinsics (for ``fov_x``).
        segmentation: ``(H, W)`` long segment ids (for ``local_points``).
        segment_ids: the ids that count as segments (MoGe's filtered labels; default: all ids).
        has_sharp_boundary: the benchmark reports boundary F1.
    """

    depth: Tensor
    mask: Tensor
    points: Tensor | None = None
    is_metric: bool = True
    edge: Tensor | None = None
    intrinsics: Tensor | None = None
    segmentation: Tensor | None = None
    segment_ids: Sequence[int] | None = None
    has_sharp_boundary: bool = False


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
    median_settings: Cut3rDepthSettings | None = None,
) -> dict[str, dict[str, float]]:
    """Score one image: ``{variant: {"rel", "delta1", ...}}`` (fractions).

    Args:
        pred: maps at the GT resolution with MoGe's keys (``depth_scale_invariant`` ``(H, W)``,
            ``points_scale_invariant`` ``(H, W, 3)``, ...).
        gt: the ground truth; ``gt.mask`` must have at least one pixel (callers exclude empty ones).
        variants: which variants to compute (default: every one the prediction supports).
        full: also the extra depth metrics (delta2/3, delta103, sq_rel, rmse, log_rmse).
        sample_size: the low-resolution alignment sample.
        median_settings: CUT3R's ``max_depth`` / post-alignment clipping for ``depth_median``.
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
    if d_metric is not None and not gt.is_metric:
        d_metric = None  # metric predictions are scored only on metric benchmarks (MoGe)
    source = {"depth_metric": d_metric, "depth_scale_invariant": d_scale, "depth_affine_invariant": d_affine,
              "disparity_affine_invariant": disp}
    cache: dict[str, tuple[Tensor, Tensor]] = {}

    def aligned(variant: str) -> tuple[Tensor, Tensor]:
        """``(depth scored by the variant, depth MoGe's boundary F1 takes from it)``."""
        if variant not in cache:
            d = source[variant].float()
            if variant == "depth_metric":
                cache[variant] = (d, d)
            elif variant == "depth_scale_invariant":
                s, _, _ = al.weighted_l1_scale(at_sample(d), g_s, 1 / g_s)
                cache[variant] = (d * s,) * 2
            elif variant == "depth_affine_invariant":
                s, t = al.weighted_l1_affine(at_sample(d), g_s, 1 / g_s)
                cache[variant] = (d * s + t,) * 2
            else:  # least squares in disparity on every valid pixel, clamped at 1 / max(gt)
                a, b = al.lstsq_affine(d[mask], 1 / gt_depth[mask])
                disp_aligned = d * a + b
                cache[variant] = (1 / disp_aligned.clamp_min(1 / gt_depth[mask].max().item()),
                                  1 / disp_aligned.clamp_min(1e-6))
        return cache[variant]

    for variant in ("depth_metric", "depth_scale_invariant", "depth_affine_invariant", "disparity_affine_invariant"):
        if variant in want and source[variant] is not None:
            out[variant] = _depth_scores(aligned(variant)[0], gt, full)
    if "depth_median" in want and d_scale is not None:
        out["depth_median"] = _cut3r_median_scores(pred, d_scale, gt, full, median_settings)
    if "boundary" in want and gt.has_sharp_boundary:
        first = next((v for v in source if source[v] is not None), None)  # MoGe's order
        if first is not None:
            depth = aligned(first)[1]
            out["boundary"] = {f"radius{r}_f1": boundary_f1(depth, gt_depth, mask, r) for r in BOUNDARY_RADII}
    if "fov_x" in want and pred.get("intrinsics") is not None and gt.intrinsics is not None:
        out["fov_x"] = fov_x_errors(pred["intrinsics"], gt.intrinsics)

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
    first_points = next((k for k in pred if "points" in k and pred[k] is not None), None)  # MoGe: dict order
    if "local_points" in want and gt.points is not None and gt.segmentation is not None and first_points:
        local = local_point_scores(pred[first_points].float(), gt, sm, si)
        if local:
            out["local_points"] = local
    return out


def fov_x_errors(pred_intrinsics: Tensor, gt_intrinsics: Tensor) -> dict[str, float]:
    """MoGe's ``fov_x``: ``mae`` = ``|fov_x(pred) - fov_x(gt)|`` and ``deviation`` (signed), in
    degrees, from normalized ``(3, 3)`` intrinsics (``fov_x = 2 atan(0.5 / fx)``)."""
    fov_p = 2 * torch.atan(0.5 / pred_intrinsics[..., 0, 0].float())
    fov_g = 2 * torch.atan(0.5 / gt_intrinsics[..., 0, 0].float())
    diff = torch.rad2deg(fov_p - fov_g)
    return {"mae": diff.abs().mean().item(), "deviation": diff.mean().item()}


def local_point_scores(points: Tensor, gt: MonoGT, sample_mask: Tensor, sample_index: Tensor,
                       min_samples: int = 10) -> dict[str, float]:
    """MoGe's ``local_points``: per GT segment, the prediction ``points (H, W, 3)`` is aligned by
    the L1 scale + xyz shift (weights ``1 / D``) on the segment's pixels of the alignment sample
    (segments with fewer than ``min_samples`` there are skipped) and scored on its valid pixels:
    ``rel = mean ||p - g|| / D``, ``delta1 = mean[||p - g|| < 0.25 D]`` with ``D`` the largest
    side of the GT segment's bounding box. ``sample_mask (h, w)`` / ``sample_index (h, w)`` are
    :func:`~fin3r.eval.alignment.alignment_sample_index`'s. Returns the mean over segments
    (``{}`` if none qualifies)."""
    seg, ids = gt.segmentation, gt.segment_ids
    if ids is None:
        ids = [int(i) for i in torch.unique(seg).tolist()]
    seg_lr = seg.reshape(-1)[sample_index]  # (h, w) segment id of each sample cell
    flat_p, flat_g = points.reshape(-1, 3), gt.points.float().reshape(-1, 3)
    scores = []
    for sid in ids:
        sel_lr = (seg_lr == sid) & sample_mask
        if int(sel_lr.sum()) < min_samples:
            continue
        sel = (seg == sid) & gt.mask
        g = gt.points.float()[sel]
        diameter = (g.max(dim=0).values - g.min(dim=0).values).max()
        idx = sample_index[sel_lr]
        s, shift = al.weighted_l1_points_scale_shift(flat_p[idx], flat_g[idx], (1 / diameter).expand(idx.shape[0]))
        err = (points[sel] * s + shift - g).norm(dim=-1)
        scores.append({"rel": (err / diameter).mean().item(), "delta1": (err < 0.25 * diameter).float().mean().item()})
    return mt.key_average(scores) if scores else {}


def _cut3r_median_scores(
    pred: dict, depth: Tensor, gt: MonoGT, full: bool, settings: Cut3rDepthSettings | None
) -> dict[str, float]:
    """``depth_median``: CUT3R's per-image median scaling and metrics (see the module doc)."""
    low_res = pred.get("depth_model_res")
    if low_res is not None and tuple(low_res.shape[-2:]) != tuple(gt.depth.shape):
        depth = resize_cubic(low_res, tuple(gt.depth.shape))
    # pixels outside MoGe's mask become invalid for CUT3R (gt = 0); the GT is read in float64
    gt64 = torch.where(gt.mask, gt.depth.double(), torch.zeros((), dtype=torch.float64))
    res = cut3r_depth_metrics(depth.float(), gt64, "median", settings)
    keys = ("rel", "delta1", "delta0", "delta2", "delta3", "sq_rel", "rmse", "log_rmse") if full else ("rel", "delta1")
    out = {k: res[k] for k in keys}
    out["valid_pixels"] = res["valid_pixels"]
    if gt.edge is not None and bool((gt.edge & gt.mask).any()):
        edge = cut3r_depth_metrics(depth.float(), gt64, "median", settings, mask=gt.edge)
        if edge["valid_pixels"]:
            out["rel_edge"], out["delta1_edge"] = edge["rel"], edge["delta1"]
    return out


def _point_scores(aligned: Tensor, gt_points: Tensor, mask: Tensor) -> dict[str, float]:
    p, g = aligned[mask], gt_points[mask]
    return {"rel": mt.point_rel(p, g), "delta1": mt.point_delta1(p, g)}
