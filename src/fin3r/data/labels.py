"""The pseudo-label cache: a teacher's depth for every image, computed once, read many times.

Layout under ``labels_root`` (one entry per image key, see :mod:`fin3r.data.sa1b`)::

    <key>.depth.png   16-bit log-encoded depth (``format="png"``, default), or
    <key>.depth.npy   float16 depth (``format="npy"``)
    <key>.mask.png    8-bit mask, 255 = label defined
    <key>.json        sidecar: teacher name/version, depth_kind, resolution, encoding, image path

The sidecar is written last and every file is written atomically (temp file + ``os.replace``),
so an entry whose JSON exists is complete: a rerun skips it (resumable labelling).

16-bit log encoding (MoGe's ``write_depth`` convention, our own implementation): code 0 = no
label, 65535 = infinitely far, codes 1..65534 map ``log(depth)`` linearly between ``near`` and
``far`` (the smallest and largest labelled values, stored exactly in the sidecar and in PNG text
chunks). Decoding gives ``near * (far / near) ** ((code - 1) / 65533)``; the quantisation error
is at most half a step in log depth, i.e. a relative error <= ``expm1(log(far / near) / 131066)``
(7e-5 for a 1e4 dynamic range). float16 keeps a relative error <= 2**-11 (4.9e-4) for values in
[6.1e-5, 65504]. For ``depth_kind="affine_disparity"`` teachers the stored values are disparities.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from fin3r.data.label_channels import read_label_confidence, write_label_channels
from fin3r.data.sa1b import BadImage, ImageReader, list_images
from fin3r.data.views import crop_resize_view, make_view
from fin3r.errors import InputError
from fin3r.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_FORMAT_VERSION",
    "BadLabel",
    "encode_log_depth",
    "decode_log_depth",
    "log_depth_error_bound",
    "write_label",
    "read_label",
    "label_done",
    "label_paths",
    "LabelledImages",
]

LABEL_FORMAT_VERSION = 1
_CODE_MAX = 65533  # codes 1..65534 carry values


class BadLabel(InputError):
    """A label entry that is missing, corrupt or inconsistent with its image."""


# --- encoding ----------------------------------------------------------------------------------


def encode_log_depth(depth: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """``depth (H, W)`` -> (uint16 codes, near, far). Pixels outside ``mask`` or non-positive/NaN
    get code 0; ``+inf`` gets 65535."""
    depth = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        ok &= np.asarray(mask, bool)
    codes = np.zeros(depth.shape, np.uint16)
    inf = np.isposinf(depth) & (True if mask is None else np.asarray(mask, bool))
    codes[inf] = 65535
    if not ok.any():
        return codes, 1.0, 1.0
    near, far = float(depth[ok].min()), float(depth[ok].max())
    span = math.log(far) - math.log(near)
    if span <= 0:
        codes[ok] = 1
        return codes, near, far
    q = np.rint((np.log(depth[ok]) - math.log(near)) / span * _CODE_MAX)
    codes[ok] = (1 + np.clip(q, 0, _CODE_MAX)).astype(np.uint16)
    return codes, near, far


def decode_log_depth(codes: np.ndarray, near: float, far: float) -> tuple[np.ndarray, np.ndarray]:
    """uint16 codes -> (depth float32 with 0 where undefined and inf for 65535, defined mask)."""
    codes = np.asarray(codes)
    ok = (codes > 0) & (codes < 65535)
    depth = np.zeros(codes.shape, np.float32)
    if ok.any():
        span = math.log(far) - math.log(near) if far > near else 0.0
        depth[ok] = np.exp(math.log(near) + (codes[ok].astype(np.float64) - 1) / _CODE_MAX * span).astype(np.float32)
    depth[codes == 65535] = np.inf
    return depth, ok


def log_depth_error_bound(near: float, far: float) -> float:
    """Largest relative error of the 16-bit log encoding for values in [near, far] (plus float32
    rounding of the decoded value)."""
    return math.expm1(0.5 * math.log(far / near) / _CODE_MAX) + 2 * float(np.finfo(np.float32).eps)


# --- files -------------------------------------------------------------------------------------


def label_paths(labels_root: str | Path, key: str) -> dict[str, Path]:
    base = Path(labels_root) / key
    return {"json": base.with_name(base.name + ".json"), "png": base.with_name(base.name + ".depth.png"),
            "npy": base.with_name(base.name + ".depth.npy"), "mask": base.with_name(base.name + ".mask.png")}


def write_label(labels_root: str | Path, key: str, depth: Any, mask: Any, meta: dict[str, Any] | None = None,
                fmt: str = "png", normals: Any = None, confidence: Any = None) -> Path:
    """Store one label (depth ``(H, W)``, mask ``(H, W)``) under ``key``; returns the sidecar
    path. ``meta`` (teacher metadata, image path, ...) goes into the sidecar; ``fmt`` is
    ``"png"`` (16-bit log) or ``"npy"`` (float16). Optional channels (``normals (H, W, 3)``,
    ``confidence (H, W)``) go to :mod:`fin3r.data.label_channels` files named in the sidecar."""
    depth = torch.as_tensor(depth).detach().cpu().float().numpy()
    mask = torch.as_tensor(mask).detach().cpu().bool().numpy() & np.isfinite(depth) & (depth > 0)
    if depth.ndim != 2 or mask.shape != depth.shape:
        raise InputError(f"write_label {key!r}: depth {depth.shape} and mask {mask.shape} must be the same (H, W)")
    paths = label_paths(labels_root, key)
    sidecar = dict(meta or {})
    sidecar.update(key=key, height=int(depth.shape[0]), width=int(depth.shape[1]), format=fmt,
                   label_format_version=LABEL_FORMAT_VERSION, labelled_fraction=float(mask.mean()))
    if fmt == "png":
        codes, near, far = encode_log_depth(depth, mask)
        info = PngImagePlugin.PngInfo()
        info.add_text("near", repr(near))
        info.add_text("far", repr(far))
        atomic_write(paths["png"], lambda t: Image.fromarray(codes).save(t, format="PNG", pnginfo=info))
        sidecar.update(near=near, far=far, depth_file=paths["png"].name)
    elif fmt == "npy":
        values = np.where(mask, depth, 0).astype(np.float16)

        def save_npy(t):
            with open(t, "wb") as f:
                np.save(f, values)

        atomic_write(paths["npy"], save_npy)
        sidecar.update(depth_file=paths["npy"].name)
    else:
        raise InputError(f"label format must be 'png' or 'npy', got {fmt!r}")
    atomic_write(paths["mask"], lambda t: Image.fromarray(mask.astype(np.uint8) * 255).save(t, format="PNG"))
    sidecar["mask_file"] = paths["mask"].name
    sidecar.update(write_label_channels(paths["mask"], mask, normals=normals, confidence=confidence))
    atomic_write(paths["json"], lambda t: Path(t).write_text(json.dumps(sidecar, indent=1, default=str)))
    return paths["json"]


def label_done(labels_root: str | Path, key: str) -> bool:
    """Whether a complete label entry exists for ``key`` (its sidecar is written last)."""
    return label_paths(labels_root, key)["json"].is_file()


def read_label(labels_root: str | Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(depth ``(H, W)`` float32 with 0 where undefined, mask ``(H, W)`` bool, sidecar dict).
    Raises :class:`BadLabel` (naming the file) for missing, corrupt or inconsistent entries."""
    paths = label_paths(labels_root, key)
    try:
        meta = json.loads(paths["json"].read_text())
    except FileNotFoundError as e:
        raise BadLabel(f"{paths['json']}: missing label") from e
    except (OSError, ValueError) as e:
        raise BadLabel(f"{paths['json']}: unreadable sidecar ({e})") from e
    shape = (meta.get("height"), meta.get("width"))
    depth_path = paths["png"] if meta.get("format") == "png" else paths["npy"]
    try:
        if meta.get("format") == "png":
            with Image.open(depth_path) as im:
                codes = np.asarray(im)
            if codes.dtype != np.uint16 and codes.dtype != np.int32:
                raise BadLabel(f"{depth_path}: not a 16-bit PNG ({codes.dtype})")
            depth, ok = decode_log_depth(codes.astype(np.uint16), float(meta["near"]), float(meta["far"]))
        else:
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
            ok = np.isfinite(depth) & (depth > 0)
        with Image.open(paths["mask"]) as im:
            mask = np.asarray(im) > 127
    except BadLabel:
        raise
    except Exception as e:
        raise BadLabel(f"{depth_path}: corrupt label ({type(e).__name__}: {e})") from e
    if depth.shape != shape or mask.shape != shape:
        raise BadLabel(f"{depth_path}: label is {depth.shape[::-1]} / mask {mask.shape[::-1]}, sidecar says {shape[::-1]}")
    mask &= ok
    return np.where(mask, depth, 0).astype(np.float32), mask, meta


