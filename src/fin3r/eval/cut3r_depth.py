"""CUT3R's depth protocol (its ``eval/monodepth`` and ``eval/video_depth``), followed exactly.

:func:`cut3r_depth_metrics` scores one depth map -- or a whole sequence stacked ``(T, H, W)``,
which CUT3R's video evaluation aligns with ONE factor -- as CUT3R's ``depth_evaluation`` does:

1. valid pixels: ``gt > 0`` and, when ``max_depth`` is set, ``gt < max_depth`` (so ``+inf`` GT is
   valid without a ``max_depth``); an optional ``mask`` selects among them for the metrics only
   (CUT3R's ``custom_mask``: the alignment still uses every valid pixel);
2. alignment on the valid pixels (``align``): ``"median"`` -- ``median(g) / median(p)`` with
   torch's lower middle value (CUT3R's mono default); ``"scale"`` -- the IRLS absolute-L1 scale
   (:func:`~fin3r.eval.alignment.irls_l1_scale`, video ``--align scale``); ``"scale&shift"`` --
   Adam least absolute deviation (:func:`~fin3r.eval.alignment.adam_l1_scale_shift`);
   ``"metric"`` -- none;
3. optional clipping of the aligned prediction (``post_clip_min`` / ``post_clip_max``; Sintel 70);
4. metrics: ``rel = mean |p - g| / g`` (no epsilon), ``sq_rel = mean (p - g)^2 / g``, ``rmse``;
   then the prediction is clamped to ``>= 1e-5`` and ``log_rmse`` and the inlier ratios
   ``delta0`` (``max(p/g, g/p) < 1``, CUT3R's "δ < 1."), ``delta1`` (< 1.25), ``delta2``
   (< 1.25^2), ``delta3`` (< 1.25^3) are computed on the clamped values, so a negative prediction
   is an outlier (under MoGe's ``delta`` it is an inlier).

Precision follows torch's type promotion of the inputs, as in CUT3R: its readers give float64 GT
(Bonn, KITTI) and float32 predictions, so medians and ratios are taken in float64; pass the GT in
the precision its reader gives. Results are fractions plus ``valid_pixels``; CUT3R aggregates over
images or sequences with :func:`pixel_weighted_mean` (not a per-image mean).

:func:`resize_cubic` is the resampling CUT3R applies to low-resolution predictions before scoring
(``cv2.resize`` with ``INTER_CUBIC`` to the GT size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from fin3r.eval.alignment import adam_l1_scale_shift, irls_l1_scale

__all__ = [
    "CUT3R_ALIGNMENTS",
    "CUT3R_METRICS",
    "Cut3rDepthSettings",
    "CUT3R_DATASET_SETTINGS",
    "cut3r_depth_metrics",
    "pixel_weighted_mean",
    "resize_cubic",
]

CUT3R_ALIGNMENTS = ("median", "scale", "scale&shift", "metric")
#: metric keys in CUT3R's order ("Abs Rel", "Sq Rel", "RMSE", "Log RMSE", "δ < 1.", "δ < 1.25", ...)
CUT3R_METRICS = ("rel", "sq_rel", "rmse", "log_rmse", "delta0", "delta1", "delta2", "delta3")


@dataclass
class Cut3rDepthSettings:
    """Per-dataset settings of CUT3R's depth evaluation.

    Attributes:
        max_depth: GT at or beyond this is invalid (None: only ``gt > 0``).
        post_clip_max: clip the aligned prediction to at most this (CUT3R: Sintel 70).
        post_clip_min: clip the aligned prediction to at least this (unused by CUT3R's scripts).
    """

    max_depth: float | None = None
    post_clip_max: float | None = None
    post_clip_min: float | None = None


#: CUT3R's ``eval_metrics.py`` / ``eval_depth.py`` settings per data set (mono and video agree;
#: the video evaluation also clips Sintel at 70 and leaves Bonn unclipped, as the mono one does)
CUT3R_DATASET_SETTINGS: dict[str, Cut3rDepthSettings] = {
    "sintel": Cut3rDepthSettings(max_depth=70.0, post_clip_max=70.0),
    "bonn": Cut3rDepthSettings(max_depth=70.0),
    "kitti": Cut3rDepthSettings(max_depth=None),
    "nyu": Cut3rDepthSettings(max_depth=None),
}


def _as_tensor(x) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


@torch.no_grad()
def cut3r_depth_metrics(
    pred: Tensor | np.ndarray,
    gt: Tensor | np.ndarray,
    align: str = "median",
    settings: Cut3rDepthSettings | None = None,
    mask: Tensor | np.ndarray | None = None,
    lad_lr: float = 1e-4,
    lad_iters: int = 1000,
) -> dict[str, float]:
    """Score ``pred`` against ``gt`` (``(H, W)`` or a sequence ``(T, H, W)``) as CUT3R does.

    Args:
        pred, gt: same shape; dtypes are kept (see the module doc on precision).
        align: one of :data:`CUT3R_ALIGNMENTS`.
        settings: ``max_depth`` and the post-alignment clipping.
        mask: optional bool selection among the valid pixels for the metrics only (CUT3R's
            ``custom_mask``; ``valid_pixels`` then counts the selected pixels).
        lad_lr, lad_iters: the Adam settings of ``"scale&shift"``.

    Returns:
        ``{"rel", "sq_rel", "rmse", "log_rmse", "delta0", "delta1", "delta2", "delta3"}``
        (fractions), ``"valid_pixels"`` (int) and ``"scale"`` / ``"shift"`` of the alignment.
        With no valid pixel every metric is 0 and ``valid_pixels`` 0, as in CUT3R (so the
        image carries no weight in :func:`pixel_weighted_mean`).
    """
    if align not in CUT3R_ALIGNMENTS:
        raise ValueError(f"unknown CUT3R alignment {align!r}; known: {list(CUT3R_ALIGNMENTS)}")
    settings = settings or Cut3rDepthSettings()
    pred_all, gt_all = _as_tensor(pred), _as_tensor(gt)
    if pred_all.shape != gt_all.shape:
        raise ValueError(f"prediction {tuple(pred_all.shape)} and GT {tuple(gt_all.shape)} differ in shape")
    valid = gt_all > 0
    if settings.max_depth is not None:
        valid &= gt_all < settings.max_depth
    p, g = pred_all[valid], gt_all[valid]
    n_valid = int(valid.sum())
    if n_valid == 0:
        return {**{k: 0.0 for k in CUT3R_METRICS}, "valid_pixels": 0, "scale": math.nan, "shift": math.nan}
    scale, shift = 1.0, 0.0
    if align == "median":
        s = torch.median(g) / torch.median(p)
        p = p.clone()
        p *= s  # in place: the prediction keeps its dtype, as in CUT3R
        scale = float(s)
    elif align == "scale":
        s = irls_l1_scale(p, g)
        p = s * p
        scale = float(s)
    elif align == "scale&shift":
        scale, shift = adam_l1_scale_shift(p, g, lr=lad_lr, max_iters=lad_iters)
        p = scale * p + shift
    if settings.post_clip_min is not None:
        p = p.clamp(min=settings.post_clip_min)
    if settings.post_clip_max is not None:
        p = p.clamp(max=settings.post_clip_max)
    if mask is not None:
        sel = _as_tensor(mask).bool()[valid]
        p, g = p[sel], g[sel]
        n_valid = int(sel.sum())
        if n_valid == 0:
            return {**{k: 0.0 for k in CUT3R_METRICS}, "valid_pixels": 0, "scale": scale, "shift": shift}
    diff = p - g
    out = {
        "rel": torch.mean(diff.abs() / g).item(),
        "sq_rel": torch.mean(diff**2 / g).item(),
        "rmse": torch.sqrt(torch.mean(diff**2)).item(),
    }
    p = p.clamp(min=1e-5)
    out["log_rmse"] = torch.sqrt(torch.mean((torch.log(p) - torch.log(g)) ** 2)).item()
    ratio = torch.maximum(p / g, g / p)
    for key, thr in (("delta0", 1.0), ("delta1", 1.25), ("delta2", 1.25**2), ("delta3", 1.25**3)):
        out[key] = torch.mean((ratio < thr).float()).item()
    out.update(valid_pixels=n_valid, scale=scale, shift=shift)
    return out


def pixel_weighted_mean(records: Sequence[dict], keys: Sequence[str] = CUT3R_METRICS) -> dict[str, float]:
    """CUT3R's aggregate: each metric averaged over ``records`` weighted by ``valid_pixels``
    (``np.average(..., weights=valid_pixels)``). Records with no valid pixel carry no weight; with
    no weight at all the metrics are NaN. Adds ``valid_pixels`` (the total)."""
    total = sum(int(r.get("valid_pixels", 0)) for r in records)
    out: dict[str, float] = {}
    for k in keys:
        vals = [(float(r[k]), int(r["valid_pixels"])) for r in records if k in r]
        w = sum(n for _, n in vals)
        out[k] = sum(v * n for v, n in vals if n) / w if w else math.nan
    out["valid_pixels"] = total
    return out


def resize_cubic(pred: Tensor | np.ndarray, size: tuple[int, int]) -> Tensor:
    """Resize a ``(h, w)`` depth map to ``size = (H, W)`` with OpenCV's bicubic interpolation
    (``cv2.INTER_CUBIC``, CUT3R's ``eval_metrics.py``); float32 in and out."""
    arr = pred.detach().cpu().numpy() if isinstance(pred, Tensor) else np.asarray(pred)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape == tuple(size):
        return torch.from_numpy(arr.copy())
    return torch.from_numpy(cv2.resize(arr, (int(size[1]), int(size[0])), interpolation=cv2.INTER_CUBIC))
