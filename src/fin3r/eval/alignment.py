"""Alignments between a prediction and the ground truth, as the evaluation protocols define them.

MoGe's monocular-geometry protocol (``docs/evaluation.md``) solves its robust
fits on a low-resolution *sample* of the valid pixels (:func:`alignment_sample_index`) and scores
the aligned prediction on every valid pixel. Its solvers are exact L1 optima:

- :func:`weighted_l1_scale` -- ``argmin_a sum_i w_i |a x_i - y_i|``, a weighted median;
- :func:`weighted_l1_affine` -- ``argmin_{a,b} sum_i w_i |a x_i + b - y_i|``; the optimum passes
  through two samples: MoGe enumerates every anchor (``method="enumerate"``), fin3r by default
  locates the optimum on the convex profile and enumerates only the nearest anchors
  (``method="refine"``, the same objective, tested);
- :func:`weighted_l1_points_scale_shift` -- shared scale and a per-axis shift of point maps.

With the weights ``1 / gt`` the scale fit minimises the relative error (AbsRel) on the sample, so
it is *not* median scaling (:func:`median_scale`, CUT3R / RMVD) nor least squares
(:func:`lstsq_affine`, MoGe's disparity variant).

Shapes are given per function; everything is for evaluation (no gradients are needed; on the CPU
sorting goes through NumPy, several times faster than ``torch.sort`` there).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "alignment_sample_index",
    "weighted_l1_scale",
    "absrel_scaled",
    "weighted_l1_affine",
    "weighted_l1_shift",
    "weighted_l1_points_scale_shift",
    "lstsq_affine",
    "median_scale",
    "irls_l1_scale",
    "adam_l1_scale_shift",
    "umeyama_sim3",
]


def alignment_sample_index(
    mask: Tensor, size: tuple[int, int] = (64, 64), numpy_centres: bool = False
) -> tuple[Tensor, Tensor]:
    """Mask-aware nearest down-sampling of the valid pixels (the sample MoGe fits alignments on).

    Each of the ``size`` target cells covers a window of ``ceil(H / h) x ceil(W / w)`` source
    pixels starting at the rounded (half to even) top-left corner of the cell's footprint; the
    cell takes the valid pixel nearest to its centre (first in row-major order on ties).

    Args:
        mask: ``(H, W)`` bool, the valid ground-truth pixels.
        size: ``(h, w)`` of the sample grid.
        numpy_centres: compute the float32 cell centres with NumPy (as MoGe's data loader does
            when it resizes depth) instead of torch (as its metrics do); they differ in the last
            bit, which moves a few window starts that sit on a rounding boundary.

    Returns:
        ``(sample_mask (h, w) bool, sample_index (h, w) long)``: whether the cell found a valid
        pixel, and the flat index ``row * W + col`` of that pixel (meaningless where the mask is
        False). A pixel may be picked by several cells when few pixels are valid.
    """
    height, width = mask.shape[-2:]
    th, tw = size
    dev = mask.device
    fh, fw = max(1.0, height / th), max(1.0, width / tw)
    kh, kw = math.ceil(fh), math.ceil(fw)
    # cell centres in pixel units (pixel (r, c) covers [c, c + 1) x [r, r + 1))
    if numpy_centres:
        cu_np = np.linspace(0.5 / tw, 1 - 0.5 / tw, tw, dtype=np.float32) * np.float32(width)
        cv_np = np.linspace(0.5 / th, 1 - 0.5 / th, th, dtype=np.float32) * np.float32(height)
        c0 = torch.from_numpy(np.round(cu_np - np.float32(fw / 2)).astype(np.int64)).to(dev)
        r0 = torch.from_numpy(np.round(cv_np - np.float32(fh / 2)).astype(np.int64)).to(dev)
        cu, cv = torch.from_numpy(cu_np).to(dev), torch.from_numpy(cv_np).to(dev)
    else:
        cu = torch.linspace(0.5 / tw, 1 - 0.5 / tw, tw, dtype=torch.float32, device=dev) * width
        cv = torch.linspace(0.5 / th, 1 - 0.5 / th, th, dtype=torch.float32, device=dev) * height
        c0 = torch.round(cu - fw / 2).long()  # (tw,) first source column of each window
        r0 = torch.round(cv - fh / 2).long()  # (th,)
    cols = c0[:, None] + torch.arange(kw, device=dev)  # (tw, kw)
    rows = r0[:, None] + torch.arange(kh, device=dev)  # (th, kh)
    inside_c = (cols >= 0) & (cols < width)
    inside_r = (rows >= 0) & (rows < height)
    cols_c, rows_c = cols.clamp(0, width - 1), rows.clamp(0, height - 1)
    du = (cols.float() + 0.5 - cu[:, None]) ** 2  # (tw, kw)
    dv = (rows.float() + 0.5 - cv[:, None]) ** 2  # (th, kh)
    # (th, tw, kh, kw) window of every cell
    valid = mask[rows_c[:, None, :, None], cols_c[None, :, None, :]]
    valid = valid & inside_r[:, None, :, None] & inside_c[None, :, None, :]
    dist = dv[:, None, :, None] + du[None, :, None, :]
    dist = torch.where(valid, dist, torch.full_like(dist, math.inf)).reshape(th, tw, kh * kw)
    best = dist.argmin(dim=-1)  # first minimum in row-major window order
    bi, bj = best // kw, best % kw
    src_r = rows_c[torch.arange(th, device=dev)[:, None], bi]
    src_c = cols_c[torch.arange(tw, device=dev)[None, :], bj]
    sample_mask = valid.reshape(th, tw, -1).any(dim=-1)
    return sample_mask, src_r * width + src_c


def _sort(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x.sort(-1)``; on the CPU through NumPy, several times faster than ``torch.sort`` there."""
    if x.device.type != "cpu" or x.requires_grad:
        return x.sort(dim=-1)
    order = torch.from_numpy(np.argsort(x.numpy(), axis=-1, kind="stable"))
    return x.gather(-1, order), order


