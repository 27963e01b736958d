"""COLMAP sparse models (``cameras``, ``images``, ``points3D``; text and binary), written here from
COLMAP's documented formats, and the export of a :class:`~fin3r.outputs.scene.Scene` as a folder
that COLMAP opens and gsplat trains on as it is.

COLMAP's conventions, followed exactly:

- an image's pose is **world -> camera**: ``x_cam = R(q) x_world + t`` with the unit quaternion
  ``q = (qw, qx, qy, qz)`` (``qw >= 0`` here) and the translation ``t``; the camera centre is
  ``-R(q)^T t``; camera axes are OpenCV's (x right, y down, z forward), as in fin3r;
- pixel coordinates put the **centre of the top-left pixel at (0.5, 0.5)** (fin3r and OpenCV put it
  at (0, 0)), so a fin3r principal point ``c`` is written as ``c + 0.5``, and a pixel ``(u, v)``
  of a point's track as ``(u + 0.5, v + 0.5)``;
- ``SIMPLE_PINHOLE`` params ``f, cx, cy``; ``PINHOLE`` params ``fx, fy, cx, cy``; in pixels of the
  image as written (its ``WIDTH``/``HEIGHT``);
- ids start at 1; a 2-D point without a 3-D point has ``POINT3D_ID = -1``; ``ERROR`` is the
  reprojection error in pixels.

Binary layout (little-endian): ``cameras.bin`` = u64 count, then per camera u32 id, i32 model id,
u64 width, u64 height, f64 params; ``images.bin`` = u64 count, then per image u32 id, f64 qw qx qy
qz, f64 tx ty tz, u32 camera id, the name as NUL-terminated bytes, u64 number of 2-D points, then
per point f64 x, f64 y, i64 point3D id; ``points3D.bin`` = u64 count, then per point u64 id, f64 x y
z, u8 r g b, f64 error, u64 track length, per track element u32 image id, u32 point2D index.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fin3r.errors import InputError

#: the COLMAP camera models written here, with their model ids and parameter counts
CAMERA_MODELS = {"SIMPLE_PINHOLE": (0, 3), "PINHOLE": (1, 4)}
INVALID_POINT3D_ID = -1


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    """``qvec (4,)`` (qw, qx, qy, qz) and ``tvec (3,)`` world -> camera; ``xys (M, 2)`` 2-D points in
    COLMAP pixel coordinates; ``point3d_ids (M,)`` (``-1``: none)."""

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class ColmapPoints:
    """``ids (N,)``, ``xyz (N, 3)`` world, ``rgb (N, 3)`` uint8, ``error (N,)`` pixels, and per point
    its track ``(L, 2)`` of ``(image_id, point2D_idx)``."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    tracks: list[np.ndarray]


