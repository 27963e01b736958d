"""Hypersim (``apple/ml-hypersim``) raw layout -> multi-view replay samples with exact geometry.

Layout read (as distributed)::

    <root>/metadata_camera_parameters.csv                 per scene: M_proj_ij, image size
    <root>/<scene>/_detail/metadata_scene.csv             meters_per_asset_unit
    <root>/<scene>/_detail/<cam>/camera_keyframe_positions.hdf5     (N, 3) asset units
    <root>/<scene>/_detail/<cam>/camera_keyframe_orientations.hdf5  (N, 3, 3) cam->world, OpenGL axes
    <root>/<scene>/images/scene_<cam>_final_hdf5/frame.IIII.color.hdf5          HDR RGB (H, W, 3)
    <root>/<scene>/images/scene_<cam>_geometry_hdf5/frame.IIII.depth_meters.hdf5  (H, W)
    <root>/<scene>/images/scene_<cam>_geometry_hdf5/frame.IIII.render_entity_id.hdf5 (optional)

(each HDF5 file holds one array named ``dataset``). Conversions:

- ``depth_meters`` is the Euclidean distance from the optical centre, not planar depth:
  ``z = dist * ray_z / |ray|`` with ``ray = K^-1 [u, v, 1]`` at every pixel centre.
- ``K`` from the OpenGL projection of the scene (pixel centres at integers, fin3r's convention):
  ``fx = M00 W/2``, ``skew = -M01 W/2``, ``cx = (1 - M02) W/2 - 0.5``, ``fy = M11 H/2``,
  ``cy = (1 + M12) H/2 - 0.5``. A scene missing from the CSV falls back to Hypersim's nominal
  60 deg horizontal FoV (logged).
- pose: ``R_cv = R_gl diag(1, -1, -1)``, ``t = position * meters_per_asset_unit``.
- colour: Hypersim's tone map -- ``scale = 0.8^2.2 / P90(0.3 R + 0.59 G + 0.11 B)`` over pixels
  with geometry (``render_entity_id != -1``; 0 if that percentile < 1e-4), then
  ``rgb = clip((scale * color)^(1/2.2), 0, 1)``.
- NaN / non-positive distance (no geometry) -> invalid (depth 0).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch

from fin3r.data.sequences import BadFrame, SequenceViewsDataset
from fin3r.data.views import make_view

log = logging.getLogger(__name__)

__all__ = ["HypersimViews", "tonemap", "projection_to_K", "distance_to_planar"]


def _h5(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["dataset"])
    except FileNotFoundError as e:
        raise BadFrame(f"{path}: missing") from e
    except Exception as e:
        raise BadFrame(f"{path}: unreadable HDF5 ({type(e).__name__}: {e})") from e


def tonemap(color: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Hypersim's tone map of HDR ``color (H, W, 3)`` -> float32 RGB in [0, 1]."""
    color = np.nan_to_num(color.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    pool = color[valid] if valid is not None else color.reshape(-1, 3)
    if len(pool) == 0:
        scale = 1.0
    else:
        brightness = 0.3 * pool[:, 0] + 0.59 * pool[:, 1] + 0.11 * pool[:, 2]
        p90 = float(np.percentile(brightness, 90))
        scale = 0.0 if p90 < 1e-4 else 0.8**2.2 / p90
    return np.clip(np.power(np.maximum(scale * color, 0.0), 1 / 2.2), 0, 1).astype(np.float32)


def projection_to_K(M: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(3, 3)`` pixel intrinsics (centres at integers) from Hypersim's 4x4 OpenGL projection."""
    K = np.eye(3)
    K[0, 0], K[0, 1], K[0, 2] = M[0, 0] * width / 2, -M[0, 1] * width / 2, (1 - M[0, 2]) * width / 2 - 0.5
    K[1, 1], K[1, 2] = M[1, 1] * height / 2, (1 + M[1, 2]) * height / 2 - 0.5
    return K


def distance_to_planar(dist: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Euclidean distance from the optical centre ``(H, W)`` -> planar depth z."""
    H, W = dist.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    return (dist * rays[..., 2] / np.linalg.norm(rays, axis=-1)).astype(np.float32)


class HypersimViews(SequenceViewsDataset):
    """Replay samples of ``num_views`` frames of one Hypersim camera trajectory.

    Args:
        root: the Hypersim root (scenes ``ai_VVV_NNN`` below it).
        num_views, height, width: views per sample and output resolution.
        scenes: optional list of scene names to use (e.g. one split of
            ``metadata_images_split_scene_v1.csv``); default all found.
        max_interval: largest frame step (CUT3R uses 4 for Hypersim's camera random walks).
        seed, video_prob, fix_interval_prob, samples_per_start, crop, strict: see
            :class:`fin3r.data.sequences.SequenceViewsDataset`.

    Frames missing their colour or depth file are left out at construction (``missing``).
    Sample keys: contract keys with a leading ``S`` (``cam2world`` in the scene's metric world
    frame), ``source="hypersim"``, ``depth_kind="metric"``, plus ``scene``, ``camera``,
    ``frames``.
    """

    source = "hypersim"

    def __init__(self, root: str | Path, num_views: int, height: int, width: int, scenes: list[str] | None = None,
                 max_interval: int = 4, seed: int = 0, video_prob: float = 0.5, fix_interval_prob: float = 0.5,
                 samples_per_start: int = 1, crop: str = "center", strict: bool = False):
        super().__init__(num_views, height, width, seed, max_interval, video_prob, fix_interval_prob,
                         samples_per_start, crop, strict)
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadFrame(f"Hypersim root {self.root} is not a folder")
        self.camera_params = self._read_camera_csv()
        self.missing: list[str] = []
        self._scene_meta: dict[str, dict] = {}
        names = scenes or sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir())
        for scene in names:
            img_dir = self.root / scene / "images"
            for final in sorted(img_dir.glob("scene_cam_*_final_hdf5")):
                cam = final.name[len("scene_"):-len("_final_hdf5")]
                geo = img_dir / f"scene_{cam}_geometry_hdf5"
                frames = []
                for color in sorted(final.glob("frame.*.color.hdf5")):
                    fid = int(color.name.split(".")[1])
                    if (geo / f"frame.{fid:04d}.depth_meters.hdf5").is_file():
                        frames.append(fid)
                    else:
                        self.missing.append(str(geo / f"frame.{fid:04d}.depth_meters.hdf5"))
                if frames:
                    self.sequences.append(((scene, cam), frames))
        if self.missing:
            log.warning("Hypersim: %d frames lack a depth file and are left out (e.g. %s)", len(self.missing),
                        self.missing[0])

    def _read_camera_csv(self) -> dict[str, dict[str, float]]:
        path = self.root / "metadata_camera_parameters.csv"
        if not path.is_file():
            return {}
        with open(path, newline="") as f:
            return {row["scene_name"]: row for row in csv.DictReader(f)}

    def _scene(self, scene: str, cam: str) -> dict:
        key = f"{scene}/{cam}"
        if key not in self._scene_meta:
            detail = self.root / scene / "_detail"
            scale = 1.0
            meta_csv = detail / "metadata_scene.csv"
            if meta_csv.is_file():
                with open(meta_csv, newline="") as f:
                    for row in csv.DictReader(f):
                        if row.get("parameter_name") == "meters_per_asset_unit":
                            scale = float(row["parameter_value"])
            else:
                log.warning("Hypersim: %s missing; assuming 1 metre per asset unit", meta_csv)
            self._scene_meta[key] = {
                "meters_per_asset_unit": scale,
                "positions": _h5(detail / cam / "camera_keyframe_positions.hdf5"),
                "orientations": _h5(detail / cam / "camera_keyframe_orientations.hdf5"),
                "params": self.camera_params.get(scene),
            }
        return self._scene_meta[key]

    def intrinsics(self, scene: str, height: int, width: int) -> np.ndarray:
        params = self.camera_params.get(scene)
        if params is None:
            log.debug("Hypersim: %s not in metadata_camera_parameters.csv; nominal 60 deg FoV", scene)
            f = (width / 2) / math.tan(math.radians(60) / 2)
            return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
        M = np.array([[float(params[f"M_proj_{i}{j}"]) for j in range(4)] for i in range(4)])
        return projection_to_K(M, height, width)

    def load_frame(self, name, frame: int) -> dict:
        scene, cam = name
        img_dir = self.root / scene / "images"
        color = _h5(img_dir / f"scene_{cam}_final_hdf5" / f"frame.{frame:04d}.color.hdf5")
        geo = img_dir / f"scene_{cam}_geometry_hdf5"
        dist = _h5(geo / f"frame.{frame:04d}.depth_meters.hdf5").astype(np.float64)
        if color.ndim != 3 or color.shape[-1] != 3:
            raise BadFrame(f"{scene}/{cam} frame {frame}: colour has shape {color.shape}, expected (H, W, 3)")
        if dist.shape != color.shape[:2]:
            raise BadFrame(f"{geo / f'frame.{frame:04d}.depth_meters.hdf5'}: depth {dist.shape} does not match "
                           f"the colour image {color.shape[:2]}")
        entity_path = geo / f"frame.{frame:04d}.render_entity_id.hdf5"
        valid = _h5(entity_path) != -1 if entity_path.is_file() else np.isfinite(dist)
        H, W = dist.shape
        K = self.intrinsics(scene, H, W)
        depth = distance_to_planar(np.where(np.isfinite(dist) & (dist > 0), dist, 0.0), K)
        meta = self._scene(scene, cam)
        if frame >= len(meta["positions"]):
            raise BadFrame(f"{scene}/{cam}: frame {frame} has no camera keyframe ({len(meta['positions'])} stored)")
        c2w = np.eye(4)
        c2w[:3, :3] = meta["orientations"][frame] @ np.diag([1.0, -1.0, -1.0])
        c2w[:3, 3] = meta["positions"][frame] * meta["meters_per_asset_unit"]
        view = make_view(tonemap(color, valid), torch.from_numpy(depth), torch.from_numpy(K).float(),
                         torch.from_numpy(c2w).float(), "hypersim", "metric",
                         valid=torch.from_numpy(valid & (depth > 0)))
        if not view["valid"].any():
            raise BadFrame(f"{geo / f'frame.{frame:04d}.depth_meters.hdf5'}: no valid depth")
        return view

    def load(self, index: int) -> dict:
        sample = super().load(index)
        (scene, cam), frames = self.views_of(index)
        sample.update(scene=scene, camera=cam, frames=torch.tensor(frames))
        return sample
