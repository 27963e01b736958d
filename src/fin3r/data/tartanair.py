"""TartanAir v1 (``castacks/tartanair_tools``) raw layout -> multi-view replay samples.

Layout read (as distributed; flow / segmentation / right camera are not needed)::

    <root>/<env>/<Easy|Hard>/<Pxxx>/image_left/{i:06d}_left.png          640x480 RGB
    <root>/<env>/<Easy|Hard>/<Pxxx>/depth_left/{i:06d}_left_depth.npy    float32 metres
    <root>/<env>/<Easy|Hard>/<Pxxx>/pose_left.txt    per frame: tx ty tz qx qy qz qw

Conventions:

- intrinsics are fixed: ``fx = fy = 320, cx = 320, cy = 240`` for 640x480 (90 deg FoV), used as
  given (scaled if an image has another size);
- ``pose_left.txt`` is camera-to-world in NED (x forward, y right, z down) for both the camera
  body and the world; the OpenCV camera axes are (right, down, forward) = NED body (y, z, x), so
  ``cam2world = [[R_ned @ P, t], [0, 1]]`` with ``P = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]`` (the
  same as CUT3R's ``inv(c2w_ned)[[1, 2, 0, 3]]``). The world frame stays NED (gravity +z);
- depth >= ``sky_depth`` (1000 m: sky), NaN or inf -> invalid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fin3r.data.sequences import BadFrame, SequenceViewsDataset
from fin3r.data.views import make_view

log = logging.getLogger(__name__)

__all__ = ["TartanAirViews", "ned_pose_to_cam2world", "TARTANAIR_K"]

TARTANAIR_K = np.array([[320.0, 0.0, 320.0], [0.0, 320.0, 240.0], [0.0, 0.0, 1.0]])
_NED_TO_CV = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def ned_pose_to_cam2world(line: np.ndarray) -> np.ndarray:
    """One ``pose_left.txt`` row ``(tx, ty, tz, qx, qy, qz, qw)`` -> OpenCV ``cam2world (4, 4)``
    (world frame: TartanAir's NED)."""
    T = np.eye(4)
    T[:3, :3] = _quat_xyzw_to_matrix(np.asarray(line[3:7], np.float64)) @ _NED_TO_CV
    T[:3, 3] = line[:3]
    return T


class TartanAirViews(SequenceViewsDataset):
    """Replay samples of ``num_views`` frames of one TartanAir trajectory (left camera).

    Args:
        root: TartanAir root (``<env>/<Easy|Hard>/<Pxxx>`` below it); any folder holding
            ``image_left`` + ``depth_left`` + ``pose_left.txt`` is taken as one trajectory.
        max_interval: largest frame step (CUT3R: 20), video_prob 0.8, fix_interval_prob 0.8 as
            CUT3R's TartanAir loader.
        sky_depth: depths at or beyond this are sky (invalid).
    """

    source = "tartanair"

    def __init__(self, root: str | Path, num_views: int, height: int, width: int, max_interval: int = 20,
                 seed: int = 0, video_prob: float = 0.8, fix_interval_prob: float = 0.8, samples_per_start: int = 1,
                 crop: str = "center", sky_depth: float = 1000.0, strict: bool = False):
        super().__init__(num_views, height, width, seed, max_interval, video_prob, fix_interval_prob,
                         samples_per_start, crop, strict)
        self.root, self.sky_depth = Path(root), float(sky_depth)
        if not self.root.is_dir():
            raise BadFrame(f"TartanAir root {self.root} is not a folder")
        self.missing: list[str] = []
        self.poses: dict[str, np.ndarray] = {}
        for pose_file in sorted(self.root.rglob("pose_left.txt")):
            traj = pose_file.parent
            try:
                poses = np.loadtxt(pose_file, ndmin=2)
            except ValueError as e:
                self.missing.append(f"{pose_file}: unreadable ({e})")
                continue
            if poses.shape[1] != 7:
                self.missing.append(f"{pose_file}: {poses.shape[1]} columns, expected 7")
                continue
            frames = []
            for img in sorted((traj / "image_left").glob("*_left.png")):
                i = int(img.name.split("_")[0])
                depth = traj / "depth_left" / f"{i:06d}_left_depth.npy"
                if not depth.is_file():
                    self.missing.append(str(depth))
                elif i >= len(poses):
                    self.missing.append(f"{pose_file}: no pose for frame {i}")
                else:
                    frames.append(i)
            if frames:
                name = traj.relative_to(self.root).as_posix()
                self.poses[name] = poses
                self.sequences.append((name, frames))
        if self.missing:
            log.warning("TartanAir: %d frames left out (e.g. %s)", len(self.missing), self.missing[0])

    def load_frame(self, name: str, frame: int) -> dict:
        traj = self.root / name
        img_path = traj / "image_left" / f"{frame:06d}_left.png"
        depth_path = traj / "depth_left" / f"{frame:06d}_left_depth.npy"
        try:
            with Image.open(img_path) as im:
                im.load()
                img = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise BadFrame(f"{img_path}: corrupt or truncated image ({type(e).__name__}: {e})") from e
        try:
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
        except Exception as e:
            raise BadFrame(f"{depth_path}: unreadable depth ({type(e).__name__}: {e})") from e
        if depth.shape != img.shape[:2]:
            raise BadFrame(f"{depth_path}: depth {depth.shape} does not match the image {img.shape[:2]}")
        valid = np.isfinite(depth) & (depth > 0) & (depth < self.sky_depth)
        H, W = depth.shape
        K = TARTANAIR_K.copy()
        if (H, W) != (480, 640):
            K[0] *= W / 640
            K[1] *= H / 480
        c2w = ned_pose_to_cam2world(self.poses[name][frame])
        view = make_view(img, torch.from_numpy(np.where(valid, depth, 0)), torch.from_numpy(K).float(),
                         torch.from_numpy(c2w).float(), "tartanair", "metric", valid=torch.from_numpy(valid))
        if not view["valid"].any():
            raise BadFrame(f"{depth_path}: no valid depth")
        return view

    def load(self, index: int) -> dict:
        sample = super().load(index)
        name, frames = self.views_of(index)
        sample.update(trajectory=name, frames=torch.tensor(frames))
        return sample