# --- conventions -------------------------------------------------------------------------------
def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """``(4,)`` unit quaternion (qw, qx, qy, qz), ``qw >= 0``, of a rotation ``R (3, 3)``."""
    import torch

    from fin3r.geometry import matrix_to_quaternion

    return matrix_to_quaternion(torch.from_numpy(np.asarray(R, dtype=np.float64))).numpy()


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation of a quaternion (qw, qx, qy, qz) (normalised first)."""
    import torch

    from fin3r.geometry import quaternion_to_matrix

    return quaternion_to_matrix(torch.from_numpy(np.asarray(q, dtype=np.float64))).numpy()


def world_to_camera(cam2world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's ``(qvec, tvec)`` of a camera -> world pose ``(4, 4)``: ``R = R_c2w^T``,
    ``t = -R(q) c`` with ``c`` the camera centre, so the centre COLMAP computes (``-R(q)^T t``) is
    ``c`` exactly even when the predicted rotation is not exactly orthonormal."""
    T = np.asarray(cam2world, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise InputError(f"camera pose must be a finite 4x4 matrix, got shape {T.shape}")
    q = rotation_to_quaternion(T[:3, :3].T)
    return q, -quaternion_to_rotation(q) @ T[:3, 3]


def camera_from_intrinsics(camera_id: int, K: np.ndarray, size: tuple[int, int], model: str = "auto") -> ColmapCamera:
    """A COLMAP camera of fin3r intrinsics ``K (3, 3)`` (OpenCV pixel centres) for an image of
    ``size = (H, W)``. ``model="auto"``: ``SIMPLE_PINHOLE`` when ``fx == fy``, else ``PINHOLE``;
    ``SIMPLE_PINHOLE`` forced on different focals writes their mean."""
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (np.isfinite(K).all() and fx > 0 and fy > 0):
        raise InputError(f"camera {camera_id}: intrinsics need finite positive focal lengths, got fx={fx}, fy={fy}")
    if abs(K[0, 1]) > 1e-9 * fx or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise InputError(f"camera {camera_id}: not a pinhole matrix (skew or bad last row): {K.tolist()}")
    if model == "auto":
        model = "SIMPLE_PINHOLE" if abs(fx - fy) <= 1e-9 * fx else "PINHOLE"
    if model not in CAMERA_MODELS:
        raise InputError(f"camera model {model!r}: choose auto, SIMPLE_PINHOLE or PINHOLE")
    h, w = int(size[0]), int(size[1])
    if model == "SIMPLE_PINHOLE":
        params = ((fx + fy) / 2, cx + 0.5, cy + 0.5)
    else:
        params = (fx, fy, cx + 0.5, cy + 0.5)
    return ColmapCamera(camera_id, model, w, h, tuple(float(p) for p in params))


def project(camera: ColmapCamera, image: ColmapImage, xyz: np.ndarray) -> np.ndarray:
    """``(N, 2)`` COLMAP pixel coordinates of world points ``xyz (N, 3)`` in ``image``."""
    p = xyz @ quaternion_to_rotation(image.qvec).T + image.tvec
    if camera.model == "SIMPLE_PINHOLE":
        f, cx, cy = camera.params
        fx = fy = f
    else:
        fx, fy, cx, cy = camera.params
    z = np.where(np.abs(p[:, 2]) > 1e-12, p[:, 2], 1e-12)
    return np.stack([fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy], axis=1)


# --- text --------------------------------------------------------------------------------------
def _g(x) -> str:
    return format(float(x), ".17g")


def cameras_text(cameras: Sequence[ColmapCamera]) -> str:
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    lines += [" ".join([str(c.camera_id), c.model, str(c.width), str(c.height), *map(_g, c.params)]) for c in cameras]
    return "\n".join(lines) + "\n"


def images_text(images: Sequence[ColmapImage]) -> str:
    n_obs = sum(int((im.point3d_ids >= 0).sum()) for im in images)
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(images)}, mean observations per image: {n_obs / max(len(images), 1):g}"]
    for im in images:
        lines.append(" ".join([str(im.image_id), *map(_g, im.qvec), *map(_g, im.tvec), str(im.camera_id), im.name]))
        lines.append(" ".join(f"{_g(x)} {_g(y)} {int(i)}" for (x, y), i in zip(im.xys, im.point3d_ids)))
    return "\n".join(lines) + "\n"


def points3d_text(points: ColmapPoints) -> str:
    n = len(points.ids)
    mean_track = sum(len(t) for t in points.tracks) / max(n, 1)
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {n}, mean track length: {mean_track:g}"]
    for i in range(n):
        x, y, z = points.xyz[i]
        r, g, b = points.rgb[i]
        track = " ".join(f"{int(a)} {int(b_)}" for a, b_ in points.tracks[i])
        lines.append(f"{int(points.ids[i])} {_g(x)} {_g(y)} {_g(z)} {int(r)} {int(g)} {int(b)} {_g(points.error[i])} "
                     f"{track}")
    return "\n".join(lines) + "\n"


# --- binary ------------------------------------------------------------------------------------
def cameras_binary(cameras: Sequence[ColmapCamera]) -> bytes:
    out = [struct.pack("<Q", len(cameras))]
    for c in cameras:
        model_id, n_params = CAMERA_MODELS[c.model]
        if len(c.params) != n_params:
            raise InputError(f"camera {c.camera_id}: {c.model} takes {n_params} params, got {len(c.params)}")
        out.append(struct.pack(f"<IiQQ{n_params}d", c.camera_id, model_id, c.width, c.height, *c.params))
    return b"".join(out)


