"""The demo's before/after viewer page (``view.html`` next to the report): the held-out pairs of
the figure as point clouds of every model (base, Fin3R, the control) and of the ground truth, with
the depth maps beside them (:mod:`fin3r.outputs.viewer`).

Frames and scale: each scene is in its view 0's camera frame (OpenCV). The models' points are
scale-free, so each model's points are scaled by one factor per scene -- the median ratio of the
ground-truth depth to its depth over view 0's valid pixels -- to sit on the ground truth (the
shapes are unchanged). The ground truth shows both cameras; a pair model knows only view 0's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def ground_truth_points(depth: Tensor, valid: Tensor, K: Tensor, cam2world: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(pts (2, H, W, 3) in view 0's camera frame, cam2world (2, 4, 4) relative to view 0)`` of one
    rendered pair (``depth (2, H, W)``, ``K (2, 3, 3)``, ``cam2world (2, 4, 4)``); invalid pixels NaN."""
    from fin3r.geometry import depth_to_points, invert_rigid, transform_points

    to_view0 = invert_rigid(cam2world[0].double())
    rel = torch.stack([to_view0 @ cam2world[i].double() for i in range(2)])
    pts = torch.stack([transform_points(rel[i], depth_to_points(depth[i].double(), K[i].double())) for i in range(2)])
    pts[~valid] = float("nan")
    return pts.float().numpy(), rel.numpy()


def write_demo_view(path: str | Path, images: Tensor, depth: Tensor, valid: Tensor, K: Tensor, cam2world: Tensor,
                    predictions: dict[str, tuple[Tensor, Tensor]], labels: dict[str, str]) -> Path:
    """Write the page. ``images (N, 2, 3, H, W)`` uint8, ``depth``/``valid (N, 2, H, W)``, ``K (N, 2, 3, 3)``,
    ``cam2world (N, 2, 4, 4)`` of ``N`` held-out pairs; ``predictions``: model name ->
    ``(pts3d (N, 2, H, W, 3), conf (N, 2, H, W))`` of ``predict_views`` on the pairs; ``labels``: the
    names shown."""
    from fin3r.outputs.scene import build_scene
    from fin3r.outputs.viewer import ViewerScene, write_viewer

    scenes = []
    for n in range(images.shape[0]):
        rgbs = [images[n, i].permute(1, 2, 0).numpy() for i in range(2)]
        names = [f"held-out pair {n}, view {i}" for i in range(2)]
        gt_pts, gt_T = ground_truth_points(depth[n], valid[n], K[n], cam2world[n])
        gt_conf = valid[n].float().numpy() + 1.0
        models = {}
        gt_z = depth[n, 0][valid[n, 0]]
        for name, (pts, conf) in predictions.items():
            pts_n = pts[n].float()
            z = pts_n[0, ..., 2][valid[n, 0]]
            ok = z > 0
            scale = float((gt_z[ok] / z[ok]).median()) if ok.any() else 1.0
            models[labels.get(name, name)] = build_scene((pts_n * scale).numpy(), conf[n].float().numpy(), rgbs,
                                                         names)
        models["ground truth"] = build_scene(gt_pts, gt_conf, rgbs, names, gt_T, K[n].numpy(), threshold=1.5)
        scenes.append(ViewerScene(f"held-out pair {n}", models))
    note = ("fin3r demo, held-out pairs of the synthetic world: two-view point maps in view 0's camera frame, each "
            "model scaled by one factor per scene to the ground truth's median depth; depth maps share one "
            "colour range per view")
    return write_viewer(path, scenes, title="fin3r demo: before / after", note=note)


__all__ = ["ground_truth_points", "write_demo_view"]
