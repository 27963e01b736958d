"""MoGe's monocular-geometry evaluation layout: files, reader, and the evaluation view.

Layout (``docs/evaluation.md``), one folder per benchmark::

    <Benchmark>/.index.txt              one instance folder (relative path) per line
    <Benchmark>/<instance>/image.jpg    RGB, 8 bit
    <Benchmark>/<instance>/depth.png    uint16, log-encoded between PNG text chunks near / far
    <Benchmark>/<instance>/meta.json    {"intrinsics": 3x3 normalized (image = [0, 1]^2)}
    <Benchmark>/<instance>/segmentation.png  optional: uint8/uint16 segment ids, PNG text chunk
                                        ``labels`` = JSON {name: id} (read for segmented benchmarks)
    <Benchmark>/<instance>/edge.png     optional (fin3r extension): uint8, 255 = depth-edge pixel

``depth.png`` codes: 0 = unknown (NaN), 65535 = infinitely far (+inf), otherwise
``u = (v - 1) / 65533`` and ``depth = near^(1 - u) * far^u``; an optional legacy ``unit`` chunk
multiplies the depth.

:func:`load_instance` reproduces MoGe's evaluation view (``EvalDataLoaderPipeline``): the image is
rectified so the principal point is the centre, cropped to the benchmark's aspect ratio and
resampled to its fixed resolution (LANCZOS pre-resize, then a homography: bilinear for the image,
nearest for depth-as-ray-distance and the masks); GT depth above ``1000 x`` its 1 % quantile is
dropped; ``depth_unit`` marks a metric benchmark. Unlike MoGe, an instance with no valid pixel is
not replaced by ones: it is returned with an empty mask and the caller excludes and counts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from fin3r.errors import InputError
from fin3r.io import write_json_atomic
from fin3r.eval.alignment import alignment_sample_index

__all__ = [
    "read_moge_depth",
    "write_moge_depth",
    "read_moge_meta",
    "read_moge_segmentation",
    "write_moge_segmentation",
    "list_instances",
    "write_instance",
    "MoGeInstance",
    "load_instance",
]


def read_moge_depth(path: str | Path) -> np.ndarray:
    """Decode a MoGe ``depth.png``: ``(H, W)`` float32, NaN = unknown, +inf = infinitely far."""
    with Image.open(path) as im:
        info = dict(im.info)
        raw = np.array(im)
    if "near" not in info or "far" not in info:
        raise InputError(f"{path}: not a MoGe depth PNG (no 'near'/'far' text chunks)")
    near, far = float(info["near"]), float(info["far"])
    u = (raw.astype(np.float32) - 1) / 65533
    depth = (near ** (1 - u) * far**u).astype(np.float32)
    if "unit" in info:  # legacy
        depth = depth * float(info["unit"])
    depth[raw == 0] = np.nan
    depth[raw == 65535] = np.inf
    return depth


def write_moge_depth(path: str | Path, depth: np.ndarray, max_range: float = 1e5) -> None:
    """Encode ``depth (H, W)`` (NaN = unknown, inf = far) as MoGe's log-uniform 16-bit PNG."""
    depth = np.asarray(depth, dtype=np.float32)
    finite = np.isfinite(depth)
    # float32 near / far and float32 arithmetic, as MoGe's writer (codes then match bit for bit)
    if not finite.any():
        near, far = np.float32(1.0), np.float32(1.1)
    else:
        near = max(depth[finite].min(), np.float32(1e-5))
        far = max(near * np.float32(1.1), min(depth[finite].max(), near * np.float32(max_range)))
    d = np.clip(np.nan_to_num(depth, nan=0.0), near, far)
    code = 1 + np.round(np.clip(np.log(d / near) / np.log(far / near), 0, 1) * 65533)
    code = code.astype(np.uint16)
    code[np.isnan(depth)] = 0
    code[np.isinf(depth)] = 65535
    info = PngImagePlugin.PngInfo()
    info.add_text("near", str(near))
    info.add_text("far", str(far))
    Image.fromarray(code).save(path, pnginfo=info, compress_level=6)


def read_moge_meta(path: str | Path) -> dict:
    """``meta.json``: returns the dict with ``intrinsics`` as a ``(3, 3)`` float32 array."""
    meta = json.loads(Path(path).read_text())
    if "intrinsics" not in meta:
        raise InputError(f"{path}: no 'intrinsics' entry")
    meta["intrinsics"] = np.asarray(meta["intrinsics"], dtype=np.float32).reshape(3, 3)
    return meta