_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def images_binary(images: Sequence[ColmapImage]) -> bytes:
    out = [struct.pack("<Q", len(images))]
    for im in images:
        if "\0" in im.name:
            raise InputError(f"image name {im.name!r} contains a NUL byte")
        out.append(struct.pack("<I7dI", im.image_id, *map(float, im.qvec), *map(float, im.tvec), im.camera_id))
        out.append(im.name.encode("utf-8") + b"\0")
        pts = np.empty(len(im.xys), dtype=_POINT2D)
        pts["x"], pts["y"], pts["id"] = im.xys[:, 0], im.xys[:, 1], im.point3d_ids
        out.append(struct.pack("<Q", len(pts)))
        out.append(pts.tobytes())
    return b"".join(out)


def points3d_binary(points: ColmapPoints) -> bytes:
    out = [struct.pack("<Q", len(points.ids))]
    head = struct.Struct("<Q3d3BdQ")
    for i in range(len(points.ids)):
        track = np.asarray(points.tracks[i], dtype="<u4").reshape(-1, 2)
        out.append(head.pack(int(points.ids[i]), *map(float, points.xyz[i]), *map(int, points.rgb[i]),
                             float(points.error[i]), len(track)))
        out.append(track.tobytes())
    return b"".join(out)


def write_model(folder: str | Path, cameras: Sequence[ColmapCamera], images: Sequence[ColmapImage],
                points: ColmapPoints, text: bool = True, binary: bool = True) -> list[Path]:
    """Write ``cameras``, ``images``, ``points3D`` (``.txt`` and/or ``.bin``) into ``folder``
    atomically; returns the files. (COLMAP reads the binary files when both are present.)"""
    from fin3r.io import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    jobs = []
    if text:
        jobs += [("cameras.txt", cameras_text(cameras).encode()), ("images.txt", images_text(images).encode()),
                 ("points3D.txt", points3d_text(points).encode())]
    if binary:
        jobs += [("cameras.bin", cameras_binary(cameras)), ("images.bin", images_binary(images)),
                 ("points3D.bin", points3d_binary(points))]
    for name, data in jobs:
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        files.append(folder / name)
    return files


# --- a scene as a COLMAP / gsplat folder --------------------------------------------------------
def unique_image_names(names: Sequence[str], suffix: str = ".png") -> list[str]:
    """File names for the written images: each name's stem with ``suffix``, made unique (``a_1.png``)
    and reduced to a plain file name (no folders)."""
    out, seen = [], set()
    for name in names:
        stem = Path(os.path.basename(str(name))).stem or "view"
        candidate, k = stem + suffix, 0
        while candidate in seen:
            k += 1
            candidate = f"{stem}_{k}{suffix}"
        seen.add(candidate)
        out.append(candidate)
    return out


def scene_to_colmap(scene, max_points: int = 100_000, seed: int = 0, camera_model: str = "auto",
                    names: Sequence[str] | None = None) -> tuple[list[ColmapCamera], list[ColmapImage], ColmapPoints]:
    """A :class:`~fin3r.outputs.scene.Scene` as COLMAP records: one camera per view (its predicted
    intrinsics), one image per view (``names``: the written file names), and at most ``max_points``
    of the fused points (a seeded random subset), each observed in the view and pixel it came from
    (a track of length 1) with its reprojection error in that view."""
    if not scene.has_all_cameras:
        missing = [n for n, c in zip(scene.names, scene.cameras) if c is None]
        raise InputError(f"COLMAP export needs a camera for every view; the prediction has none for {missing} "
                         "(pair models give cameras through global alignment)")
    names = list(names) if names is not None else unique_image_names(scene.names)
    cameras, images = [], []
    for i, cam in enumerate(scene.cameras):
        cameras.append(camera_from_intrinsics(i + 1, cam.K, cam.size, camera_model))
        q, t = world_to_camera(cam.cam2world)
        images.append(ColmapImage(i + 1, q, t, i + 1, names[i]))
    n = len(scene.points)
    if max_points < 0:
        raise InputError(f"max_points {max_points} < 0")
    pick = np.arange(n) if n <= max_points else np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    xyz = scene.points[pick].astype(np.float64)
    view, pixel = scene.view[pick], scene.pixel[pick].astype(np.float64) + 0.5
    ids = np.arange(1, len(pick) + 1, dtype=np.int64)
    error = np.zeros(len(pick))
    track_index = np.zeros(len(pick), dtype=np.int64)
    for i, im in enumerate(images):
        sel = np.nonzero(view == i)[0]
        im.xys, im.point3d_ids = pixel[sel], ids[sel]
        track_index[sel] = np.arange(len(sel))
        if len(sel):
            error[sel] = np.linalg.norm(project(cameras[i], im, xyz[sel]) - pixel[sel], axis=1)
    tracks = [np.array([[int(v) + 1, int(k)]]) for v, k in zip(view, track_index)]
    return cameras, images, ColmapPoints(ids, xyz, scene.colors[pick].astype(np.uint8), error, tracks)


