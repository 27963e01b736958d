"""Inference on image files with any :class:`~fin3r.models.base.Reconstructor`: preprocessing,
prediction and the output writers behind ``fin3r infer``.

Per image (``predict_mono``), in the output folder:

- ``<stem>_depth.png``: 16-bit depth, ``depth = value * depth_scale`` (``depth_scale`` in the PNG's
  text chunk and in ``predictions.json``; 0 = invalid);
- ``<stem>_depth_color.png``: inverse depth (disparity) coloured with the turbo map (2-98 %);
- ``<stem>_conf.png`` (8-bit, ``log(conf)`` scaled to its range) and ``<stem>_conf.npy`` (float32);
- ``<stem>.ply``: the coloured point cloud in the camera frame (OpenCV axes), binary PLY;
- optionally ``<stem>_depth.npy`` (float32).

Multi-view mode (``predict_views`` on all images as one set, e.g. S = 2 for DUSt3R/MASt3R) writes
the same per-view files with points in view 0's frame (depth files only where the view's depth
in its own camera is known: view 0, models with per-view depth or cameras), plus ``scene.ply`` and, where the model
predicts cameras (VGGT, CUT3R), ``cameras.json`` via :func:`write_cameras` -- the hook for
model-specific camera outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fin3r.colormap import colorize
from fin3r.errors import InputError
from fin3r.geometry import invert_rigid, transform_points
from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --- inputs -------------------------------------------------------------------------------------
def list_images(path: str | Path) -> list[Path]:
    """An image file, or the images in a folder (sorted by name, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise InputError(f"{path}: no such file or folder")


@dataclass
class PreparedImage:
    """An image resized and centre-cropped for a model.

    Attributes:
        img: ``(3, H, W)`` float32 in ``[0, 1]``, H and W multiples of the patch size.
        rgb: ``(H, W, 3)`` uint8, the same pixels (for colouring point clouds).
        source: the file.
        original_size: ``(height, width)`` of the file.
        resized_size: ``(height, width)`` after resizing, before the crop.
        crop: ``(x0, y0)`` of the crop in the resized image.
    """

    img: Tensor
    rgb: np.ndarray
    source: Path
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop: tuple[int, int]


def target_size(height: int, width: int, long_side: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(resized (h, w), cropped (h, w))``: scale so the long side is ``long_side``, then crop each
    side down to a multiple of ``multiple`` (the DUSt3R preprocessing, without forcing 4:3)."""
    scale = long_side / max(height, width)
    rh, rw = max(multiple, round(height * scale)), max(multiple, round(width * scale))
    return (rh, rw), (rh // multiple * multiple, rw // multiple * multiple)


def prepare_image(path: str | Path, long_side: int = 512, multiple: int = 16,
                  size: tuple[int, int] | None = None) -> PreparedImage:
    """Load ``path`` (EXIF orientation applied, RGB), resize and centre-crop it.

    ``size=(H, W)`` forces the output size (resize to cover, then centre-crop), e.g. so that all
    views of a multi-view set agree.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as e:
        raise InputError(f"{path}: cannot read as an image ({e})") from e
    w0, h0 = im.size
    if size is None:
        (rh, rw), (ch, cw) = target_size(h0, w0, long_side, multiple)
    else:
        ch, cw = size
        if ch % multiple or cw % multiple:
            raise InputError(f"size {ch}x{cw} is not a multiple of {multiple}")
        scale = max(ch / h0, cw / w0)
        rh, rw = max(ch, round(h0 * scale)), max(cw, round(w0 * scale))
    resample = Image.LANCZOS if rh * rw < h0 * w0 else Image.BICUBIC
    im = im.resize((rw, rh), resample)
    x0, y0 = (rw - cw) // 2, (rh - ch) // 2
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    rgb = np.asarray(im, dtype=np.uint8).copy()
    img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    return PreparedImage(img, rgb, path, (h0, w0), (rh, rw), (x0, y0))


# --- prediction ---------------------------------------------------------------------------------
def predict_mono(model: Reconstructor, image: PreparedImage, device: torch.device | str = "cpu") -> MonoPrediction:
    """``model.predict_mono`` on one prepared image (batch 1, inference mode)."""
    with torch.inference_mode():
        return model.predict_mono(image.img[None].to(device))


def predict_views(model: Reconstructor, images: list[PreparedImage],
                  device: torch.device | str = "cpu") -> ViewsPrediction:
    """``model.predict_views`` on a set of prepared images of one size (batch 1, S = len(images))."""
    sizes = {tuple(im.img.shape[-2:]) for im in images}
    if len(sizes) != 1:
        raise InputError(f"multi-view inference needs one image size, got {sorted(sizes)}")
    with torch.inference_mode():
        return model.predict_views(torch.stack([im.img for im in images])[None].to(device))


# --- writers ------------------------------------------------------------------------------------
def write_depth_png16(path: str | Path, depth: np.ndarray) -> float:
    """Write ``depth (H, W)`` as a 16-bit PNG with ``depth = value * depth_scale``; returns
    ``depth_scale`` (also stored in the PNG text chunk ``depth_scale``). Invalid (<= 0 or
    non-finite) pixels are 0."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    dmax = float(depth[valid].max()) if valid.any() else 1.0
    scale = dmax / 65535.0 if dmax > 0 else 1.0
    values = np.zeros(depth.shape, dtype=np.uint16)
    values[valid] = np.clip(np.round(depth[valid] / scale), 1, 65535).astype(np.uint16)
    info = PngInfo()
    info.add_text("depth_scale", repr(scale))
    Image.fromarray(values).save(path, pnginfo=info)
    return scale


def read_depth_png16(path: str | Path) -> np.ndarray:
    """Inverse of :func:`write_depth_png16`: ``(H, W)`` float32 depth, 0 = invalid."""
    from PIL import Image

    with Image.open(path) as im:
        scale = float(im.text.get("depth_scale", "1.0"))
        values = np.asarray(im, dtype=np.float64)
    return (values * scale).astype(np.float32)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path)


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> int:
    """Binary little-endian PLY of ``points (N, 3)`` (float32) with optional ``colors (N, 3)`` uint8;
    non-finite points are dropped. Returns the number of points written."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    keep = np.isfinite(points).all(axis=1)
    points = points[keep]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    props = ["property float x", "property float y", "property float z"]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)[keep]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    data = np.empty(len(points), dtype=fields)
    data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        data["red"], data["green"], data["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}", *props,
                        "end_header"]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return len(points)


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY written by :func:`write_ply`: ``(points (N, 3), colors (N, 3) or None)``."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    n = int(next(line for line in header if line.startswith("element vertex")).split()[-1])
    has_color = any("red" in line for line in header)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")]
                                                            if has_color else [])
    data = np.frombuffer(raw[end:], dtype=fields, count=n)
    points = np.stack([data["x"], data["y"], data["z"]], axis=1)
    colors = np.stack([data["red"], data["green"], data["blue"]], axis=1) if has_color else None
    return points, colors


