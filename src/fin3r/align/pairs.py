"""Pair predictions: a pairwise model (DUSt3R, MASt3R) run on the ordered pairs of a pair graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fin3r.errors import InputError

__all__ = ["PairPredictions", "predict_pairs"]


@dataclass
class PairPredictions:
    """Point maps of every ordered pair ``(i, j)``, both in image ``i``'s camera frame.

    Attributes:
        edges: the ``E`` ordered pairs ``(i, j)``.
        pts_i: ``(E, H, W, 3)`` image ``i``'s points (DUSt3R's ``pts3d`` of view 1).
        pts_j: ``(E, H, W, 3)`` image ``j``'s points in ``i``'s frame (``pts3d_in_other_view``).
        conf_i: ``(E, H, W)`` confidence of ``pts_i`` (``>= 1``).
        conf_j: ``(E, H, W)`` confidence of ``pts_j``.
    """

    edges: list[tuple[int, int]]
    pts_i: Tensor
    pts_j: Tensor
    conf_i: Tensor
    conf_j: Tensor

    def __post_init__(self) -> None:
        E = len(self.edges)
        if E == 0:
            raise InputError("pair predictions: no pairs")
        shape = tuple(self.pts_i.shape)
        if len(shape) != 4 or shape[0] != E or shape[-1] != 3 or tuple(self.pts_j.shape) != shape:
            raise InputError(f"pair predictions: expected pts_i, pts_j of shape ({E}, H, W, 3), got "
                             f"{tuple(self.pts_i.shape)} and {tuple(self.pts_j.shape)}")
        if tuple(self.conf_i.shape) != shape[:3] or tuple(self.conf_j.shape) != shape[:3]:
            raise InputError(f"pair predictions: expected confidences of shape {shape[:3]}")
        nodes = sorted({k for e in self.edges for k in e})
        if nodes != list(range(len(nodes))):
            raise InputError(f"pair predictions: images {nodes} are not numbered 0..{len(nodes) - 1}")

    @property
    def num_images(self) -> int:
        return 1 + max(max(e) for e in self.edges)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.pts_i.shape[1]), int(self.pts_i.shape[2])

    def edge_index(self) -> dict[tuple[int, int], int]:
        return {e: k for k, e in enumerate(self.edges)}


def predict_pairs(model, imgs: Tensor, edges: list[tuple[int, int]], batch_size: int = 8,
                  progress: bool = False) -> PairPredictions:
    """Run ``model.predict_views`` on each ordered pair of ``imgs (N, 3, H, W)`` in ``[0, 1]``.

    ``batch_size`` pairs per forward. Returns float32 CPU tensors."""
    from tqdm.auto import tqdm

    if imgs.ndim != 4:
        raise InputError(f"predict_pairs: expected images (N, 3, H, W), got {tuple(imgs.shape)}")
    dev = next(model.parameters()).device
    pts_i, pts_j, conf_i, conf_j = [], [], [], []
    batches = [edges[k:k + batch_size] for k in range(0, len(edges), max(1, batch_size))]
    with torch.inference_mode():
        for chunk in tqdm(batches, desc="pairs", unit="batch", disable=not progress, leave=False):
            idx = torch.tensor(chunk, dtype=torch.long)
            pred = model.predict_views(imgs[idx].to(dev))
            pts_i.append(pred.pts3d[:, 0].float().cpu())
            pts_j.append(pred.pts3d[:, 1].float().cpu())
            conf_i.append(pred.conf[:, 0].float().cpu())
            conf_j.append(pred.conf[:, 1].float().cpu())
    return PairPredictions(list(edges), torch.cat(pts_i), torch.cat(pts_j), torch.cat(conf_i), torch.cat(conf_j))