# --- the training data set ---------------------------------------------------------------------


def nominal_intrinsics(height: int, width: int, fov_x_deg: float = 60.0) -> torch.Tensor:
    """A stand-in ``K`` for images with unknown intrinsics (SA-1B): principal point at the
    centre, horizontal FoV ``fov_x_deg``. Samples carry ``K_known=False`` with it."""
    f = (width / 2) / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


class LabelledImages(torch.utils.data.Dataset):
    """Mono samples: images (folders / tar shards) paired with their cached teacher labels.

    Args:
        images_root: image source(s) as given to ``fin3r label --images`` (same keys).
        labels_root: the label cache.
        height, width: output resolution; image and label are cropped to the aspect, then
            resized (image bilinear/antialiased, label nearest), ``K`` alike.
        source: the ``source`` string of the samples (``"sa1b"``).
        crop: ``"center"`` or ``"random"`` (position and zoom up to ``max_zoom`` drawn from
            ``(seed, epoch, index)``; call ``set_epoch``).
        strict: raise on the first bad entry instead of skipping it.

    Images without a label are left out at construction (counted in ``missing``). An entry
    found bad while reading (corrupt image or label, sizes that disagree) is logged with its
    path, recorded in ``errors`` and replaced by the next good sample (``strict``: raised), so
    an epoch never dies and never yields a wrong sample.
    Sample: the contract view (``depth_kind`` from the sidecar) plus ``key``, ``path``,
    ``teacher_conf (H, W)`` (the label's stored confidence, 1 where the entry has none; the
    distillation loss weights pixels by it) and ``K_known`` (False: ``K`` is :func:`nominal_intrinsics` of the label image, unless the
    teacher stored normalised intrinsics).
    """

    def __init__(self, images_root: str | Path | Iterable[str | Path], labels_root: str | Path, height: int,
                 width: int, source: str = "sa1b", crop: str = "center", max_zoom: float = 1.0, seed: int = 0,
                 strict: bool = False):
        roots = [images_root] if isinstance(images_root, (str, Path)) else list(images_root)
        refs = list_images(roots)
        self.labels_root = Path(labels_root)
        self.refs = [r for r in refs if label_done(self.labels_root, r.key)]
        self.missing = [r.describe() for r in refs if not label_done(self.labels_root, r.key)]
        if self.missing:
            msg = f"{len(self.missing)} of {len(refs)} images have no label in {self.labels_root} (e.g. {self.missing[0]})"
            if strict:
                raise BadLabel(msg)
            log.warning(msg + "; they are left out")
        if not self.refs:
            raise InputError(f"no labelled images: {len(refs)} images in {roots}, labels in {self.labels_root}")
        self.height, self.width, self.source = int(height), int(width), source
        self.crop, self.max_zoom, self.seed, self.strict = crop, float(max_zoom), int(seed), strict
        self.epoch = 0
        self.errors: list[tuple[str, str]] = []
        self.reader = ImageReader()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> dict:
        """The sample of ``index`` or an exception naming the bad file."""
        ref = self.refs[index]
        depth, mask, meta = read_label(self.labels_root, ref.key)
        H, W = depth.shape
        img, full = self.reader.read_at_least(ref, (H, W))
        size = meta.get("image_size")
        if size is not None and tuple(size) != full:
            raise BadImage(f"{ref.describe()}: image is {full[1]}x{full[0]} but was labelled at "
                           f"{size[1]}x{size[0]} ({label_paths(self.labels_root, ref.key)['json']})")
        if abs(full[1] / full[0] - W / H) > 0.02 * W / H + 1.0 / H:
            raise BadLabel(f"{label_paths(self.labels_root, ref.key)['json']}: label {W}x{H} does not fit the "
                           f"aspect of {ref.describe()} ({full[1]}x{full[0]})")
        x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 255.0
        if x.shape[-2:] != (H, W):
            x = torch.nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False,
                                                antialias=H < x.shape[-2]).clamp(0, 1)
        K_norm = meta.get("intrinsics")
        if K_norm is not None:
            K = torch.tensor(K_norm, dtype=torch.float32) * torch.tensor([[W], [H], [1.0]])
            K[0, 2], K[1, 2] = K[0, 2] - 0.5, K[1, 2] - 0.5  # normalised (0.5 = image centre) -> pixel centres
        else:
            K = nominal_intrinsics(H, W)
        conf = read_label_confidence(label_paths(self.labels_root, ref.key)["mask"], meta)
        conf = torch.ones(H, W) if conf is None else torch.from_numpy(conf)  # entries without one: weight 1
        view = make_view(x[0], torch.from_numpy(depth), K, None, self.source, meta.get("depth_kind", "scale"),
                         valid=torch.from_numpy(mask), key=ref.key, path=ref.describe(), K_known=K_norm is not None,
                         teacher_conf=conf)
        g = None
        if self.crop == "random":
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % (2**63))
        return crop_resize_view(view, self.height, self.width, mode=self.crop, generator=g, max_zoom=self.max_zoom)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(min(len(self.refs), 16)):
            i = (index + attempt) % len(self.refs)
            try:
                return self.load(i)
            except InputError as e:
                if self.strict:
                    raise
                self.errors.append((self.refs[i].describe(), str(e)))
                log.warning("skipping a bad sample: %s", e)
        raise InputError(f"16 consecutive bad samples from index {index} (last: {self.errors[-1][1]})")
