"""One reconstructed scene, ready to export: the fused, confidence-filtered coloured point cloud and
the camera of every view.

Frames and units: the *world* is the camera frame of view 0 with OpenCV axes (x right, y down,
z forward), the frame of :attr:`fin3r.models.base.ViewsPrediction.pts3d`; a camera's ``cam2world``
maps its own OpenCV camera frame to that world; ``K`` is in pixels of the image the model saw
(``size = (H, W)``) with the OpenCV pixel convention (the centre of pixel (row i, col j) is at
``(u, v) = (j, i)``). Lengths are the model's own unit (metres for metric models such as MASt3R,
else a scale common to the views and arbitrary overall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fin3r.errors import InputError


@dataclass
class Camera:
    """A pinhole camera of one view.

    Attributes:
        name: the view's image name.
        cam2world: ``(4, 4)`` float64, camera (OpenCV) -> world (view 0's camera).
        K: ``(3, 3)`` float64 intrinsics in pixels (OpenCV pixel centres).
        size: ``(H, W)`` of the image the intrinsics refer to.
    """

    name: str
    cam2world: np.ndarray
    K: np.ndarray
    size: tuple[int, int]

    @property
    def center(self) -> np.ndarray:
        """``(3,)`` the camera centre in the world."""
        return self.cam2world[:3, 3]


@dataclass
class Scene:
    """The fused point cloud of ``S`` views and their cameras.

    Attributes:
        names: ``S`` image names.
        images: ``S`` arrays ``(H, W, 3)`` uint8, the pixels the model saw.
        points: ``(N, 3)`` float32 world points (kept pixels of all views).
        colors: ``(N, 3)`` uint8 their image colours.
        view: ``(N,)`` int32 the view each point comes from.
        pixel: ``(N, 2)`` int32 its pixel ``(u = column, v = row)`` in that view.
        cameras: per view a :class:`Camera`, or ``None`` where the prediction has no camera for it
            (a DUSt3R/MASt3R pair: view 1's camera is not predicted).
        conf_cut: the confidence below which pixels were left out.
        depths: per view ``(H, W)`` float32 planar depth in its own camera (the predicted depth
            where the model has a depth head, else z of its points in its camera), or ``None``
            where the camera is unknown.
        conf: ``(S, H, W)`` float32 the confidences (all pixels).
    """

    names: list[str]
    images: list[np.ndarray]
    points: np.ndarray
    colors: np.ndarray
    view: np.ndarray
    pixel: np.ndarray
    cameras: list[Camera | None]
    conf_cut: float
    depths: list[np.ndarray | None]
    conf: np.ndarray

    @property
    def has_all_cameras(self) -> bool:
        return all(c is not None for c in self.cameras)


def confidence_cut(conf: np.ndarray, threshold: float = 0.0, percentile: float = 0.0) -> float:
    """The confidence a pixel needs to be kept: the larger of ``threshold`` and the ``percentile``-th
    percentile of the finite values of ``conf`` (``percentile=30`` drops the least confident 30 %)."""
    if not math.isfinite(threshold):
        raise InputError(f"confidence threshold {threshold} is not a finite number")
    if not 0.0 <= percentile < 100.0:
        raise InputError(f"confidence percentile {percentile} is not in [0, 100)")
    cut = float(threshold)
    finite = conf[np.isfinite(conf)]
    if percentile > 0 and finite.size:
        cut = max(cut, float(np.percentile(finite, percentile)))
    return cut


def estimate_focal_intrinsics(pts_cam: np.ndarray, conf: np.ndarray | None = None) -> np.ndarray:
    """``K (3, 3)`` fitted to a camera-frame point map ``(H, W, 3)`` (one focal, principal point at
    the image centre): :func:`fin3r.models.cut3r.model.estimate_intrinsics`."""
    from fin3r.models.cut3r.model import estimate_intrinsics

    pts = torch.from_numpy(np.ascontiguousarray(pts_cam, dtype=np.float64))
    w = None if conf is None else torch.from_numpy(np.ascontiguousarray(conf, dtype=np.float64))
    return estimate_intrinsics(pts, w).numpy()


def build_scene(pts3d: np.ndarray, conf: np.ndarray, images: list[np.ndarray], names: list[str],
                cam2world: np.ndarray | None = None, intrinsics: np.ndarray | None = None,
                threshold: float = 0.0, percentile: float = 0.0, depth: np.ndarray | None = None) -> Scene:
    """Fuse ``S`` views into a :class:`Scene`.

    Args:
        pts3d: ``(S, H, W, 3)`` points of every view in view 0's camera frame.
        conf: ``(S, H, W)`` their confidences.
        images: ``S`` arrays ``(H, W, 3)`` uint8.
        names: ``S`` image names.
        cam2world: optional ``(S, 4, 4)`` predicted poses; without them only view 0's camera is
            known (the identity).
        intrinsics: optional ``(S, 3, 3)``; missing intrinsics of a known camera are fitted to its
            points (:func:`estimate_focal_intrinsics`).
        threshold, percentile: the confidence filter (:func:`confidence_cut`, over all views).
        depth: optional ``(S, H, W)`` predicted per-view depth (else z of the points in each
            known camera).
    """
    pts3d = np.asarray(pts3d, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    S, H, W = conf.shape
    if pts3d.shape != (S, H, W, 3) or len(images) != S or len(names) != S:
        raise InputError(f"scene: {S} confidence maps, points {pts3d.shape}, {len(images)} images, "
                         f"{len(names)} names do not agree")
    cut = confidence_cut(conf, threshold, percentile)
    keep = (conf >= cut) & np.isfinite(pts3d).all(axis=-1)
    view, rows, cols = np.nonzero(keep)
    cameras: list[Camera | None] = []
    depths: list[np.ndarray | None] = []
    for i in range(S):
        if cam2world is None and i > 0:
            cameras.append(None)
            depths.append(None if depth is None else np.asarray(depth[i], dtype=np.float32))
            continue
        T = np.eye(4) if cam2world is None else np.asarray(cam2world[i], dtype=np.float64)
        R, t = T[:3, :3], T[:3, 3]
        own = (pts3d[i].astype(np.float64) - t) @ R  # world -> this camera: R^T (p - t)
        if intrinsics is not None:
            K = np.asarray(intrinsics[i], dtype=np.float64)
        else:
            K = estimate_focal_intrinsics(own, conf[i])
        cameras.append(Camera(names[i], T, K, (H, W)))
        depths.append((own[..., 2] if depth is None else np.asarray(depth[i])).astype(np.float32))
    return Scene(
        names=list(names), images=[np.asarray(im, dtype=np.uint8) for im in images],
        points=pts3d[keep], colors=_gather_colors(images, view, rows, cols),
        view=view.astype(np.int32), pixel=np.stack([cols, rows], axis=1).astype(np.int32),
        cameras=cameras, conf_cut=cut, depths=depths, conf=conf,
    )


def _gather_colors(images: list[np.ndarray], view: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    stacked = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return stacked[view, rows, cols].reshape(-1, 3)


def scene_from_views(pred, images: list[np.ndarray], names: list[str], threshold: float = 0.0,
                     percentile: float = 0.0, index: int = 0) -> Scene:
    """:func:`build_scene` on element ``index`` of a :class:`~fin3r.models.base.ViewsPrediction`
    (any model: cameras where it predicts them)."""
    def arr(t):
        return None if t is None else t[index].detach().float().cpu().numpy()

    return build_scene(arr(pred.pts3d), arr(pred.conf), images, names, arr(pred.cam2world), arr(pred.intrinsics),
                       threshold, percentile, arr(pred.depth))


def scene_from_mono(pred, image: np.ndarray, name: str, threshold: float = 0.0, percentile: float = 0.0,
                    index: int = 0) -> Scene:
    """A one-view :class:`Scene` from a :class:`~fin3r.models.base.MonoPrediction` (the camera at the
    world origin, its intrinsics fitted to the points)."""
    pts = pred.pts3d[index].detach().float().cpu().numpy()[None]
    conf = pred.conf[index].detach().float().cpu().numpy()[None]
    depth = pred.depth[index].detach().float().cpu().numpy()[None]
    return build_scene(pts, conf, [image], [name], None, None, threshold, percentile, depth)


def frustum_corners(camera: Camera, depth: float) -> np.ndarray:
    """``(5, 3)`` world points of a camera's frustum drawn ``depth`` in front of it: the centre, then
    the image corners (top-left, top-right, bottom-right, bottom-left; pixel edges, not centres)."""
    H, W = camera.size
    uv = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
    rays = np.linalg.solve(camera.K, np.concatenate([uv, np.ones((4, 1))], axis=1).T).T
    local = np.concatenate([np.zeros((1, 3)), rays / rays[:, 2:3] * depth])
    return local @ camera.cam2world[:3, :3].T + camera.cam2world[:3, 3]


def drawable_frusta(scene: Scene, depth: float) -> list[tuple[int, Camera, np.ndarray]]:
    """``(view index, camera, frustum_corners (5, 3))`` of every known camera whose frustum is finite
    (an untrained model can predict an infinite focal length; such a camera is not drawn)."""
    out = []
    for i, cam in enumerate(scene.cameras):
        if cam is None:
            continue
        with np.errstate(all="ignore"):
            try:
                corners = frustum_corners(cam, depth)
            except np.linalg.LinAlgError:
                continue
        if np.isfinite(corners).all():
            out.append((i, cam, corners))
    return out


def frustum_depth(scene: Scene, fraction: float = 0.08) -> float:
    """A frustum size that reads well: ``fraction`` of the extent (5-95 % range) of the points,
    or of the camera spread if there are no points."""
    if len(scene.points):
        lo, hi = np.percentile(scene.points, [5, 95], axis=0)
        extent = float(np.linalg.norm(hi - lo))
    else:
        centres = np.array([c.center for c in scene.cameras if c is not None and np.isfinite(c.center).all()])
        extent = float(np.linalg.norm(centres.max(0) - centres.min(0))) if len(centres) > 1 else 1.0
    return max(extent, 1e-6) * fraction


__all__ = ["Camera", "Scene", "confidence_cut", "estimate_focal_intrinsics", "build_scene", "scene_from_views",
           "scene_from_mono", "frustum_corners", "drawable_frusta", "frustum_depth"]
