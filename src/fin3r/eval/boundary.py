"""MoGe's depth-boundary F1 (benchmarks with sharp boundaries: iBims-1, Sintel, Spring, HAMMER).

A pixel is labelled *occluded by* a neighbour within ``radius`` (the disc ``dx^2 + dy^2 <= r^2``,
the pixel itself included) when ``neighbour / centre > 1 + t``, i.e. the neighbour is farther by
more than ``t``. Labels are computed on the prediction and on the GT for every valid
(centre, neighbour) pair -- both pixels valid, centres at least ``radius`` from the border -- and
compared as a binary classification: ``F1 = 2 P R / (P + R)``. The figure is the mean of the F1 at
MoGe's ten thresholds ``t = linspace(0.05, 0.25, 10)`` weighted by ``t``. Scale-invariant by
construction (ratios); MoGe scores the first aligned depth it has (metric, scale-invariant,
affine, then disparity), see :func:`fin3r.eval.mono_scoring.score_mono`.

Arithmetic as in MoGe's ``moge/test/metrics.py`` (commit 0286b49): float32 thresholds, counts
and F1 in float32, the weighted mean in Python floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["boundary_f1", "BOUNDARY_RADII"]

BOUNDARY_RADII = (1, 2, 3)


def _disc_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dx * dx + dy * dy <= radius * radius + 1e-5]


@torch.no_grad()
def boundary_f1(pred: Tensor, gt: Tensor, mask: Tensor, radius: int = 1) -> float:
    """Threshold-weighted boundary F1 of depth ``pred (H, W)`` against ``gt (H, W)`` on
    ``mask (H, W)`` bool (see the module doc). Maps smaller than ``2 radius + 1`` give 0."""
    H, W = gt.shape
    r = radius
    if H <= 2 * r or W <= 2 * r:
        return 0.0
    centre = (slice(r, H - r), slice(r, W - r))
    pc, gc, mc = pred[centre], gt[centre], mask[centre]
    p_rel, g_rel, valid = [], [], []
    for dy, dx in _disc_offsets(r):
        win = (slice(r + dy, H - r + dy), slice(r + dx, W - r + dx))
        p_rel.append(pred[win] / pc)
        g_rel.append(gt[win] / gc)
        valid.append(mc & mask[win])
    p_rel, g_rel, valid = torch.stack(p_rel), torch.stack(g_rel), torch.stack(valid)
    thresholds = torch.linspace(0.05, 0.25, 10).tolist()
    f1s = []
    for t in thresholds:
        p_lab = p_rel > 1 + t
        g_lab = g_rel > 1 + t
        tp = (p_lab & g_lab & valid).float().sum()
        recall = tp / (g_lab & valid).float().sum().clamp_min(1e-12)
        precision = tp / (p_lab & valid).float().sum().clamp_min(1e-12)
        f1s.append((2 * recall * precision / (recall + precision).clamp_min(1e-12)).item())
    return sum(w * f for w, f in zip(thresholds, f1s)) / sum(thresholds)