#: segment labels MoGe's loader drops before scoring local point maps
IGNORED_SEGMENT_LABELS = ("undefined", "unannotated", "background", "sky")


def read_moge_segmentation(path: str | Path) -> tuple[np.ndarray, dict[str, int]]:
    """``segmentation.png``: ``(ids (H, W) int64, labels {name: id})`` (labels from the PNG text
    chunk ``labels``; without it, every id but 0 is a segment named by its id)."""
    with Image.open(path) as im:
        info = dict(im.info)
        ids = np.array(im).astype(np.int64)
    if ids.ndim != 2:
        raise InputError(f"{path}: a segmentation must be a single-channel PNG, got shape {ids.shape}")
    if "labels" in info:
        try:
            labels = {str(k): int(v) for k, v in json.loads(info["labels"]).items()}
        except (ValueError, TypeError, AttributeError):
            raise InputError(f"{path}: the 'labels' text chunk is not a JSON object of integer ids") from None
    else:
        labels = {str(i): int(i) for i in np.unique(ids) if i != 0}
    return ids, labels


def write_moge_segmentation(path: str | Path, ids: np.ndarray, labels: dict[str, int]) -> None:
    """Write ``segmentation.png`` (uint16 ids, ``labels`` JSON text chunk) as MoGe's writer does."""
    info = PngImagePlugin.PngInfo()
    info.add_text("labels", json.dumps(labels, ensure_ascii=True, separators=(",", ":")))
    Image.fromarray(np.asarray(ids, dtype=np.uint16)).save(path, pnginfo=info)


def select_segments(ids: np.ndarray, labels: dict[str, int], max_segments: int = 100, min_area: int = 1000) -> list[int]:
    """MoGe's segment filter on the evaluation view: drop the ignored labels, keep the
    ``max_segments`` largest (pixel count over the whole view, valid or not) with at least
    ``min_area`` pixels. Returns their ids, largest first."""
    counts = dict(zip(*np.unique(ids, return_counts=True)))
    kept = {k: v for k, v in labels.items() if k not in IGNORED_SEGMENT_LABELS}
    order = sorted(kept, key=lambda k: counts.get(kept[k], 0), reverse=True)
    return [kept[k] for k in order[:max_segments] if counts.get(kept[k], 0) >= min_area]


def list_instances(root: str | Path, split: str = ".index.txt", benchmark: str = "") -> list[str]:
    """Instance folders listed in ``root/split`` (blank lines skipped)."""
    index = Path(root) / split
    if not index.is_file():
        raise InputError(f"benchmark {benchmark or Path(root).name}: missing split file {index}")
    return [line.strip() for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_instance(
    folder: str | Path,
    image: np.ndarray,
    depth: np.ndarray,
    intrinsics_normalized: np.ndarray,
    edge: np.ndarray | None = None,
) -> None:
    """Write one instance in MoGe's layout (``image (H, W, 3)`` uint8, ``depth (H, W)``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / "image.jpg", quality=95)
    write_moge_depth(folder / "depth.png", depth)
    K = np.asarray(intrinsics_normalized, dtype=np.float64).reshape(3, 3).tolist()
    write_json_atomic(folder / "meta.json", {"intrinsics": K}, indent=None)
    if edge is not None:
        Image.fromarray(np.asarray(edge, dtype=bool).astype(np.uint8) * 255).save(folder / "edge.png")


@dataclass
class MoGeInstance:
    """One evaluation instance at the benchmark resolution.

    Attributes:
        name: instance path relative to the benchmark root.
        image: ``(3, H, W)`` float in [0, 1].
        depth: ``(H, W)`` planar depth (0 where invalid), metres if ``is_metric``.
        mask: ``(H, W)`` bool valid GT pixels.
        intrinsics: ``(3, 3)`` normalized intrinsics of the evaluation view (principal point 0.5).
        points: ``(H, W, 3)`` GT point map (OpenCV camera frame).
        is_metric: the benchmark has a depth unit.
        edge: optional ``(H, W)`` bool depth-edge pixels.
        segmentation: optional ``(H, W)`` long segment ids (segmented benchmarks).
        segment_ids: the ids MoGe scores (see :func:`select_segments`).
    """

    name: str
    image: Tensor
    depth: Tensor
    mask: Tensor
    intrinsics: Tensor
    points: Tensor
    is_metric: bool
    edge: Tensor | None = None
    segmentation: Tensor | None = None
    segment_ids: list[int] | None = None


def _uv_grid(h: int, w: int) -> np.ndarray:
    """``(h, w, 2)`` normalized pixel centres ``((j + .5) / w, (i + .5) / h)``."""
    u = np.linspace(0.5 / w, 1 - 0.5 / w, w, dtype=np.float32)
    v = np.linspace(0.5 / h, 1 - 0.5 / h, h, dtype=np.float32)
    uu, vv = np.meshgrid(u, v, indexing="xy")
    return np.stack([uu, vv], axis=-1)


def _rays(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame rays with z = 1 through normalized pixel coordinates ``uv (..., 2)``."""
    hom = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1)
    return hom @ np.linalg.inv(K).T.astype(np.float32)