README = """# COLMAP sparse model written by fin3r

- `images/`: the {n} images exactly as the model saw them ({h} x {w} pixels after resizing and
  centre-cropping); the intrinsics refer to these pixels, not to the original files.
- `sparse/0/`: `cameras`, `images`, `points3D` as `.bin` (COLMAP reads these first) and `.txt`
  (the same model, human-readable).

Frame and units: the world frame is the camera frame of the first image ({first}), OpenCV/COLMAP
axes (x right, y down, z forward); lengths are the model's ({units}). Poses are COLMAP's
world -> camera (quaternion qw qx qy qz, translation); pixel coordinates have the centre of the
top-left pixel at (0.5, 0.5). Cameras: one per image, {models}, from the predicted intrinsics.
Points: {points} of the fused, confidence-filtered cloud (confidence >= {cut:.4g}), each observed
in the image it was predicted from; ERROR is its reprojection error in pixels there.

Open in COLMAP: File > Import model > `sparse/0` (images folder: `images/`), or
`colmap model_converter --input_path sparse/0 --output_path model.ply --output_type PLY`.
Train Gaussian splats with gsplat: `python examples/simple_trainer.py default --data_dir <this folder>
--data_factor 1 --result_dir results/`.
"""


def export_colmap(scene, out_dir: str | Path, max_points: int = 100_000, seed: int = 0, camera_model: str = "auto",
                  text: bool = True, binary: bool = True, units: str = "model units, arbitrary scale") -> dict:
    """Write ``out_dir/images/*.png`` (the views as the model saw them), ``out_dir/sparse/0/`` (the
    COLMAP model, :func:`scene_to_colmap`) and ``out_dir/README.md``; returns a summary."""
    from PIL import Image

    from fin3r.io import atomic_write, write_text_atomic

    out_dir = Path(out_dir)
    names = unique_image_names(scene.names)
    cameras, images, points = scene_to_colmap(scene, max_points, seed, camera_model, names)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for name, rgb in zip(names, scene.images):
        atomic_write(out_dir / "images" / name, lambda tmp, rgb=rgb: Image.fromarray(rgb).save(tmp, format="PNG"))
    files = write_model(out_dir / "sparse" / "0", cameras, images, points, text, binary)
    h, w = scene.cameras[0].size
    readme = README.format(n=len(names), h=h, w=w, first=names[0], units=units,
                           models=", ".join(sorted({c.model for c in cameras})), points=len(points.ids),
                           cut=scene.conf_cut)
    write_text_atomic(out_dir / "README.md", readme)
    return {"folder": str(out_dir), "images": names, "cameras": len(cameras), "points": len(points.ids),
            "files": [str(f.relative_to(out_dir)) for f in files],
            "mean_reprojection_error_px": float(points.error.mean()) if len(points.ids) else None}


__all__ = ["CAMERA_MODELS", "ColmapCamera", "ColmapImage", "ColmapPoints", "rotation_to_quaternion",
           "quaternion_to_rotation", "world_to_camera", "camera_from_intrinsics", "project", "cameras_text",
           "images_text", "points3d_text", "cameras_binary", "images_binary", "points3d_binary", "write_model",
           "unique_image_names", "scene_to_colmap", "export_colmap"]
