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
in its own camera is known: view 0, models with per-view depth or cameras), plus the fused,
confidence-filtered cloud of :mod:`fin3r.outputs.scene` as ``scene.ply`` and ``scene.glb`` (with the
camera frusta), ``cameras.json`` where the model predicts cameras (:func:`write_cameras`), and,
where every view has a camera, a COLMAP sparse model with its images in ``colmap/``
(:mod:`fin3r.outputs.colmap`). ``docs/outputs.md`` lists every file with its frame and units.
DUSt3R/MASt3R take any number of views through the global alignment (:mod:`fin3r.align`: pair
graph, point-cloud optimiser), which gives them per-view depth, cameras and focal lengths too
(a pair: without optimisation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fin3r.align import AlignConfig, align_views, is_pairwise
from fin3r.colormap import colorize
from fin3r.errors import InputError
from fin3r.io import write_json_atomic
from fin3r.media import Frame, is_video, open_rgb, read_video_frames
from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction
from fin3r.outputs.ply import read_ply, write_ply


log = logging.getLogger(__name__)

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


def list_inputs(path: str | Path, fps: float | None = None, max_frames: int | None = None) -> list[Path | Frame]:
    """What ``fin3r infer`` takes: a video file (frames sampled at ``fps``, at most ``max_frames``:
    :func:`fin3r.media.read_video_frames`), an image file or a folder of images (any sizes)."""
    path = Path(path)
    if path.is_file() and is_video(path):
        return list(read_video_frames(path, fps, max_frames))
    return list_images(path)


@dataclass
class PreparedImage:
    """An image resized and centre-cropped for a model.

    Attributes:
        img: ``(3, H, W)`` float32 in ``[0, 1]``, H and W multiples of the patch size.
        rgb: ``(H, W, 3)`` uint8, the same pixels (for colouring point clouds).
        source: the file, or the video frame.
        original_size: ``(height, width)`` of the file.
        resized_size: ``(height, width)`` after resizing, before the crop.
        crop: ``(x0, y0)`` of the crop in the resized image.
    """

    img: Tensor
    rgb: np.ndarray
    source: Path | Frame
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop: tuple[int, int]


def target_size(height: int, width: int, long_side: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(resized (h, w), cropped (h, w))``: scale so the long side is ``long_side``, then crop each
    side down to a multiple of ``multiple`` (the DUSt3R preprocessing, without forcing 4:3)."""
    scale = long_side / max(height, width)
    rh, rw = max(multiple, round(height * scale)), max(multiple, round(width * scale))
    return (rh, rw), (rh // multiple * multiple, rw // multiple * multiple)


#: ``prepare_image`` modes (``fin3r infer --preprocess``)
PREPROCESS_MODES = ("default", "crop", "pad", "square")


def prepare_image(source: str | Path | Frame, long_side: int = 512, multiple: int = 16,
                  size: tuple[int, int] | None = None, mode: str = "default") -> PreparedImage:
    """Load an image file (EXIF orientation applied: :func:`fin3r.media.open_rgb`, as in labelling and
    training) or take a video :class:`~fin3r.media.Frame`, resize it and centre-crop (or pad) it.

    Modes (``long_side`` is the target side ``S``): ``default`` -- long side ``S``, each side
    centre-cropped down to a multiple of ``multiple`` (DUSt3R's 512 loader without forcing 4:3);
    ``crop`` -- VGGT's ``load_and_preprocess_images(mode="crop")``: width ``S``, height
    ``round(h S / w / multiple) * multiple`` (BICUBIC), centre-cropped to ``S`` if taller; ``pad`` --
    VGGT's ``mode="pad"``: long side ``S``, the other rounded to a multiple (BICUBIC), padded with
    white to ``S x S`` (centred); ``square`` -- DUSt3R's 224 loader: short side ``S``, centre square.

    ``size=(H, W)`` forces the output size (resize to cover, then centre-crop), e.g. so that all
    views of a multi-view set agree.
    """
    from PIL import Image

    if mode not in PREPROCESS_MODES:
        raise InputError(f"unknown preprocessing {mode!r}; expected one of {', '.join(PREPROCESS_MODES)}")
    if mode != "default" and size is None and long_side % multiple:
        raise InputError(f"--preprocess {mode}: the size {long_side} must be a multiple of the patch size {multiple}")
    if isinstance(source, Frame):
        rgb0 = source.rgb
    else:
        source = Path(source)
        try:
            rgb0 = open_rgb(source)[0]
        except Exception as e:
            raise InputError(f"{source}: cannot read as an image ({e})") from e
    im = Image.fromarray(rgb0)
    w0, h0 = im.size
    resample = None
    if size is None and mode == "crop":
        rw, rh = long_side, max(multiple, round(h0 * long_side / w0 / multiple) * multiple)
        cw, ch, resample = rw, min(rh, long_side), Image.BICUBIC
    elif size is None and mode == "pad":
        if w0 >= h0:
            rw, rh = long_side, max(multiple, round(h0 * long_side / w0 / multiple) * multiple)
        else:
            rh, rw = long_side, max(multiple, round(w0 * long_side / h0 / multiple) * multiple)
        cw, ch, resample = rw, rh, Image.BICUBIC
    elif size is None and mode == "square":
        s = long_side / min(h0, w0)
        rh, rw = max(long_side, round(h0 * s)), max(long_side, round(w0 * s))
        ch = cw = long_side
    elif size is None:
        (rh, rw), (ch, cw) = target_size(h0, w0, long_side, multiple)
    else:
        ch, cw = size
        if ch % multiple or cw % multiple:
            raise InputError(f"size {ch}x{cw} is not a multiple of {multiple}")
        scale = max(ch / h0, cw / w0)
        rh, rw = max(ch, round(h0 * scale)), max(cw, round(w0 * scale))
    if resample is None:
        resample = Image.LANCZOS if rh * rw < h0 * w0 else Image.BICUBIC
    im = im.resize((rw, rh), resample)
    x0, y0 = (rw - cw) // 2, (rh - ch) // 2
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if size is None and mode == "pad" and (cw, ch) != (long_side, long_side):
        canvas = Image.new("RGB", (long_side, long_side), (255, 255, 255))
        canvas.paste(im, ((long_side - cw) // 2, (long_side - ch) // 2))
        im = canvas
        x0, y0 = x0 - (long_side - cw) // 2, y0 - (long_side - ch) // 2  # negative: padding
    rgb = np.asarray(im, dtype=np.uint8).copy()
    img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    return PreparedImage(img, rgb, source, (h0, w0), (rh, rw), (x0, y0))


# --- prediction ---------------------------------------------------------------------------------
def predict_mono(model: Reconstructor, image: PreparedImage, device: torch.device | str = "cpu") -> MonoPrediction:
    """``model.predict_mono`` on one prepared image (batch 1, inference mode)."""
    with torch.inference_mode():
        return model.predict_mono(image.img[None].to(device))


def predict_views(model: Reconstructor, images: list[PreparedImage], device: torch.device | str = "cpu",
                  align: AlignConfig | None = None, progress: bool = False) -> ViewsPrediction:
    """``model.predict_views`` on a set of prepared images of one size (batch 1, S = len(images)).

    Pairwise models (DUSt3R, MASt3R) go through the global alignment (:func:`fin3r.align.align_views`
    with ``align``, default :class:`~fin3r.align.AlignConfig`): any number of views, with cameras."""
    sizes = {tuple(im.img.shape[-2:]) for im in images}
    if len(sizes) != 1:
        raise InputError(f"multi-view inference needs one image size, got {sorted(sizes)}")
    imgs = torch.stack([im.img for im in images])[None].to(device)
    if is_pairwise(model):
        if len(images) < 2:
            raise InputError(f"{type(model).__name__}: --views needs at least 2 images, got {len(images)}")
        return align_views(model, imgs, align or AlignConfig(), progress=progress)
    with torch.inference_mode():
        return model.predict_views(imgs)


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
    write_json_atomic(path, {"convention": "OpenCV; cam2world: camera -> world = view 0's camera; K in pixels",
                             "size": list(pred.pts3d.shape[2:4]), "cameras": cameras}, indent=2)
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


def run_inference(model: Reconstructor, inputs: list[Path | Frame], out_dir: str | Path, *, long_side: int | None = None,
                  views: bool = False, conf_threshold: float = 0.0, conf_percentile: float = 0.0,
                  save_npy: bool = False, device: torch.device | str = "cpu", progress: bool = True,
                  model_name: str = "", colmap_points: int = 100_000, camera_model: str = "auto",
                  align: AlignConfig | None = None, preprocess: str = "default") -> dict:
    """Predict every image of ``inputs`` (mono) or all of them as one set (``views=True``) and write
    the outputs to ``out_dir``; returns the summary also written to ``predictions.json``.

    Pixels with a confidence below the cut of :func:`fin3r.outputs.scene.confidence_cut`
    (``conf_threshold``, ``conf_percentile``) are left out of the point clouds. Multi-view sets also
    get ``scene.ply``, ``scene.glb`` (points and camera frusta) and, where every view has a camera,
    the COLMAP folder ``colmap/`` (at most ``colmap_points`` points; ``camera_model`` as in
    :func:`fin3r.outputs.colmap.camera_from_intrinsics`).
    """
    from tqdm import tqdm

    from fin3r.outputs.scene import scene_from_mono

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multiple = int(model.patch_size)
    long_side = long_side or default_long_side(model)
    if long_side < multiple:
        raise InputError(f"--size {long_side} is smaller than the patch size {multiple}")
    family = getattr(model, "family", "")
    summary: dict = {"model": model_name, "family": family, "mode": "views" if views else "mono",
                     "units": units_of(family), "images": []}
    if not views:
        for path in tqdm(inputs, desc="infer", unit="img", disable=not progress):
            image = prepare_image(path, long_side, multiple, mode=preprocess)
            pred = predict_mono(model, image, device)
            scene = scene_from_mono(pred, image.rgb, path.name, conf_threshold, conf_percentile)
            stats = write_view_outputs(out_dir, path.stem, pred.depth[0], pred.conf[0], pred.pts3d[0], image.rgb,
                                       scene.conf_cut, save_npy)
            summary["images"].append(_image_entry(image, stats))
    else:
        images = prepare_image_set(inputs, long_side, multiple, mode=preprocess)
        pred = predict_views(model, images, device, align=align, progress=progress)
        if "align" in pred.extras:
            summary["align"] = pred.extras["align"]
        summary.update(write_scene_outputs(out_dir, pred, images, conf_threshold, conf_percentile, save_npy,
                                           colmap_points, camera_model, summary["units"], progress))
    write_json_atomic(out_dir / "predictions.json", summary, indent=2, default=_json_default)
    return summary


def units_of(family: str) -> str:
    """The unit of a family's points, in words (its spec says whether the model is metric)."""
    from fin3r.models import find_family

    spec = find_family(family)
    if spec is not None and spec.metric:
        return "metres (a metric model)"
    return "the model's own: a scale common to the views, arbitrary overall"


def prepare_image_set(inputs: list[Path | Frame], long_side: int, multiple: int,
                      mode: str = "default") -> list[PreparedImage]:
    """Prepare images for one multi-view set: the first sets the size, the others are resized to
    cover it and centre-cropped (each crop recorded in its :class:`PreparedImage`); ``pad`` and
    ``square`` give every image ``S x S`` the same way."""
    first = prepare_image(inputs[0], long_side, multiple, mode=mode)
    if mode in ("pad", "square"):
        return [first] + [prepare_image(p, long_side, multiple, mode=mode) for p in inputs[1:]]
    return [first] + [prepare_image(p, long_side, multiple, size=tuple(first.img.shape[-2:])) for p in inputs[1:]]


def write_scene_outputs(out_dir: Path, pred: ViewsPrediction, images: list[PreparedImage], conf_threshold: float = 0.0,
                        conf_percentile: float = 0.0, save_npy: bool = False, colmap_points: int = 100_000,
                        camera_model: str = "auto", units: str = "", progress: bool = False) -> dict:
    """The files of one multi-view prediction: per view the files of :func:`write_view_outputs`,
    ``scene.ply``, ``scene.glb``, ``cameras.json`` (models with cameras) and ``colmap/`` (every view
    with a camera). Returns ``{"images": [...], "cameras", "colmap", "conf_cut", "scene_points"}``."""
    from tqdm import tqdm

    from fin3r.outputs.colmap import export_colmap
    from fin3r.outputs.glb import write_scene_glb
    from fin3r.outputs.scene import scene_from_views

    scene = scene_from_views(pred, [im.rgb for im in images], [im.source.name for im in images], conf_threshold,
                             conf_percentile)
    entries = []
    for i, image in enumerate(tqdm(images, desc="write", unit="view", disable=not progress)):
        depth = scene.depths[i]
        stats = write_view_outputs(out_dir, image.source.stem, None if depth is None else torch.from_numpy(depth),
                                   pred.conf[0, i], pred.pts3d[0, i], image.rgb, scene.conf_cut, save_npy)
        entries.append(_image_entry(image, stats))
    n_points = write_ply(out_dir / "scene.ply", scene.points, scene.colors)
    write_scene_glb(out_dir / "scene.glb", scene)
    cams = write_cameras(out_dir, pred, [im.source.name for im in images])
    colmap: dict | str = "not written: the prediction has no camera for every view"
    if scene.has_all_cameras:
        try:
            colmap = export_colmap(scene, out_dir / "colmap", max_points=colmap_points, camera_model=camera_model,
                                   units=units or units_of(""))
        except InputError as e:  # e.g. a predicted focal length that is not positive
            colmap = f"not written: {e}"
            log.warning("COLMAP model %s", colmap)
    return {"images": entries, "cameras": cams.name if cams else None, "conf_cut": scene.conf_cut,
            "scene_points": n_points, "glb": "scene.glb", "colmap": colmap}


def _image_entry(image: PreparedImage, stats: dict) -> dict:
    """``original_size`` (upright), ``resized_size`` and ``crop_xy`` map a pixel ``(u, v)`` of the
    outputs to ``((u + x0 + 0.5) * W0 / Wr - 0.5, (v + y0 + 0.5) * H0 / Hr - 0.5)`` in the original."""
    entry = {"image": str(image.source), "original_size": list(image.original_size),
             "resized_size": list(image.resized_size), "crop_xy": list(image.crop),
             "size": list(image.img.shape[-2:])}
    if isinstance(image.source, Frame):
        entry.update(image=image.source.name, frame_index=image.source.index, time_s=image.source.time_s)
    return {**entry, **stats}


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


__all__ = ["list_images", "list_inputs", "PreparedImage", "prepare_image", "target_size", "predict_mono", "predict_views",
           "write_depth_png16", "read_depth_png16", "colorize", "write_png", "write_ply", "read_ply",
           "write_view_outputs", "write_cameras", "default_long_side", "run_inference", "prepare_image_set",
           "write_scene_outputs", "units_of"]
