"""A monocular benchmark of your own, in MoGe's layout, from images and depth maps.

``write_monodepth_benchmark(images_dir, depths_dir, out_dir, ...)`` pairs every image with its
depth map by file stem, and writes ``out_dir`` as ``fin3r eval monodepth`` reads it
(:mod:`fin3r.eval.moge_layout`): ``.index.txt``, one folder per image with ``image.jpg``,
``depth.png`` (MoGe's log-encoded 16 bit), ``meta.json`` (normalised intrinsics), ``edge.png``
(edge pixels, :func:`fin3r.eval.world.edge_mask`, the definition ``fin3r demo`` and ``fin3r eval
world`` use), and ``benchmark.json`` (evaluation size, ``depth_unit``).

Depth maps (planar depth z along the optical axis, one per image, same size as the image):

- ``<stem>.npy``: float, 2-D, the stored value x ``depth_scale`` (default 1);
- ``<stem>.png``: 16-bit integers x ``depth_scale``; when ``depth_scale`` is not given the PNG's
  ``depth_scale`` text chunk (written by ``fin3r infer``) is used, else it is an error; a MoGe
  ``depth.png`` (``near``/``far`` chunks) is decoded as such;
- ``<stem>_depth.npy`` / ``<stem>_depth.png`` are accepted too (``fin3r infer``'s names).

0, negative and non-finite depths are unknown (not scored). Images without a depth map, or whose
depth map is unreadable or of another size, are skipped and reported; none usable is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fin3r.errors import InputError

__all__ = ["DEPTH_SUFFIXES", "read_depth_map", "load_intrinsics", "write_monodepth_benchmark", "BenchmarkReport"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: depth-map file names tried for an image ``<stem>``, in order
DEPTH_SUFFIXES = (".npy", ".png", "_depth.npy", "_depth.png")


def read_depth_map(path: str | Path, depth_scale: float | None = None) -> np.ndarray:
    """``(H, W)`` float32 depth of a ``.npy`` or 16-bit ``.png`` file (see the module doc); NaN where
    unknown."""
    from PIL import Image

    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{path}: unreadable .npy ({type(e).__name__}: {e})") from None
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"{path}: expected a 2-D numeric array, got {arr.dtype} {arr.shape}")
        depth = arr.astype(np.float64) * (1.0 if depth_scale is None else depth_scale)
    else:
        try:
            with Image.open(path) as im:
                info = dict(getattr(im, "text", {}) or {})
                info.update({k: v for k, v in im.info.items() if isinstance(v, str)})
                raw = np.array(im)
        except Exception as e:
            raise InputError(f"{path}: unreadable PNG ({type(e).__name__}: {e})") from None
        if "near" in info and "far" in info:
            from fin3r.eval.moge_layout import read_moge_depth

            depth = read_moge_depth(path).astype(np.float64)
            depth[~np.isfinite(depth)] = np.nan
        else:
            if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint8):
                raise InputError(f"{path}: expected a single-channel 16-bit PNG, got {raw.dtype} {raw.shape}")
            if depth_scale is None:
                if "depth_scale" not in info:
                    raise InputError(f"{path}: a 16-bit depth PNG needs --depth-scale (metres per unit, e.g. "
                                     f"0.001 for millimetres) or a depth_scale text chunk")
                depth_scale = float(info["depth_scale"])
            depth = raw.astype(np.float64) * depth_scale
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth.astype(np.float32)


def load_intrinsics(path: str | Path) -> dict[str, np.ndarray] | np.ndarray:
    """Pixel intrinsics (pixel (i, j) centred at (u = j, v = i)) from a ``.txt`` (3 x 3 numbers: one
    camera for every image) or a ``.json`` (``{"K": 3x3}`` for every image, or ``{stem: 3x3}``)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and set(data) == {"K"}:
                return _check_K(np.asarray(data["K"], dtype=np.float64), path)
            if not isinstance(data, dict):
                raise InputError(f"{path}: expected {{'K': 3x3}} or {{stem: 3x3}}")
            return {str(k): _check_K(np.asarray(v, dtype=np.float64), path) for k, v in data.items()}
        return _check_K(np.loadtxt(path, dtype=np.float64), path)
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read intrinsics ({e})") from None


def _check_K(K: np.ndarray, path: Path) -> np.ndarray:
    K = K.reshape(3, 3) if K.size == 9 else K
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{path}: intrinsics must be 3x3 with positive focal lengths")
    return K


