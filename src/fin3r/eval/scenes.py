"""Readers (and a writer) for the multi-view RGB-D scene layouts of the reconstruction benchmarks.

``layout=`` (``docs/evaluation.md``):

- ``7scenes``: ``<scene>/seq-XX/frame-XXXXXX.color.png``, ``frame-XXXXXX.depth.proj.png`` (or
  ``.depth.png``; uint16 millimetres, 65535 and 0 invalid), ``frame-XXXXXX.pose.txt`` (4x4
  camera-to-world); intrinsics fx = fy = 525, cx = 320, cy = 240.
- ``nrgbd`` (Neural-RGBD): ``<scene>/images/img<i>.png``, ``<scene>/depth/depth<i>.png`` (mm),
  ``<scene>/poses.txt`` (4x4 blocks, OpenGL: converted with ``pose[:, 1:3] *= -1``; NaN poses
  skip the frame); fx = fy = 554.2562584220408, cx = 320, cy = 240.
- ``scannet``: ``<scene>/color/<i>.jpg``, ``<scene>/depth/<i>.png`` (mm), ``<scene>/pose/<i>.txt``
  (camera-to-world; rows of inf mark invalid poses, skipped), ``<scene>/intrinsic/intrinsic_depth.txt``;
  colour is resized to the depth resolution (the depth intrinsics apply).

A scene folder may carry ``intrinsics.txt`` (3x3, pixels, for the depth resolution) overriding the
layout default. Depth outside ``(min_depth, max_depth)`` (1 mm, 10 m by default) is invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fin3r.errors import InputError

__all__ = ["Frame", "list_scenes", "read_scene", "load_frame", "write_7scenes_frame", "LAYOUTS"]

LAYOUTS = ("7scenes", "nrgbd", "scannet")
_DEFAULT_K = {
    "7scenes": (525.0, 525.0, 320.0, 240.0),
    "nrgbd": (554.2562584220408, 554.2562584220408, 320.0, 240.0),
}


@dataclass
class Frame:
    """One RGB-D frame: file paths, camera-to-world ``(4, 4)`` and pixel intrinsics ``(3, 3)``
    (for the depth image's resolution)."""

    name: str
    color: Path
    depth: Path
    cam2world: np.ndarray
    K: np.ndarray


def _num(p: Path) -> int:
    m = re.findall(r"\d+", p.stem)
    return int(m[-1]) if m else 0


def _scene_K(folder: Path, layout: str, bench: str) -> np.ndarray:
    f = folder / "intrinsics.txt"
    if f.is_file():
        return np.array(f.read_text().split(), dtype=np.float64)[:9].reshape(3, 3)
    if layout == "scannet":
        f = folder / "intrinsic" / "intrinsic_depth.txt"
        if not f.is_file():
            raise InputError(f"benchmark {bench}: missing file {f}")
        return np.array(f.read_text().split(), dtype=np.float64).reshape(4, 4)[:3, :3]
    fx, fy, cx, cy = _DEFAULT_K[layout]
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def list_scenes(root: str | Path, bench: str = "") -> list[str]:
    """Scene folders under ``root`` (sorted); ``scenes.txt`` lists them explicitly if present."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"benchmark {bench or root.name}: missing folder {root}")
    listing = root / "scenes.txt"
    if listing.is_file():
        return [s.strip() for s in listing.read_text().splitlines() if s.strip()]
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def read_scene(root: str | Path, scene: str, layout: str, bench: str = "") -> list[Frame]:
    """All frames of ``root/scene`` in ``layout`` order (frame number)."""
    folder = Path(root) / scene
    bench = bench or Path(root).name
    if not folder.is_dir():
        raise InputError(f"benchmark {bench}: missing scene folder {folder}")
    K = _scene_K(folder, layout, bench)
    frames: list[Frame] = []
    if layout == "7scenes":
        for c in sorted(folder.glob("seq-*/frame-*.color.png"), key=lambda p: (p.parent.name, _num(p))):
            stem = c.name[: -len(".color.png")]
            d = c.with_name(stem + ".depth.proj.png")
            d = d if d.is_file() else c.with_name(stem + ".depth.png")
            pose = c.with_name(stem + ".pose.txt")
            for f in (d, pose):
                if not f.is_file():
                    raise InputError(f"benchmark {bench}: missing file {f}")
            T = np.array(pose.read_text().split(), dtype=np.float64).reshape(4, 4)
            frames.append(Frame(f"{c.parent.name}/{stem}", c, d, T, K))
    elif layout == "nrgbd":
        pf = folder / "poses.txt"
        if not pf.is_file():
            raise InputError(f"benchmark {bench}: missing file {pf}")
        vals = np.array(pf.read_text().split(), dtype=np.float64)
        poses = vals.reshape(-1, 4, 4)
        for c in sorted((folder / "images").glob("img*.png"), key=_num):
            i = _num(c)
            d = folder / "depth" / f"depth{i}.png"
            if not d.is_file():
                raise InputError(f"benchmark {bench}: missing file {d}")
            if i >= len(poses) or not np.isfinite(poses[i]).all():
                continue
            T = poses[i].copy()
            T[:3, 1:3] *= -1  # OpenGL -> OpenCV
            frames.append(Frame(f"img{i}", c, d, T, K))
    elif layout == "scannet":
        for c in sorted((folder / "color").glob("*.jpg"), key=_num):
            d = folder / "depth" / f"{c.stem}.png"
            pose = folder / "pose" / f"{c.stem}.txt"
            for f in (d, pose):
                if not f.is_file():
                    raise InputError(f"benchmark {bench}: missing file {f}")
            T = np.array(pose.read_text().split(), dtype=np.float64).reshape(4, 4)
            if not np.isfinite(T).all():
                continue
            frames.append(Frame(c.stem, c, d, T, K))
    else:
        raise InputError(f"unknown scene layout {layout!r} ({'|'.join(LAYOUTS)})")
    if not frames:
        raise InputError(f"benchmark {bench}: scene {folder} has no frames in the {layout} layout")
    return frames


def load_frame(frame: Frame, min_depth: float = 1e-3, max_depth: float = 10.0) -> dict[str, Tensor]:
    """``img (3, H, W)`` in [0, 1] at the depth resolution, ``depth (H, W)`` metres (0 invalid),
    ``valid (H, W)``, ``K (3, 3)``, ``cam2world (4, 4)``."""
    with Image.open(frame.depth) as im:
        raw = np.array(im).astype(np.float64)
    depth = raw / 1000.0
    valid = (raw > 0) & (raw < 65535) & (depth > min_depth) & (depth < max_depth)
    H, W = depth.shape
    with Image.open(frame.color) as im:
        im = im.convert("RGB")
        if im.size != (W, H):
            im = im.resize((W, H), Image.Resampling.BILINEAR)
        img = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255.0
    return {
        "img": img,
        "depth": torch.from_numpy(np.where(valid, depth, 0.0)).float(),
        "valid": torch.from_numpy(valid),
        "K": torch.from_numpy(frame.K).float(),
        "cam2world": torch.from_numpy(frame.cam2world).float(),
    }


def write_7scenes_frame(folder: str | Path, index: int, img: Tensor, depth: Tensor, valid: Tensor,
                        cam2world: Tensor, seq: str = "seq-01") -> None:
    """Write one frame in the 7-Scenes layout (``img (H, W, 3)`` or ``(3, H, W)`` in [0, 1],
    ``depth`` metres -> uint16 millimetres with 65535 = invalid)."""
    d = Path(folder) / seq
    d.mkdir(parents=True, exist_ok=True)
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    stem = f"frame-{index:06d}"
    Image.fromarray((img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()).save(d / f"{stem}.color.png")
    mm = np.clip(np.round(depth.double().numpy() * 1000), 0, 65534).astype(np.uint16)
    mm[~valid.numpy()] = 65535
    Image.fromarray(mm).save(d / f"{stem}.depth.png")
    np.savetxt(d / f"{stem}.pose.txt", cam2world.double().numpy())