def weighted_l1_scale(x: Tensor, y: Tensor, w: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``argmin_a sum_i w_i |a x_i - y_i|`` (``w >= 0``), a weighted median of ``y / x``.

    ``|a x - y| = |x| |a - y / x|``: after flipping signs so that ``x >= 0``, the optimum is the
    weighted median of the ratios ``y_i / x_i`` with weights ``w_i x_i`` -- the smallest sorted
    ratio at which the cumulative weight reaches half the total.

    Args:
        x, y, w: ``(..., N)`` (broadcastable).

    Returns:
        ``(a (...), loss (...), index (...))``: the scale, the objective at ``a``, and the index
        ``i`` with ``a = y_i / x_i``.
    """
    x, y, w = torch.broadcast_tensors(x, y, w)
    sign = torch.sign(x)
    xp, yp = x * sign, y * sign
    ratio = yp / xp.clamp_min(eps)
    ratio_sorted, order = _sort(ratio)
    wx = torch.gather(w * xp, -1, order)
    # slope of the objective just right of each sorted ratio: 2 * (weight left) - total
    slope = 2 * wx.cumsum(dim=-1) - wx.sum(dim=-1, keepdim=True)
    k = torch.searchsorted(slope, torch.zeros_like(slope[..., :1]), side="left")
    k = k.clamp_max(slope.shape[-1] - 1)
    a = ratio_sorted.gather(-1, k).squeeze(-1)
    index = order.gather(-1, k).squeeze(-1)
    loss = (w * (a[..., None] * x - y).abs()).sum(dim=-1)
    return a, loss, index


def weighted_l1_shift(delta: Tensor, w: Tensor) -> Tensor:
    """Exact ``argmin_t sum_i w_i |t - delta_i|`` (a weighted median), batched over ``(..., N)``."""
    t, _, _ = weighted_l1_scale(torch.ones_like(delta), delta, w)
    return t


def _scatter_argmin(loss: Tensor, group: Tensor, groups: int) -> Tensor:
    """For each group id in ``range(groups)``, the index into ``loss`` of its last minimum."""
    best = torch.full((groups,), math.inf, dtype=loss.dtype, device=loss.device)
    best = best.scatter_reduce(0, group, loss, reduce="amin", include_self=True)
    is_min = loss == best[group]
    pos = torch.arange(loss.shape[0], device=loss.device)
    out = torch.full((groups,), -1, dtype=torch.long, device=loss.device)
    return out.scatter_reduce(0, group, torch.where(is_min, pos, -1), reduce="amax", include_self=True)


def _anchored_fits(
    x: Tensor, y: Tensor, w: Tensor, anchor_x: Tensor, anchor_y: Tensor, chunk_elems: int
) -> tuple[Tensor, Tensor]:
    """Solve the weighted L1 scale of ``(x - anchor_x_j, y - anchor_y_j)`` for every anchor ``j``.

    ``x, y, w``: ``(N,)``; ``anchor_*``: ``(J,)``. Returns ``(loss (J,), index (J,))``."""
    n = x.shape[-1]
    step = max(1, chunk_elems // max(n, 1))
    losses, indices = [], []
    for s in range(0, anchor_x.shape[0], step):
        xa = x[None, :] - anchor_x[s : s + step, None]
        ya = y[None, :] - anchor_y[s : s + step, None]
        _, loss, idx = weighted_l1_scale(xa, ya, w[None, :])
        losses.append(loss)
        indices.append(idx)
    return torch.cat(losses), torch.cat(indices)


def _convex_argmin(fn, a0: float, span: float, rounds: int = 48) -> float:
    """Minimise a convex 1-D function (``fn``: ``(M,)`` candidates -> ``(M,)`` values).

    Brackets the minimum with a coarse grid (widened until the minimum is interior), then halves
    the bracket by comparing ``fn`` just left and right of its middle (convexity keeps the
    minimum inside)."""
    lo, hi = a0 - span, a0 + span
    for _ in range(16):  # widen until the minimum is interior
        cand = torch.linspace(lo, hi, 9, dtype=torch.float64)
        k = int(fn(cand).argmin())
        if 0 < k < 8:
            lo, hi = float(cand[k - 1]), float(cand[k + 1])
            break
        lo, hi = (lo - 4 * (hi - lo), hi) if k == 0 else (lo, hi + 4 * (hi - lo))
    for _ in range(rounds):
        mid, d = (lo + hi) / 2, (hi - lo) * 1e-3
        left, right = fn(torch.tensor([mid - d, mid + d], dtype=torch.float64)).tolist()
        if left < right:
            hi = mid + d
        elif right < left:
            lo = mid - d
        else:  # flat: the minimum value is attained between them
            lo, hi = mid - d, mid + d
        if hi - lo <= 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def absrel_scaled(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """``pred`` scaled by the AbsRel-optimal scale on ``mask`` (MoGe's weighted-L1 fit, weights
    ``1 / gt``): ``(H, W) -> (H, W)``."""
    g = gt[mask]
    scale, _, _ = weighted_l1_scale(pred[mask], g, 1.0 / g.clamp_min(1e-6))
    return pred * scale


def weighted_l1_affine(
    x: Tensor, y: Tensor, w: Tensor, method: str = "refine", chunk_elems: int = 1 << 22, num_anchors: int = 16
) -> tuple[Tensor, Tensor]:
    """Exact ``argmin_{a,b} sum_i w_i |a x_i + b - y_i|`` (an L1 line fit).

    The L1 optimum is a vertex through two samples: with one of them as anchor ``j``,
    ``b = y_j - a x_j`` and ``a`` is a 1-D weighted median. ``method="enumerate"`` tries every
    anchor with ``w_j > 0`` (MoGe's procedure, ``O(N^2 log N)``). ``method="refine"`` (default,
    ``O(N log N)``-ish) uses that ``f(a) = min_b sum_i w_i |a x_i + b - y_i|`` is convex: it
    locates the optimum by grid refinement, then enumerates exactly the ``num_anchors`` samples
    closest to that line and keeps the best -- the same objective as full enumeration (tested).
    Fits are often tied within rounding; compare fits by objective, not by parameters.

    Args:
        x, y, w: ``(N,)`` or ``(B, N)``.

    Returns:
        ``(scale, shift)``, each ``()`` or ``(B,)``.
    """
    squeeze = x.ndim == 1
    x2, y2, w2 = (t.reshape(-1, t.shape[-1]) for t in torch.broadcast_tensors(x, y, w))
    scales, shifts = [], []
    for xb, yb, wb in zip(x2, y2, w2):
        anchors = torch.nonzero(wb > 0).squeeze(-1)
        if anchors.numel() == 0:
            scales.append(xb.new_tensor(math.nan))
            shifts.append(xb.new_tensor(math.nan))
            continue
        if method == "refine" and anchors.numel() > num_anchors:
            xd, yd, wd = xb.double(), yb.double(), wb.double()

            def objective(a: Tensor) -> Tensor:
                r = yd[None] - a[:, None] * xd[None]  # (M, N) residual before the shift
                t = weighted_l1_shift(r, wd[None])
                return (wd[None] * (r - t[:, None]).abs()).sum(-1)

            x_med, y_med = xd[anchors].median(), yd[anchors].median()
            a0, _, _ = weighted_l1_scale(xd - x_med, yd - y_med, wd)
            a_star = _convex_argmin(objective, float(a0), abs(float(a0)) + 1.0)
            r = yd - a_star * xd
            b_star = weighted_l1_shift(r, wd)
            resid = torch.where(wb > 0, (r - b_star).abs(), torch.full_like(r, math.inf))
            anchors = resid.argsort()[:num_anchors]
        elif method not in ("refine", "enumerate"):
            raise ValueError(f"unknown method {method!r}")
        loss, idx = _anchored_fits(xb, yb, wb, xb[anchors], yb[anchors], chunk_elems)
        j = _scatter_argmin(loss, torch.zeros_like(anchors), 1)[0]
        i1, i2 = anchors[j], idx[j]
        dx = xb[i2] - xb[i1]
        a = (yb[i2] - yb[i1]) / torch.where(dx != 0, dx, dx.new_tensor(1e-7))
        scales.append(a)
        shifts.append(yb[i1] - a * xb[i1])
    scale, shift = torch.stack(scales), torch.stack(shifts)
    return (scale[0], shift[0]) if squeeze else (scale, shift)


def weighted_l1_points_scale_shift(
    pts: Tensor, target: Tensor, w: Tensor, method: str = "refine", chunk_elems: int = 1 << 22, num_anchors: int = 16
) -> tuple[Tensor, Tensor]:
    """Exact ``argmin_{s, t in R^3} sum_i w_i sum_c |s p_ic + t_c - q_ic|`` (shared scale, xyz shift).

    With point ``j`` as anchor the shift is ``q_j - s p_j`` and the scale is the weighted median
    over the ``3 N`` anchored coordinates. ``method`` as in :func:`weighted_l1_affine`
    (``"enumerate"``: every point is tried as anchor, MoGe's procedure).

    Args:
        pts, target: ``(N, 3)``; w: ``(N,)``.

    Returns:
        ``(scale (), shift (3,))``.
    """
    anchors = torch.nonzero(w > 0).squeeze(-1)
    if anchors.numel() == 0:
        return pts.new_tensor(math.nan), pts.new_full((3,), math.nan)
    if method == "refine" and anchors.numel() > num_anchors:
        pd, qd, wd = pts.double().T, target.double().T, w.double()  # (3, N)

        def objective(s: Tensor) -> Tensor:
            r = qd[None] - s[:, None, None] * pd[None]  # (M, 3, N)
            t = weighted_l1_shift(r, wd[None, None])
            return (wd * (r - t[..., None]).abs()).sum((-1, -2))

        s0, _, _ = weighted_l1_scale((pd - pd.median(-1, keepdim=True).values).reshape(-1),
                                     (qd - qd.median(-1, keepdim=True).values).reshape(-1), wd.repeat(3))
        s_star = _convex_argmin(objective, float(s0), abs(float(s0)) + 1.0)
        r = qd - s_star * pd
        t_star = weighted_l1_shift(r, wd[None])
        resid = (r - t_star[:, None]).abs().sum(0)
        resid = torch.where(w > 0, resid.to(w.dtype), torch.full_like(w, math.inf))
        anchors = resid.argsort()[:num_anchors]
    elif method not in ("refine", "enumerate"):
        raise ValueError(f"unknown method {method!r}")
    x, y = pts.reshape(-1), target.reshape(-1)
    w3 = w[:, None].expand(-1, 3).reshape(-1)
    ax = pts[anchors].reshape(-1, 1, 3)  # (J, 1, 3) broadcast to every point
    ay = target[anchors].reshape(-1, 1, 3)
    n3 = x.shape[0]
    step = max(1, chunk_elems // max(n3, 1))
    losses, indices = [], []
    for s in range(0, anchors.shape[0], step):
        xa = (pts[None] - ax[s : s + step]).reshape(-1, n3)
        ya = (target[None] - ay[s : s + step]).reshape(-1, n3)
        _, loss, idx = weighted_l1_scale(xa, ya, w3[None])
        losses.append(loss)
        indices.append(idx)
    loss, idx = torch.cat(losses), torch.cat(indices)
    j = _scatter_argmin(loss, torch.zeros_like(anchors), 1)[0]
    i2 = idx[j]
    i1 = anchors[j] * 3 + i2 % 3  # same coordinate of the anchor point
    dx = x[i2] - x[i1]
    scale = (y[i2] - y[i1]) / torch.where(dx != 0, dx, dx.new_tensor(1.0))
    shift = target[anchors[j]] - scale * pts[anchors[j]]
    return scale, shift


def lstsq_affine(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Least squares ``argmin_{a,b} sum_i (a x_i + b - y_i)^2`` over ``(N,)`` (solved in float64)."""
    xd, yd = x.double(), y.double()
    A = torch.stack([xd, torch.ones_like(xd)], dim=-1)
    sol = torch.linalg.lstsq(A, yd[:, None]).solution[:, 0]
    return sol[0].to(x.dtype), sol[1].to(x.dtype)


def median_scale(pred: Tensor, gt: Tensor) -> Tensor:
    """Median scaling ``median(gt) / median(pred)`` over ``(..., N)`` (CUT3R / RMVD protocol).

    ``torch.median`` returns the lower of the two middle values (as CUT3R does; ``np.median``
    averages them)."""
    return gt.median(dim=-1).values / pred.median(dim=-1).values


def irls_l1_scale(pred: Tensor, gt: Tensor, iters: int = 10, eps: float = 1e-8, min_scale: float = 1e-3) -> Tensor:
    """CUT3R's ``align_with_scale`` (its video-depth ``--align scale``): an iteratively
    reweighted least-squares approximation of ``argmin_s sum_i |s p_i - g_i|`` over ``(N,)``.

    Starts from ``s = mean(g) / mean(p)`` (NaN-skipping means), then ``iters`` times sets
    ``w = 1 / (|s p - g| + eps)`` and ``s = sum w p g / sum w p^2``; finally ``s >= min_scale``.
    The arithmetic follows torch's type promotion of the inputs (CUT3R's readers give float64 GT
    and float32 predictions, so the scale is float64). Absolute, not relative, error: far pixels
    weigh more than under MoGe's scale fit."""
    s = torch.nanmean(gt) / torch.nanmean(pred)
    for _ in range(iters):
        w = 1.0 / ((s * pred - gt).abs() + eps)
        s = (w * pred * gt).sum() / (w * pred**2).sum()
    return s.clamp(min=min_scale)


def adam_l1_scale_shift(
    pred: Tensor, gt: Tensor, lr: float = 1e-4, max_iters: int = 1000, tol: float = 1e-6
) -> tuple[float, float]:
    """CUT3R's ``align_with_lad2`` (its video-depth ``--align scale&shift``): Adam on
    ``sum_i |s p_i + t - g_i|`` over ``(N,)``, from ``s = median(g) / median(p)`` (torch's lower
    median), ``t = 0``, learning rate ``lr``, at most ``max_iters`` steps, stopping once the loss
    changes by less than ``tol``. An approximate least-absolute-deviation fit: with the default
    rate the shift barely moves. ``s`` and ``t`` live in the prediction's dtype."""
    s0 = (torch.median(gt) / torch.median(pred)).item()
    with torch.enable_grad():
        s = torch.tensor([s0], dtype=pred.dtype, device=pred.device, requires_grad=True)
        t = torch.tensor([0.0], dtype=pred.dtype, device=pred.device, requires_grad=True)
        opt = torch.optim.Adam([s, t], lr=lr)
        prev = None
        for _ in range(max_iters):
            opt.zero_grad()
            loss = (s * pred + t - gt).abs().sum()
            loss.backward()
            opt.step()
            if prev is not None and abs(prev - loss.item()) < tol:
                break
            prev = loss.item()
    return s.item(), t.item()


def umeyama_sim3(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991) of ``(N, 3)`` point sets.

    Returns ``(s (), R (3, 3), t (3,))`` in ``src``'s dtype (solved in float64)."""
    dtype = src.dtype
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=src.dtype, device=src.device)
    if torch.det(U) * torch.det(Vh) < 0:
        D[2, 2] = -1
    R = U @ D @ Vh
    var_s = (xs**2).sum() / src.shape[0]
    s = (S * D.diagonal()).sum() / var_s.clamp_min(1e-12)
    t = mu_d - s * R @ mu_s
    return s.to(dtype), R.to(dtype), t.to(dtype)
