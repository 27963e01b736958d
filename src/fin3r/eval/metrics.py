"""Evaluation metrics: depth, point maps, relative pose, and 3-D reconstruction.

Pure functions on tensors. Depth and point metrics take the values at the valid pixels already
selected (``pred[mask]``), or a ``mask``; they return Python floats as fractions (papers print
``x 100``). Conventions (``docs/evaluation.md``):

- ``abs_rel`` = ``mean |p - g| / (g + eps)`` with MoGe's ``eps = 1e-6`` (CUT3R uses none: pass 0).
- ``delta(p, g, thr)`` = ``mean[max(g / p, p / g) < thr]`` exactly as MoGe: there is no positivity
  check, so a negative prediction makes both ratios negative and counts as an inlier. CUT3R clamps
  predictions to ``>= 1e-5`` first; do that before calling to follow CUT3R.
- Pose errors in degrees; :func:`pose_auc` is the SuperGlue / LoFTR ``error_auc`` (an error equal
  to a threshold does not count; the recall curve is flat up to the threshold).
- Reconstruction: accuracy / completeness (mean and median nearest-neighbour distance) and normal
  consistency, with SciPy's KD-tree when installed, else chunked brute-force nearest neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "abs_rel",
    "sq_rel",
    "rmse",
    "log_rmse",
    "delta",
    "delta1",
    "depth_metrics",
    "point_rel",
    "point_delta1",
    "rotation_error_deg",
    "translation_error_deg",
    "pose_errors",
    "pose_auc",
    "nearest_neighbors",
    "accuracy_completeness",
    "key_average",
]


def _select(pred: Tensor, gt: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if mask is not None:
        return pred[mask], gt[mask]
    return pred.reshape(-1), gt.reshape(-1)


def abs_rel(pred: Tensor, gt: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> float:
    """Mean relative error ``|p - g| / (g + eps)`` over ``mask`` (default: all elements)."""
    p, g = _select(pred, gt, mask)
    return ((p - g).abs() / (g + eps)).mean().item()


def sq_rel(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """Mean ``(p - g)^2 / g``."""
    p, g = _select(pred, gt, mask)
    return ((p - g) ** 2 / g).mean().item()


def rmse(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """Root mean squared error."""
    p, g = _select(pred, gt, mask)
    return ((p - g) ** 2).mean().sqrt().item()


def log_rmse(pred: Tensor, gt: Tensor, mask: Tensor | None = None, min_pred: float = 1e-5) -> float:
    """RMSE of ``log p - log g`` with ``p`` clamped to ``>= min_pred`` (CUT3R)."""
    p, g = _select(pred, gt, mask)
    return ((p.clamp_min(min_pred).log() - g.log()) ** 2).mean().sqrt().item()


def delta(pred: Tensor, gt: Tensor, mask: Tensor | None = None, thr: float = 1.25) -> float:
    """Inlier ratio ``mean[max(g / p, p / g) < thr]`` (MoGe's definition, see the module doc)."""
    p, g = _select(pred, gt, mask)
    return (torch.maximum(g / p, p / g) < thr).float().mean().item()


def delta1(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """``delta`` at ``1.25``."""
    return delta(pred, gt, mask, 1.25)


def depth_metrics(pred: Tensor, gt: Tensor, mask: Tensor | None = None, full: bool = False) -> dict[str, float]:
    """``{"rel", "delta1"}`` (MoGe's keys) and, with ``full``, ``delta2``, ``delta3`` (1.25^2,
    1.25^3), ``delta103`` (1.03, RMVD), ``sq_rel``, ``rmse``, ``log_rmse``."""
    p, g = _select(pred, gt, mask)
    out = {"rel": abs_rel(p, g), "delta1": delta(p, g, None, 1.25)}
    if full:
        out.update(
            delta2=delta(p, g, None, 1.25**2),
            delta3=delta(p, g, None, 1.25**3),
            delta103=delta(p, g, None, 1.03),
            sq_rel=sq_rel(p, g),
            rmse=rmse(p, g),
            log_rmse=log_rmse(p, g),
        )
    return out


def point_rel(pred: Tensor, gt: Tensor, eps: float = 1e-6) -> float:
    """``mean ||p - g|| / (||g|| + eps)`` over ``(N, 3)`` points."""
    return ((pred - gt).norm(dim=-1) / (gt.norm(dim=-1) + eps)).mean().item()


def point_delta1(pred: Tensor, gt: Tensor) -> float:
    """``mean[||p - g|| < 0.25 min(||g||, ||p||)]`` over ``(N, 3)`` points (MoGe)."""
    err = (pred - gt).norm(dim=-1)
    return (err < 0.25 * torch.minimum(gt.norm(dim=-1), pred.norm(dim=-1))).float().mean().item()


# --- relative pose -----------------------------------------------------------------------------


def rotation_error_deg(R_pred: Tensor, R_gt: Tensor) -> Tensor:
    """Geodesic angle ``arccos((tr(R_pred^T R_gt) - 1) / 2)`` in degrees, ``(..., 3, 3) -> (...)``;
    the cosine is clipped to [-1, 1]."""
    tr = (R_pred.transpose(-1, -2) @ R_gt).diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = ((tr - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def translation_error_deg(t_pred: Tensor, t_gt: Tensor, symmetric: bool = False) -> Tensor:
    """Angle between translation directions in degrees, ``(..., 3) -> (...)``.

    ``symmetric=True`` applies ``min(e, 180 - e)`` (essential-matrix protocols: the sign of an
    E-matrix translation is unobservable). A zero-length translation gives 90 degrees."""
    n = t_pred.norm(dim=-1) * t_gt.norm(dim=-1)
    cos = (t_pred * t_gt).sum(-1) / n.clamp_min(1e-12)
    cos = torch.where(n > 0, cos, torch.zeros_like(cos)).clamp(-1.0, 1.0)
    err = torch.rad2deg(torch.arccos(cos))
    return torch.minimum(err, 180.0 - err) if symmetric else err


def pose_errors(T_pred: Tensor, T_gt: Tensor, symmetric: bool = False) -> dict[str, Tensor]:
    """Rotation, translation-direction and ``max`` errors (degrees) of ``(..., 4, 4)`` relative
    poses ``T_0to1`` (``x_1 = R x_0 + t``). A non-finite prediction (failed solver) gives ``inf``."""
    e_r = rotation_error_deg(T_pred[..., :3, :3], T_gt[..., :3, :3])
    e_t = translation_error_deg(T_pred[..., :3, 3], T_gt[..., :3, 3], symmetric)
    bad = ~torch.isfinite(T_pred).flatten(-2).all(-1)
    inf = torch.full_like(e_r, math.inf)
    e_r, e_t = torch.where(bad, inf, e_r), torch.where(bad, inf, e_t)
    return {"rot": e_r, "trans": e_t, "max": torch.maximum(e_r, e_t)}


def pose_auc(errors_deg: Sequence[float] | Tensor, thresholds: Sequence[float] = (5, 10, 20)) -> list[float]:
    """Area under the cumulative pose-error curve up to each threshold, divided by it (SuperGlue).

    ``errors = [0] + sorted(e)``, ``recall = [0, 1/N, ..., 1]``; for threshold ``t`` with
    ``k = searchsorted(errors, t, 'left')`` the curve is the first ``k`` points plus
    ``(t, recall[k-1])``, integrated by the trapezoid rule. ``inf`` / ``nan`` errors (failures)
    count as beyond every threshold. Returns fractions (papers print ``x 100``)."""
    e = torch.as_tensor(errors_deg, dtype=torch.float64).reshape(-1)
    e = torch.where(torch.isnan(e), torch.full_like(e, math.inf), e)
    n = e.numel()
    if n == 0:
        return [math.nan for _ in thresholds]
    errs = torch.cat([e.new_zeros(1), e.sort().values])
    recall = torch.arange(n + 1, dtype=torch.float64) / n
    out = []
    for t in thresholds:
        k = int(torch.searchsorted(errs, torch.tensor([float(t)], dtype=torch.float64), side="left"))
        x = torch.cat([errs[:k], errs.new_tensor([float(t)])])
        y = torch.cat([recall[:k], recall[k - 1 : k]])
        out.append(float(torch.trapezoid(y, x)) / float(t))
    return out


# --- reconstruction ----------------------------------------------------------------------------


def nearest_neighbors(query: Tensor, ref: Tensor, chunk: int = 4096, use_scipy: bool | None = None) -> tuple[Tensor, Tensor]:
    """For each ``query (N, 3)`` point its nearest ``ref (M, 3)`` point: ``(dist (N,), index (N,))``.

    Uses SciPy's ``cKDTree`` when installed (the optional ``eval`` extra; ``O(N log M)``), else
    brute force ``torch.cdist`` in chunks of ``chunk`` queries (memory ``chunk x M``, exact, fine
    for the tens of thousands of points of the tests and the synthetic world).
    ``use_scipy`` forces one or the other."""
    if use_scipy is None or use_scipy:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            if use_scipy:
                raise
        else:
            if query.shape[0] == 0 or ref.shape[0] == 0:
                return query.new_zeros(0), torch.zeros(0, dtype=torch.long)
            d, i = cKDTree(ref.detach().double().cpu().numpy()).query(query.detach().double().cpu().numpy())
            return torch.from_numpy(d).to(query.dtype), torch.from_numpy(i).long()
    dists, idxs = [], []
    for s in range(0, query.shape[0], chunk):
        d = torch.cdist(query[s : s + chunk].double(), ref.double())
        v, i = d.min(dim=1)
        dists.append(v.to(query.dtype))
        idxs.append(i)
    if not dists:
        return query.new_zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(dists), torch.cat(idxs)


def accuracy_completeness(
    pred: Tensor,
    gt: Tensor,
    pred_normals: Tensor | None = None,
    gt_normals: Tensor | None = None,
) -> dict[str, float]:
    """Accuracy, completeness and normal consistency of two aligned point clouds (CUT3R / Spann3R).

    ``acc`` = distance of each predicted point to the nearest GT point (mean and ``acc_med``),
    ``comp`` = the same from GT to prediction; with normals ``(N, 3)`` / ``(M, 3)`` (unit):
    ``nc1 = mean |n_gt[nn(pred)] . n_pred|``, ``nc2 = mean |n_gt . n_pred[nn(gt)]|``,
    ``nc = (nc1 + nc2) / 2`` and ``nc_med`` likewise with medians (``nc1_med``, ``nc2_med``). Medians
    are NumPy's (mean of the two middle values). Units are those of the points.
    """
    d_pg, i_pg = nearest_neighbors(pred, gt)
    d_gp, i_gp = nearest_neighbors(gt, pred)
    out = {
        "acc": d_pg.mean().item(),
        "acc_med": _median(d_pg),
        "comp": d_gp.mean().item(),
        "comp_med": _median(d_gp),
    }
    if pred_normals is not None and gt_normals is not None:
        nc1 = (gt_normals[i_pg] * pred_normals).sum(-1).abs()
        nc2 = (gt_normals * pred_normals[i_gp]).sum(-1).abs()
        out.update(
            nc1=nc1.mean().item(),
            nc2=nc2.mean().item(),
            nc1_med=_median(nc1),
            nc2_med=_median(nc2),
            nc=(nc1.mean().item() + nc2.mean().item()) / 2,
            nc_med=(_median(nc1) + _median(nc2)) / 2,
        )
    return out


def _median(x: Tensor) -> float:
    """``np.median``: the mean of the two middle values for an even count (CUT3R's and pi3's
    reconstruction metrics use NumPy; ``torch.median`` would return the lower one)."""
    return float(np.median(x.detach().double().cpu().numpy()))


# --- aggregation -------------------------------------------------------------------------------


def _flatten(d: dict, prefix: tuple = ()) -> dict[tuple, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + (k,)] = float(v)
    return out


def key_average(records: Sequence[dict]) -> dict:
    """Key-wise mean of nested dicts of numbers, skipping missing and NaN values (MoGe's
    ``key_average``); a key with no finite value anywhere is NaN."""
    sums: dict[tuple, list[float]] = {}
    for r in records:
        for k, v in _flatten(r).items():
            sums.setdefault(k, [])
            if not math.isnan(v):
                sums[k].append(v)
    out: dict = {}
    for k in sorted(sums):
        vals = sums[k]
        node = out
        for part in k[:-1]:
            node = node.setdefault(part, {})
        node[k[-1]] = sum(vals) / len(vals) if vals else math.nan
    return out