@dataclass
class BenchmarkReport:
    """What :func:`write_monodepth_benchmark` did: written instance names, skipped images (with why)."""

    folder: Path
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def write_monodepth_benchmark(images_dir: str | Path, depths_dir: str | Path, out_dir: str | Path, *,
                              metric: bool, intrinsics: str | Path | None = None, fov_x_deg: float | None = None,
                              depth_scale: float | None = None, size: tuple[int, int] | None = None,
                              edges: bool = True) -> BenchmarkReport:
    """Write a MoGe-layout benchmark (see the module doc).

    Args:
        metric: the depth maps are metric (``depth_unit: 1``, scored without alignment too) --
            else known up to scale (``depth_unit: null``).
        intrinsics: a ``.txt``/``.json`` file (:func:`load_intrinsics`); or ``fov_x_deg``, a
            horizontal field of view for every image (principal point at the centre).
        size: evaluation ``(width, height)`` (default: the first image's size).
    """
    from PIL import Image

    from fin3r.eval.moge_layout import write_instance
    from fin3r.eval.world import edge_mask

    images_dir, depths_dir, out = Path(images_dir), Path(depths_dir), Path(out_dir)
    for d in (images_dir, depths_dir):
        if not d.is_dir():
            raise InputError(f"{d}: no such folder")
    if (intrinsics is None) == (fov_x_deg is None):
        raise InputError("give the camera: --intrinsics FILE or --fov-x DEGREES (one of them)")
    cams = load_intrinsics(intrinsics) if intrinsics is not None else None
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    report = BenchmarkReport(out)
    for img_path in images:
        stem = img_path.stem
        depth_path = next((depths_dir / f"{stem}{s}" for s in DEPTH_SUFFIXES
                           if (depths_dir / f"{stem}{s}").is_file() and depths_dir / f"{stem}{s}" != img_path), None)
        if depth_path is None:
            report.skipped.append((img_path.name, f"no depth map {stem}{{{','.join(DEPTH_SUFFIXES)}}} in {depths_dir}"))
            continue
        try:
            with Image.open(img_path) as im:
                rgb = np.asarray(im.convert("RGB"))
            depth = read_depth_map(depth_path, depth_scale)
        except InputError as e:
            report.skipped.append((img_path.name, str(e)))
            continue
        except Exception as e:  # a corrupt image
            report.skipped.append((img_path.name, f"unreadable image ({type(e).__name__}: {e})"))
            continue
        H, W = rgb.shape[:2]
        if depth.shape != (H, W):
            report.skipped.append((img_path.name, f"depth {depth.shape} does not match the image {(H, W)}"))
            continue
        if cams is None:
            f = (W / 2) / np.tan(np.radians(fov_x_deg) / 2)
            K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
        elif isinstance(cams, dict):
            if stem not in cams:
                report.skipped.append((img_path.name, f"no intrinsics for {stem!r} in {intrinsics}"))
                continue
            K = cams[stem]
        else:
            K = cams
        Kn = K.copy()  # MoGe's normalised intrinsics: the image is [0, 1]^2, pixel centres at (j + .5) / W
        Kn[0, 0], Kn[0, 2] = K[0, 0] / W, (K[0, 2] + 0.5) / W
        Kn[1, 1], Kn[1, 2] = K[1, 1] / H, (K[1, 2] + 0.5) / H
        valid = np.isfinite(depth)
        edge = None
        if edges:
            edge = edge_mask(torch.from_numpy(np.nan_to_num(depth, nan=0.0)), torch.from_numpy(valid)).numpy()
        write_instance(out / stem, rgb, depth, Kn, edge=edge)
        report.written.append(stem)
        if size is None:
            size = (W, H)
    if not report.written:
        first = report.skipped[0][1] if report.skipped else ""
        raise InputError(f"no usable image/depth pair in {images_dir} and {depths_dir} (e.g. {first})")
    (out / ".index.txt").write_text("\n".join(report.written) + "\n")
    spec = {"path": out.name, "width": int(size[0]), "height": int(size[1]), "split": ".index.txt",
            "depth_unit": 1.0 if metric else None, "drop_max_depth": 1000.0,
            "source": f"fin3r data moge-benchmark from {images_dir.name} + {depths_dir.name}"}
    (out / "benchmark.json").write_text(json.dumps(spec, indent=1))
    return report
