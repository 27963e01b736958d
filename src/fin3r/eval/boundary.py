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
    ``mask (H, W)`` bool (see the module doc). Maps smaller than ``2 radius + 1`` give 0.

    One pass per disc offset: each (centre, neighbour) ratio is reduced to its *level*, the number
    of thresholds it exceeds, and histograms of the levels give every threshold's counts at once
    (exact integer counts; the F1 arithmetic is MoGe's, in float32)."""
    H, W = gt.shape
    r = radius
    if H <= 2 * r or W <= 2 * r:
        return 0.0
    thresholds = torch.linspace(0.05, 0.25, 10).tolist()
    bounds = torch.tensor([1 + t for t in thresholds], dtype=torch.float32)  # MoGe compares in float32
    n = len(thresholds)
    centre = (slice(r, H - r), slice(r, W - r))
    pc, gc, mc = pred[centre].float(), gt[centre].float(), mask[centre]
    joint = torch.zeros((n + 1) * (n + 1) + 1, dtype=torch.long)  # (pred level, gt level) pairs; last: invalid

    def level(ratio: Tensor) -> Tensor:  # number of thresholds the ratio exceeds (NaN: none)
        lv = torch.searchsorted(bounds, ratio.contiguous(), side="left")
        return torch.where(torch.isnan(ratio), torch.zeros_like(lv), lv)

    for dy, dx in _disc_offsets(r):
        win = (slice(r + dy, H - r + dy), slice(r + dx, W - r + dx))
        key = level(pred[win].float() / pc) * (n + 1) + level(gt[win].float() / gc)
        key = torch.where(mc & mask[win], key, torch.full_like(key, (n + 1) * (n + 1)))
        joint += torch.bincount(key.reshape(-1), minlength=joint.numel())
    hist2d = joint[:-1].reshape(n + 1, n + 1)  # [pred level, gt level]
    lv = torch.arange(n + 1)
    tp_hist = torch.zeros(n + 1, dtype=torch.long).index_add_(0, torch.minimum(lv[:, None], lv[None]).reshape(-1),
                                                              hist2d.reshape(-1))
    hist = {"tp": tp_hist, "pred": hist2d.sum(1), "gt": hist2d.sum(0)}
    above = {k: v.flip(0).cumsum(0).flip(0) for k, v in hist.items()}  # above[k][i] = #levels >= i
    f1s = []
    for i in range(n):
        tp = above["tp"][i + 1].float()
        recall = tp / above["gt"][i + 1].float().clamp_min(1e-12)
        precision = tp / above["pred"][i + 1].float().clamp_min(1e-12)
        f1s.append((2 * recall * precision / (recall + precision).clamp_min(1e-12)).item())
    return sum(w * f for w, f in zip(thresholds, f1s)) / sum(thresholds)
