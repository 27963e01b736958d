"""Camera recovery from point maps: focal length, similarity registration, PnP.

Pure functions on one view's point map ``(H, W, 3)`` whose pixel ``(row i, col j)`` sits at
``(u = j, v = i)`` -- fin3r's pixel convention. DUSt3R's training crops put the principal point at
``(W / 2, H / 2)`` in that convention, which is therefore the default principal point here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["default_principal_point", "estimate_focal", "weighted_similarity", "solve_pnp_ransac",
           "similarity_matrix"]


def default_principal_point(height: int, width: int) -> tuple[float, float]:
    """``(cx, cy) = (W / 2, H / 2)``, DUSt3R's principal point."""
    return width / 2.0, height / 2.0


def _centred_pixels(height: int, width: int, pp: tuple[float, float], device=None) -> Tensor:
    """``(H * W, 2)`` pixel coordinates ``(u - cx, v - cy)``."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                          torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack((u - pp[0], v - pp[1]), dim=-1).reshape(-1, 2)


def estimate_focal(pts: Tensor, pp: tuple[float, float] | None = None, iters: int = 10) -> float:
    """The focal length (pixels, square pixels) that best projects a camera-frame point map
    ``pts (H, W, 3)`` onto its pixel grid: ``argmin_f sum |p - f (x, y) / z|`` over pixels, by
    iteratively re-weighted least squares from the L2 solution (the Weiszfeld scheme; robust to
    outliers). Points with ``z = 0`` count as ``(x, y) / z = 0``."""
    H, W = pts.shape[:2]
    pp = default_principal_point(H, W) if pp is None else pp
    pix = _centred_pixels(H, W, pp, pts.device).double()
    p = pts.reshape(-1, 3).double()
    xy = (p[:, :2] / p[:, 2:3]).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    dot_xy_px = (xy * pix).sum(-1)
    dot_xy_xy = xy.square().sum(-1)
    focal = dot_xy_px.mean() / dot_xy_xy.mean()
    for _ in range(iters):
        w = (pix - focal * xy).norm(dim=-1).clamp_min(1e-8).reciprocal()
        focal = (w * dot_xy_px).mean() / (w * dot_xy_xy).mean()
    return float(focal)


def weighted_similarity(src: Tensor, dst: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, R, t)`` minimising ``sum_k w_k |s R src_k + t - dst_k|^2`` (weighted Umeyama).

    Args:
        src, dst: ``(..., 3)`` corresponding points (flattened).
        weight: ``(...)`` non-negative weights (default 1).

    Returns:
        ``s ()``, ``R (3, 3)`` (a rotation), ``t (3,)``, in ``src``'s dtype.
    """
    x, y = src.reshape(-1, 3).double(), dst.reshape(-1, 3).double()
    w = torch.ones(len(x), dtype=torch.float64, device=x.device) if weight is None else weight.reshape(-1).double()
    w = w / w.sum().clamp_min(1e-300)
    mx, my = (w[:, None] * x).sum(0), (w[:, None] * y).sum(0)
    xc, yc = x - mx, y - my
    cov = (w[:, None] * yc).T @ xc
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.ones(3, dtype=torch.float64, device=x.device)
    if torch.det(U) * torch.det(Vh) < 0:
        D[2] = -1
    R = U @ torch.diag(D) @ Vh
    var_x = (w * xc.square().sum(-1)).sum()
    s = (S * D).sum() / var_x.clamp_min(1e-300)
    t = my - s * R @ mx
    return s.to(src.dtype), R.to(src.dtype), t.to(src.dtype)


def similarity_matrix(s: Tensor | float, R: Tensor, t: Tensor) -> Tensor:
    """``(4, 4)`` matrix of ``x -> s R x + t``."""
    T = torch.eye(4, dtype=R.dtype, device=R.device)
    T[:3, :3] = R * s
    T[:3, 3] = t.reshape(3)
    return T


def solve_pnp_ransac(pts: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None, iters: int = 100,
                     reproj_px: float = 5.0, min_points: int = 4) -> tuple[np.ndarray, int] | None:
    """World-to-camera pose of the camera that sees point map ``pts (H, W, 3)`` (world frame) at
    its own pixel grid, by SQPnP inside RANSAC (OpenCV).

    Returns:
        ``(world2cam (4, 4) float64, inlier count)``, or ``None`` when fewer than ``min_points``
        usable points or PnP fails.
    """
    import cv2

    H, W = pts.shape[:2]
    vv, uu = np.mgrid[0:H, 0:W]
    px = np.stack([uu, vv], -1).reshape(-1, 2).astype(np.float64)
    X = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    keep = np.isfinite(X).all(-1)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(-1)
    if keep.sum() < min_points:
        return None
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(X[keep], px[keep], np.asarray(K, dtype=np.float64), None,
                                                 iterationsCount=int(iters), reprojectionError=float(reproj_px),
                                                 flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inliers is None:
        return None
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.reshape(3)
    return T, int(len(inliers))