def _rotation_onto_z(v: np.ndarray) -> np.ndarray:
    """Rotation taking direction ``v`` onto ``+z`` (Rodrigues about ``v x z``)."""
    a = v / np.linalg.norm(v)
    b = np.array([0, 0, 1], dtype=v.dtype)
    c = float(a @ b)
    k = np.cross(a, b)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=v.dtype)
    return np.eye(3, dtype=v.dtype) + Kx + Kx @ Kx / (1 + c)


def _line_intersection(d: np.ndarray, p: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Point where the line ``t d`` (through the origin) meets the line ``p + s e`` (2-D)."""
    A = np.array([[d[0], -e[0]], [d[1], -e[1]]], dtype=np.float64)
    if abs(np.linalg.det(A)) < 1e-12:
        return np.array([np.inf, np.inf])
    t, _ = np.linalg.solve(A, p.astype(np.float64))
    return t * d


def _resize_masked_nearest(x: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    m, idx = alignment_sample_index(torch.from_numpy(mask), size, numpy_centres=True)
    return x.reshape(-1)[idx.numpy()], m.numpy()


def _target_view(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rotation ``R`` onto the centre ray, target intrinsics, and the target field extents."""
    raw_h, raw_v = abs(1.0 / K[0, 0]), abs(1.0 / K[1, 1])
    aspect = width / height
    tgt_h = min(raw_h, raw_v * aspect)
    tgt_v = tgt_h / aspect
    centre = _rays(np.array([0.5, 0.5], dtype=np.float32), K)
    R = _rotation_onto_z(centre.astype(np.float32))
    corners = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float32)
    corners = _rays(corners, K) @ R.T
    corners = corners[:, :2] / corners[:, 2:3]
    warp_h, warp_v = raw_h, raw_v
    for i in range(4):
        p, e = corners[i - 1], corners[i] - corners[i - 1]
        hits = np.stack([_line_intersection(np.array([aspect, s]), p, e) for s in (1.0, -1.0)])
        warp_h = min(warp_h, 2 * float(np.abs(hits[:, 0]).min()))
        warp_v = min(warp_v, 2 * float(np.abs(hits[:, 1]).min()))
    tgt_h, tgt_v = min(tgt_h, warp_h), min(tgt_v, warp_v)
    K_tgt = np.array([[1 / tgt_h, 0, 0.5], [0, 1 / tgt_v, 0.5], [0, 0, 1]], dtype=np.float32)
    return R, K_tgt, tgt_h, tgt_v


