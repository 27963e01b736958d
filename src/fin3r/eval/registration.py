"""Point-cloud registration and normals as the reconstruction protocols compute them with Open3D.

CUT3R's and pi3's ``mv_recon`` evaluations refine the aligned prediction with Open3D's
point-to-point ICP and estimate normals with Open3D's ``estimate_normals()``; both are re-implemented
here (no Open3D dependency), following Open3D 0.20's algorithms:

- :func:`icp_point_to_point` -- ``registration_icp(source, target, threshold, I,
  TransformationEstimationPointToPoint())`` with the default ``ICPConvergenceCriteria``
  (30 iterations at most; stop once fitness and inlier RMSE both change by less than 1e-6).
  Each iteration pairs every source point with its nearest target point closer than the
  threshold and applies the rigid Umeyama fit (no scale) of those pairs;
- :func:`estimate_normals` -- PCA normals of the ``knn = 30`` nearest neighbours (the point
  itself included): the eigenvector of the smallest eigenvalue of the neighbourhood covariance;
  fewer than 3 neighbours give ``(0, 0, 1)``. The sign is arbitrary (Open3D's too): normal
  consistency compares absolute cosines.

Nearest neighbours use SciPy's KD-tree when installed, else chunked brute force
(:func:`fin3r.eval.metrics.nearest_neighbors`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fin3r.eval.metrics import nearest_neighbors

__all__ = ["icp_point_to_point", "estimate_normals", "knn_indices", "rigid_fit"]


def rigid_fit(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares rigid ``T (4, 4)`` with ``dst ~ R src + t`` (Umeyama without scale, as
    Eigen's ``umeyama(src, dst, false)``) of ``(N, 3)`` float64 point pairs."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    U, _, Vh = torch.linalg.svd((dst - mu_d).T @ (src - mu_s) / src.shape[0])
    D = torch.eye(3, dtype=src.dtype)
    if torch.det(U) * torch.det(Vh) < 0:
        D[2, 2] = -1
    R = U @ D @ Vh
    T = torch.eye(4, dtype=src.dtype)
    T[:3, :3], T[:3, 3] = R, mu_d - R @ mu_s
    return T


def _correspondences(cur: Tensor, dst: Tensor, threshold: float) -> tuple[Tensor, Tensor, float, float]:
    d, idx = nearest_neighbors(cur, dst)
    keep = d * d < threshold * threshold
    n = int(keep.sum())
    fitness = n / max(cur.shape[0], 1)
    rmse = float((d[keep] ** 2).sum() / n) ** 0.5 if n else 0.0
    return keep, idx, fitness, rmse


def icp_point_to_point(src: Tensor, dst: Tensor, threshold: float, max_iters: int = 30,
                       relative_fitness: float = 1e-6, relative_rmse: float = 1e-6) -> Tensor:
    """Rigid ``T (4, 4)`` (float64) moving ``src (N, 3)`` onto ``dst (M, 3)``: Open3D's
    point-to-point ICP from the identity (see the module doc)."""
    T = torch.eye(4, dtype=torch.float64)
    cur, dst = src.double(), dst.double()
    keep, idx, fitness, rmse = _correspondences(cur, dst, threshold)
    for _ in range(max_iters):
        step = rigid_fit(cur[keep], dst[idx[keep]]) if bool(keep.any()) else torch.eye(4, dtype=torch.float64)
        T = step @ T
        cur = cur @ step[:3, :3].T + step[:3, 3]
        prev_fitness, prev_rmse = fitness, rmse
        keep, idx, fitness, rmse = _correspondences(cur, dst, threshold)
        if abs(prev_fitness - fitness) < relative_fitness and abs(prev_rmse - rmse) < relative_rmse:
            break
    return T


def knn_indices(points: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Indices ``(N, k)`` of the ``k`` nearest neighbours of every point of ``points (N, 3)``
    among themselves (the point itself first), by distance."""
    k = min(k, points.shape[0])
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        out = []
        p = points.double()
        for s in range(0, p.shape[0], chunk):
            out.append(torch.cdist(p[s : s + chunk], p).topk(k, dim=1, largest=False).indices)
        return torch.cat(out)
    arr = points.detach().double().cpu().numpy()
    _, idx = cKDTree(arr).query(arr, k=k)
    return torch.from_numpy(idx.reshape(arr.shape[0], k)).long()


def estimate_normals(points: Tensor, knn: int = 30, chunk: int = 1 << 16) -> Tensor:
    """Unit normals ``(N, 3)`` (float64) of ``points (N, 3)`` by PCA of the ``knn`` nearest
    neighbours (Open3D's ``estimate_normals()`` defaults; see the module doc)."""
    p = points.double()
    n = p.shape[0]
    normals = torch.zeros(n, 3, dtype=torch.float64)
    normals[:, 2] = 1.0
    if n < 3:
        return normals
    idx = knn_indices(p, knn)
    for s in range(0, n, chunk):
        nb = p[idx[s : s + chunk]]  # (C, k, 3)
        centred = nb - nb.mean(1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred / nb.shape[1]
        _, vecs = torch.linalg.eigh(cov)
        normals[s : s + chunk] = vecs[..., 0]
    return normals