def write_view_outputs(out_dir: Path, stem: str, depth: Tensor | None, conf: Tensor, pts3d: Tensor,
                       rgb: np.ndarray, conf_threshold: float = 0.0, save_npy: bool = False) -> dict:
    """The per-image files (see the module docstring) for ``depth (H, W)``, ``conf (H, W)``,
    ``pts3d (H, W, 3)``; points with ``conf < conf_threshold`` are left out of the PLY.
    ``depth=None`` (a view whose depth in its own camera is unknown) writes no depth files."""
    conf_np = conf.float().cpu().numpy()
    pts_np = pts3d.float().cpu().numpy()
    stats: dict = {}
    if depth is not None:
        depth_np = depth.float().cpu().numpy()
        valid = np.isfinite(depth_np) & (depth_np > 0)
        stats["depth_png_scale"] = write_depth_png16(out_dir / f"{stem}_depth.png", depth_np)
        disparity = np.where(valid, 1.0 / np.where(valid, depth_np, 1.0), np.nan)
        write_png(out_dir / f"{stem}_depth_color.png", colorize(disparity, valid))
        if save_npy:
            np.save(out_dir / f"{stem}_depth.npy", depth_np.astype(np.float32))
        stats["depth_min"] = float(depth_np[valid].min()) if valid.any() else None
        stats["depth_max"] = float(depth_np[valid].max()) if valid.any() else None
    log_conf = np.log(np.clip(conf_np, 1e-12, None))
    lo, hi = float(np.nanmin(log_conf)), float(np.nanmax(log_conf))
    conf_u8 = np.clip((log_conf - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    write_png(out_dir / f"{stem}_conf.png", conf_u8)
    np.save(out_dir / f"{stem}_conf.npy", conf_np.astype(np.float32))
    keep = conf_np >= conf_threshold
    stats["points"] = write_ply(out_dir / f"{stem}.ply", pts_np[keep], rgb[keep])
    stats["conf_mean"] = float(conf_np.mean())
    return stats


def write_cameras(out_dir: Path, pred: ViewsPrediction, names: Iterable[str]) -> Path | None:
    """Hook for models that predict cameras: ``cameras.json`` with per view ``cam2world`` (4x4,
    OpenCV axes, camera -> the world frame of the points, i.e. view 0's camera; view 0's own pose
    is written as predicted, close to the identity) and ``K`` (3x3 intrinsics in pixels of the
    processed ``size = [H, W]`` image) where ``pred`` has them; ``None`` if the model predicts no
    cameras (DUSt3R/MASt3R)."""
    if pred.cam2world is None and pred.intrinsics is None:
        return None
    cameras = []
    for i, name in enumerate(names):
        cam = {"image": name}
        if pred.cam2world is not None:
            cam["cam2world"] = pred.cam2world[0, i].float().cpu().tolist()
        if pred.intrinsics is not None:
            cam["K"] = pred.intrinsics[0, i].float().cpu().tolist()
        cameras.append(cam)
    path = out_dir / "cameras.json"
    path.write_text(json.dumps({"convention": "OpenCV; cam2world: camera -> world = view 0's camera; K in pixels",
                                "size": list(pred.pts3d.shape[2:4]), "cameras": cameras}, indent=2))
    return path


# --- the whole run ------------------------------------------------------------------------------
def default_long_side(model: Reconstructor) -> int:
    """The model's training resolution (long side): ``img_size`` of its config, else 512."""
    try:
        size = model.config_dict().get("img_size", 512)
    except NotImplementedError:
        size = 512
    size = max(size) if isinstance(size, (list, tuple)) else int(size)
    return int(size)


def run_inference(model: Reconstructor, inputs: list[Path], out_dir: str | Path, *, long_side: int | None = None,
                  views: bool = False, conf_threshold: float = 0.0, save_npy: bool = False,
                  device: torch.device | str = "cpu", progress: bool = True, model_name: str = "") -> dict:
    """Predict every image of ``inputs`` (mono) or all of them as one set (``views=True``) and write
    the outputs to ``out_dir``; returns the summary also written to ``predictions.json``."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multiple = int(model.patch_size)
    long_side = long_side or default_long_side(model)
    if long_side < multiple:
        raise InputError(f"--size {long_side} is smaller than the patch size {multiple}")
    summary: dict = {"model": model_name, "family": getattr(model, "family", ""), "mode": "views" if views else "mono",
                     "images": []}
    if not views:
        for path in tqdm(inputs, desc="infer", unit="img", disable=not progress):
            image = prepare_image(path, long_side, multiple)
            pred = predict_mono(model, image, device)
            stats = write_view_outputs(out_dir, path.stem, pred.depth[0], pred.conf[0], pred.pts3d[0], image.rgb,
                                       conf_threshold, save_npy)
            summary["images"].append(_image_entry(image, stats))
    else:
        first = prepare_image(inputs[0], long_side, multiple)
        images = [first] + [prepare_image(p, long_side, multiple, size=tuple(first.img.shape[-2:]))
                            for p in inputs[1:]]
        pred = predict_views(model, images, device)
        all_pts, all_rgb = [], []
        for i, image in enumerate(tqdm(images, desc="write", unit="view", disable=not progress)):
            depth = pred.depth[0, i] if pred.depth is not None else _z_in_own_frame(pred, i)
            conf = pred.conf[0, i]
            stats = write_view_outputs(out_dir, image.source.stem, depth, conf, pred.pts3d[0, i], image.rgb,
                                       conf_threshold, save_npy)
            summary["images"].append(_image_entry(image, stats))
            keep = conf.float().cpu().numpy() >= conf_threshold
            all_pts.append(pred.pts3d[0, i].float().cpu().numpy()[keep])
            all_rgb.append(image.rgb[keep])
        write_ply(out_dir / "scene.ply", np.concatenate(all_pts), np.concatenate(all_rgb))
        cams = write_cameras(out_dir, pred, [im.source.name for im in images])
        summary["cameras"] = cams.name if cams else None
    (out_dir / "predictions.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _z_in_own_frame(pred: ViewsPrediction, i: int) -> Tensor | None:
    """Depth of view ``i`` when the model gives no per-view depth: z of its points in its own camera
    (needs ``cam2world``; view 0's points are in its own frame), else ``None`` (DUSt3R/MASt3R view 1:
    its points are in view 0's frame and its camera is unknown)."""
    pts = pred.pts3d[0, i]
    if pred.cam2world is not None:
        return transform_points(invert_rigid(pred.cam2world[0, i].float()), pts.float())[..., 2]
    return pts[..., 2] if i == 0 else None


def _image_entry(image: PreparedImage, stats: dict) -> dict:
    return {"image": str(image.source), "original_size": list(image.original_size),
            "resized_size": list(image.resized_size), "crop_xy": list(image.crop),
            "size": list(image.img.shape[-2:]), **stats}


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


__all__ = ["list_images", "PreparedImage", "prepare_image", "target_size", "predict_mono", "predict_views",
           "write_depth_png16", "read_depth_png16", "write_png", "write_ply", "read_ply",
           "write_view_outputs", "write_cameras", "default_long_side", "run_inference"]