def load_instance(
    bench_root: str | Path,
    name: str,
    width: int,
    height: int,
    depth_unit: float | None = None,
    drop_max_depth: float = 1000.0,
    benchmark: str = "",
    include_segmentation: bool = False,
) -> MoGeInstance:
    """Read instance ``name`` of a benchmark and build its evaluation view (see the module doc).

    ``include_segmentation`` reads ``segmentation.png`` (required then) and warps it like the depth
    mask (nearest), keeping MoGe's segment selection."""
    folder = Path(bench_root) / name
    bench = benchmark or Path(bench_root).name
    paths = {k: folder / f for k, f in (("image", "image.jpg"), ("depth", "depth.png"), ("meta", "meta.json"))}
    for p in paths.values():
        if not p.is_file():
            raise InputError(f"benchmark {bench}: missing file {p}")
    with Image.open(paths["image"]) as im:
        image = np.array(im.convert("RGB"))
    raw_depth = read_moge_depth(paths["depth"])
    K = read_moge_meta(paths["meta"])["intrinsics"]
    edge_path = folder / "edge.png"
    edge = None
    if edge_path.is_file():
        with Image.open(edge_path) as im:
            edge = np.array(im) > 0
    seg = labels = None
    if include_segmentation:
        seg_path = folder / "segmentation.png"
        if not seg_path.is_file():
            raise InputError(f"benchmark {bench}: missing file {seg_path}")
        seg, labels = read_moge_segmentation(seg_path)
    raw_hgt, raw_wid = image.shape[:2]
    if seg is not None and seg.shape != (raw_hgt, raw_wid):
        raise InputError(f"benchmark {bench}: {folder / 'segmentation.png'} is {seg.shape}, image is {(raw_hgt, raw_wid)}")
    if raw_depth.shape != (raw_hgt, raw_wid):
        raise InputError(f"benchmark {bench}: {paths['depth']} is {raw_depth.shape}, image is {(raw_hgt, raw_wid)}")
    mask = np.isfinite(raw_depth)
    depth = np.nan_to_num(raw_depth, nan=1.0, posinf=1.0, neginf=1.0)

    R, K_tgt, tgt_h, tgt_v = _target_view(K, width, height)
    raw_h, raw_v = abs(1.0 / K[0, 0]), abs(1.0 / K[1, 1])
    resc_w = int(raw_wid * (raw_h / raw_wid) / (tgt_h / width))
    resc_h = int(raw_hgt * (raw_v / raw_hgt) / (tgt_v / height))
    image = np.array(Image.fromarray(image).resize((resc_w, resc_h), Image.Resampling.LANCZOS))
    depth, mask_r = _resize_masked_nearest(depth, mask, (resc_h, resc_w))
    depth = depth.reshape(resc_h, resc_w)
    distance = depth * np.linalg.norm(_rays(_uv_grid(resc_h, resc_w), K), axis=-1)
    if edge is not None:
        edge = cv2.resize(edge.astype(np.uint8), (resc_w, resc_h), interpolation=cv2.INTER_NEAREST)

    # homography from target pixels to the rescaled raw image
    H = K @ np.linalg.inv(R) @ np.linalg.inv(K_tgt)
    uv_t = _uv_grid(height, width)
    src = np.concatenate([uv_t, np.ones_like(uv_t[..., :1])], axis=-1) @ H.T.astype(np.float32)
    uv_src = src[..., :2] / (src[..., 2:3] + 1e-12)
    map_x = (uv_src[..., 0] * resc_w - 0.5).astype(np.float32)
    map_y = (uv_src[..., 1] * resc_h - 0.5).astype(np.float32)
    img_t = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)
    dist_t = cv2.remap(distance.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST)
    mask_t = cv2.remap(mask_r.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0
    ray_len = np.linalg.norm(_rays(uv_t, K_tgt), axis=-1)
    depth_t = dist_t / (ray_len + 1e-12)
    if edge is not None:
        edge = cv2.remap(edge, map_x, map_y, cv2.INTER_NEAREST) > 0
    segment_ids = None
    if seg is not None:  # nearest resize, then the same homography (nearest), as MoGe
        seg = cv2.resize(seg.astype(np.float32), (resc_w, resc_h), interpolation=cv2.INTER_NEAREST)
        seg = cv2.remap(seg, map_x, map_y, cv2.INTER_NEAREST).astype(np.int64)
        segment_ids = select_segments(seg, labels)

    if mask_t.any():
        max_depth = np.quantile(depth_t[mask_t], 0.01) * drop_max_depth
        mask_t &= depth_t <= max_depth
    depth_t = np.nan_to_num(depth_t, nan=0.0)
    if depth_unit is not None:
        depth_t = depth_t * depth_unit
    depth_t = np.where(mask_t, depth_t, 0.0).astype(np.float32)
    points = _rays(uv_t, K_tgt) * depth_t[..., None]
    return MoGeInstance(
        name=name,
        image=torch.from_numpy(img_t.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous(),
        depth=torch.from_numpy(depth_t),
        mask=torch.from_numpy(mask_t),
        intrinsics=torch.from_numpy(K_tgt),
        points=torch.from_numpy(points.astype(np.float32)),
        is_metric=depth_unit is not None,
        edge=None if edge is None else torch.from_numpy(edge),
        segmentation=None if seg is None else torch.from_numpy(seg),
        segment_ids=segment_ids,
    )

