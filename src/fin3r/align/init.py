"""Initialisation of the point-cloud optimiser from the pair graph's maximum spanning tree.

1. Score each ordered pair ``(i, j)`` by ``mean(conf_i) * mean(conf_j)``; an unordered pair keeps
   its better order. Keep the maximum spanning tree of those scores (Kruskal).
2. Start from the best tree edge ``(i, j)``: its two point maps, in ``i``'s frame, are the world;
   camera ``i`` is the identity. Walk the tree from the best edge down (an edge waits until one of
   its images is placed): the placed image's prediction in this pair is registered to its world
   points (confidence-weighted similarity, :func:`~fin3r.align.camera.weighted_similarity`), and the
   same similarity places the other image. The registration of the pair's first image gives that
   camera's pose.
3. Focal of each image: :func:`~fin3r.align.camera.estimate_focal` of its own-frame points in its
   best-scoring pair (clamped to ``FOCAL_RANGE`` times the long side; the official code would take
   the log of a non-positive focal). Cameras still without a pose: PnP-RANSAC of their world points (pixels with
   confidence above ``min_conf_thr``), else the identity.
4. Every pair's similarity = registration of its first image's prediction to the world points;
   world points and camera translations are rescaled by the pair-scale normaliser, and the depth
   maps are the world points seen from each camera.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fin3r.align.camera import estimate_focal, similarity_matrix, solve_pnp_ransac, weighted_similarity
from fin3r.align.optimizer import PointCloudAligner
from fin3r.errors import InputError
from fin3r.geometry import invert_rigid, transform_points

#: initial focal lengths are clamped to this range, in units of the image's long side
FOCAL_RANGE = (0.05, 20.0)

__all__ = ["FOCAL_RANGE", "edge_scores", "maximum_spanning_tree", "init_from_spanning_tree"]


def edge_scores(aligner: PointCloudAligner) -> dict[tuple[int, int], float]:
    """``{(i, j): mean(conf_i) * mean(conf_j)}`` for every ordered pair."""
    return {e: float(aligner.conf_i[k].mean() * aligner.conf_j[k].mean()) for k, e in enumerate(aligner.edges)}


def maximum_spanning_tree(num_images: int, scores: dict[tuple[int, int], float]) -> list[tuple[float, int, int]]:
    """The maximum spanning tree of the undirected graph whose edge ``{i, j}`` weighs the best of
    ``scores[(i, j)]``, ``scores[(j, i)]``, oriented as that best ordered pair.

    Returns ``[(score, i, j), ...]`` (``num_images - 1`` edges when connected)."""
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    for (i, j), s in scores.items():
        key = (min(i, j), max(i, j))
        if key not in best or s > best[key][0]:
            best[key] = (s, i, j)
    parent = list(range(num_images))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree = []
    for s, i, j in sorted(best.values(), key=lambda x: (-x[0], x[1], x[2])):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[ri] = rj
            tree.append((s, i, j))
    return tree


@torch.no_grad()
def init_from_spanning_tree(aligner: PointCloudAligner, pnp_iters: int = 10) -> dict:
    """Initialise every unknown of ``aligner`` (see the module doc). Returns
    ``{"tree": [(score, i, j)], "root": i, "pnp": [images posed by PnP]}``."""
    N, (H, W) = aligner.num_images, aligner.image_size
    index = {e: k for k, e in enumerate(aligner.edges)}
    scores = edge_scores(aligner)
    tree = maximum_spanning_tree(N, scores)
    if len(tree) != N - 1:
        raise InputError(f"align: the pair graph does not connect all {N} images")
    pred_i = aligner.pred_i.reshape(-1, H, W, 3)
    pred_j = aligner.pred_j.reshape(-1, H, W, 3)
    conf_i = aligner.conf_i.reshape(-1, H, W)
    conf_j = aligner.conf_j.reshape(-1, H, W)
    pp = tuple(float(x) for x in aligner.pp[0])

    pts: list[Tensor | None] = [None] * N
    poses: list[Tensor | None] = [None] * N
    todo = sorted(tree)
    score, i, j = todo.pop()
    k = index[(i, j)]
    pts[i], pts[j] = pred_i[k].clone(), pred_j[k].clone()
    poses[i] = torch.eye(4)
    root = i
    placed = {i, j}
    while todo:
        score, i, j = todo.pop()
        k = index[(i, j)]
        if i in placed:
            s, R, t = weighted_similarity(pred_i[k], pts[i], conf_i[k])
            pts[j] = transform_points(similarity_matrix(s, R, t), pred_j[k])
            placed.add(j)
        elif j in placed:
            s, R, t = weighted_similarity(pred_j[k], pts[j], conf_j[k])
            pts[i] = transform_points(similarity_matrix(s, R, t), pred_i[k])
            placed.add(i)
        else:
            todo.insert(0, (score, i, j))
            continue
        if poses[i] is None:
            poses[i] = similarity_matrix(1.0, R, t)

    # focal of each image from its best pair (as the first image)
    focals: list[float] = [0.0] * N
    best_first: dict[int, tuple[float, int]] = {}
    for (i, j), s in scores.items():
        if i not in best_first or s > best_first[i][0]:
            best_first[i] = (s, index[(i, j)])
    lo, hi = FOCAL_RANGE[0] * max(H, W), FOCAL_RANGE[1] * max(H, W)
    for n in range(N):
        f = estimate_focal(pred_i[best_first[n][1]], pp) if n in best_first else float("nan")
        # a degenerate prediction (points behind the camera, random weights) gives no usable focal
        focals[n] = min(max(f, lo), hi) if math.isfinite(f) else float(max(H, W))
    pnp = []
    im_conf = aligner.im_conf.reshape(N, H, W)
    for n in range(N):
        if poses[n] is not None:
            continue
        K = torch.tensor([[focals[n], 0, pp[0]], [0, focals[n], pp[1]], [0, 0, 1]], dtype=torch.float64)
        res = solve_pnp_ransac(pts[n].double().numpy(), K.numpy(), (im_conf[n] > aligner.config.min_conf_thr).numpy(),
                               iters=pnp_iters)
        if res is not None:
            poses[n] = invert_rigid(torch.from_numpy(res[0]).float())
            pnp.append(n)
        else:
            poses[n] = torch.eye(4)

    # pair similarities, then the scale normalisation, then the per-image unknowns
    for k, (i, j) in enumerate(aligner.edges):
        s, R, t = weighted_similarity(pred_i[k], pts[i], conf_i[k])
        aligner.set_pair(k, float(s), R, t)
    factor = aligner.scale_normaliser()
    for n in range(N):
        P = poses[n].clone().float()
        P[:3, 3] *= factor
        world = pts[n] * factor
        depth = transform_points(invert_rigid(P), world)[..., 2]
        aligner.set_image(n, P, depth, focals[n])
    return {"tree": tree, "root": root, "pnp": pnp}
