"""The pseudo-label cache: a teacher's depth for every image, computed once, read many times.

Layout under ``labels_root`` (one entry per image key, see :mod:`fin3r.data.sa1b`)::

    <key>.depth.png   16-bit log-encoded depth (``format="png"``, default), or
    <key>.depth.npy   float16 depth (``format="npy"``)
    <key>.mask.png    8-bit mask, 255 = label defined
    <key>.json        sidecar: teacher name/version, depth_kind, resolution, encoding, image path

The sidecar is written last and every file is written atomically (temp file + ``os.replace``),
so an entry whose JSON exists is complete: a rerun skips it (resumable labelling). The sidecar
carries the SHA-256 of the depth and mask files it was written with, and :func:`read_label`
verifies both: a reader never sees a mixed entry (two writers racing on one key, a file replaced
by hand) -- it gets :class:`BadLabel`. Keys are normalised relative paths
(:func:`fin3r.data.sa1b.normalise_key`) and every file is checked to stay under ``labels_root``
before it is written. Sidecars are validated field by field on read (any other shape is a
:class:`BadLabel` naming the file and the field).

16-bit log encoding (MoGe's ``write_depth`` convention, our own implementation): code 0 = no
label, 65535 = infinitely far, codes 1..65534 map ``log(depth)`` linearly between ``near`` and
``far`` (the smallest and largest labelled values, stored exactly in the sidecar and in PNG text
chunks). Decoding gives ``near * (far / near) ** ((code - 1) / 65533)``; the quantisation error
is at most half a step in log depth, i.e. a relative error <= ``expm1(log(far / near) / 131066)``
(7e-5 for a 1e4 dynamic range). float16 keeps a relative error <= 2**-11 (4.9e-4) for values in
[6.1e-5, 65504]. For ``depth_kind="affine_disparity"`` teachers the stored values are disparities.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from fin3r.data.label_channels import channel_path, read_label_confidence, write_label_channels
from fin3r.data.sa1b import BadImage, ImageReader, normalise_key, scan_images
from fin3r.data.views import crop_resize_view, make_view
from fin3r.errors import InputError
from fin3r.io import atomic_write, inside, json_text

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

#: 2: the sidecar holds ``sha256`` of the depth and mask files (version-1 entries still read)
LABEL_FORMAT_VERSION = 2
#: the largest label side accepted from a sidecar (a guard against absurd allocations)
MAX_LABEL_SIDE = 1 << 15
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
    """The files of the entry ``key`` (normalised; :class:`BadLabel` for a key that is absolute
    or contains ``..``): ``json``, ``png``, ``npy``, ``mask``."""
    try:
        key = normalise_key(key)
    except InputError as e:
        raise BadLabel(f"label key: {e}") from None
    base = Path(labels_root) / key
    return {"json": base.with_name(base.name + ".json"), "png": base.with_name(base.name + ".depth.png"),
            "npy": base.with_name(base.name + ".depth.npy"), "mask": base.with_name(base.name + ".mask.png")}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda t: Path(t).write_bytes(data))


def write_label(labels_root: str | Path, key: str, depth: Any, mask: Any, meta: dict[str, Any] | None = None,
                fmt: str = "png", normals: Any = None, confidence: Any = None) -> Path:
    """Store one label (depth ``(H, W)``, mask ``(H, W)``) under ``key``; returns the sidecar
    path. ``meta`` (teacher metadata, image path, ...) goes into the sidecar; ``fmt`` is
    ``"png"`` (16-bit log) or ``"npy"`` (float16). Optional channels (``normals (H, W, 3)``,
    ``confidence (H, W)``) go to :mod:`fin3r.data.label_channels` files named in the sidecar.
    Depth, mask and channels are written first, the sidecar (with their SHA-256) last, each
    atomically; a path that would leave ``labels_root`` is refused (:class:`InputError`) before
    anything is written."""
    depth = torch.as_tensor(depth).detach().cpu().float().numpy()
    mask = torch.as_tensor(mask).detach().cpu().bool().numpy() & np.isfinite(depth) & (depth > 0)
    if depth.ndim != 2 or mask.shape != depth.shape:
        raise InputError(f"write_label {key!r}: depth {depth.shape} and mask {mask.shape} must be the same (H, W)")
    if fmt not in ("png", "npy"):
        raise InputError(f"label format must be 'png' or 'npy', got {fmt!r}")
    paths = label_paths(labels_root, key)
    for path in paths.values():
        if not inside(labels_root, path):
            raise InputError(f"label {key!r}: {path} would be written outside {labels_root}")
    sidecar = dict(meta or {})
    sidecar.update(key=normalise_key(key), height=int(depth.shape[0]), width=int(depth.shape[1]), format=fmt,
                   label_format_version=LABEL_FORMAT_VERSION, labelled_fraction=float(mask.mean()))
    buf = io.BytesIO()
    if fmt == "png":
        codes, near, far = encode_log_depth(depth, mask)
        info = PngImagePlugin.PngInfo()
        info.add_text("near", repr(near))
        info.add_text("far", repr(far))
        Image.fromarray(codes).save(buf, format="PNG", pnginfo=info)
        depth_path = paths["png"]
        sidecar.update(near=near, far=far)
    else:
        np.save(buf, np.where(mask, depth, 0).astype(np.float16))
        depth_path = paths["npy"]
    depth_bytes = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    mask_bytes = buf.getvalue()
    _write_bytes(depth_path, depth_bytes)
    _write_bytes(paths["mask"], mask_bytes)
    hashes = {"depth": _sha256(depth_bytes), "mask": _sha256(mask_bytes)}
    sidecar.update(write_label_channels(paths["mask"], mask, normals=normals, confidence=confidence, hashes=hashes))
    sidecar.update(depth_file=depth_path.name, mask_file=paths["mask"].name, sha256=hashes)
    _write_bytes(paths["json"], json_text(sidecar, default=str).encode())
    return paths["json"]


def label_done(labels_root: str | Path, key: str) -> bool:
    """Whether a complete label entry exists for ``key`` (its sidecar is written last)."""
    return label_paths(labels_root, key)["json"].is_file()


def _positive_int(meta: dict, name: str, where: Path, upper: int = MAX_LABEL_SIDE) -> int:
    v = meta.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= upper:
        raise BadLabel(f"{where}: sidecar field {name!r} must be an integer in [1, {upper}], got {v!r}")
    return v


def _finite_positive(meta: dict, name: str, where: Path) -> float:
    v = meta.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise BadLabel(f"{where}: sidecar field {name!r} must be a finite number > 0, got {v!r}")
    return float(v)


def check_sidecar(meta: Any, where: Path) -> dict[str, Any]:
    """``meta`` (a parsed sidecar) checked field by field; :class:`BadLabel` naming ``where`` and
    the field for anything else: not an object, ``format`` not png/npy, ``height``/``width`` not
    integers in [1, 32768], ``near``/``far`` not finite positive with ``near <= far`` (png),
    ``image_size`` not two positive integers, ``intrinsics`` not a 3x3 of finite numbers,
    ``depth_kind`` not a string, ``sha256`` (version >= 2) not two hex digests."""
    if not isinstance(meta, dict):
        raise BadLabel(f"{where}: the sidecar must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") not in ("png", "npy"):
        raise BadLabel(f"{where}: sidecar field 'format' must be 'png' or 'npy', got {meta.get('format')!r}")
    _positive_int(meta, "height", where)
    _positive_int(meta, "width", where)
    if meta["format"] == "png":
        near, far = _finite_positive(meta, "near", where), _finite_positive(meta, "far", where)
        if near > far:
            raise BadLabel(f"{where}: sidecar near {near!r} > far {far!r}")
    size = meta.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise BadLabel(f"{where}: sidecar field 'image_size' must be [height, width] (positive integers), got {size!r}")
    K = meta.get("intrinsics")
    if K is not None and not (isinstance(K, list) and len(K) == 3 and all(
            isinstance(row, list) and len(row) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
            for row in K)):
        raise BadLabel(f"{where}: sidecar field 'intrinsics' must be a 3x3 list of finite numbers, got {K!r:.80}")
    if not isinstance(meta.get("depth_kind", "scale"), str):
        raise BadLabel(f"{where}: sidecar field 'depth_kind' must be a string, got {meta.get('depth_kind')!r}")
    version = meta.get("label_format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadLabel(f"{where}: sidecar field 'label_format_version' must be an integer, got {version!r}")
    if version >= 2:
        sha = meta.get("sha256")
        if not (isinstance(sha, dict) and all(isinstance(sha.get(k), str) and len(sha[k]) == 64 for k in ("depth", "mask"))):
            raise BadLabel(f"{where}: sidecar field 'sha256' must hold the 'depth' and 'mask' SHA-256, got {sha!r:.80}")
    return meta


def _read_verified(path: Path, meta: dict, which: str, sidecar: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadLabel(f"{path}: missing ({which} of {sidecar})") from None
    except OSError as e:
        raise BadLabel(f"{path}: unreadable ({e})") from None
    if meta.get("label_format_version", 1) >= 2 and _sha256(data) != meta["sha256"][which]:
        raise BadLabel(f"{path}: content does not match the SHA-256 in {sidecar} (a corrupt, mixed or modified entry)")
    return data


def read_label(labels_root: str | Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(depth ``(H, W)`` float32 with 0 where undefined, mask ``(H, W)`` bool, sidecar dict).
    Raises :class:`BadLabel` (naming the file) for missing, corrupt, mixed or inconsistent
    entries and sidecars of any other shape (:func:`check_sidecar`)."""
    paths = label_paths(labels_root, key)
    try:
        meta = json.loads(paths["json"].read_text())
    except FileNotFoundError as e:
        raise BadLabel(f"{paths['json']}: missing label") from e
    except (OSError, ValueError) as e:
        raise BadLabel(f"{paths['json']}: unreadable sidecar ({e})") from e
    check_sidecar(meta, paths["json"])
    shape = (meta["height"], meta["width"])
    depth_path = paths["png"] if meta["format"] == "png" else paths["npy"]
    depth_bytes = _read_verified(depth_path, meta, "depth", paths["json"])
    mask_bytes = _read_verified(paths["mask"], meta, "mask", paths["json"])
    for channel, field in (("normal", "normal_file"), ("conf", "conf_file")):  # optional channels
        if meta.get(field) and channel in (meta.get("sha256") or {}):
            _read_verified(channel_path(paths["mask"], channel), meta, channel, paths["json"])
    try:
        if meta["format"] == "png":
            with Image.open(io.BytesIO(depth_bytes)) as im:
                codes = np.asarray(im)
                text = dict(getattr(im, "text", {}) or {})
            if codes.dtype != np.uint16 and codes.dtype != np.int32:
                raise BadLabel(f"{depth_path}: not a 16-bit PNG ({codes.dtype})")
            near, far = float(meta["near"]), float(meta["far"])
            for name, value in (("near", near), ("far", far)):
                if name in text and not math.isclose(float(text[name]), value, rel_tol=1e-9):
                    raise BadLabel(f"{depth_path}: its {name} {text[name]} contradicts the sidecar's {value!r} "
                                   f"({paths['json']})")
            if near == far and codes.size and int(codes[(codes > 0) & (codes < 65535)].max(initial=1)) > 1:
                raise BadLabel(f"{paths['json']}: near == far ({near!r}) but the depth PNG holds a range of codes")
            depth, ok = decode_log_depth(codes.astype(np.uint16), near, far)
        else:
            depth = np.load(io.BytesIO(depth_bytes), allow_pickle=False)
            if depth.dtype.kind != "f":
                raise BadLabel(f"{depth_path}: depth array of dtype {depth.dtype}, expected float")
            depth = depth.astype(np.float32)
            ok = np.isfinite(depth) & (depth > 0)
        with Image.open(io.BytesIO(mask_bytes)) as im:
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
        refs, left_out = scan_images(roots)
        if left_out:
            if strict:
                raise InputError(f"{left_out[0]['image']}: {left_out[0]['error']} (strict)")
            for entry in left_out:
                log.warning("image left out: %s: %s", entry["image"], entry["error"])
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
        """The sample of ``index``, or -- when that entry is bad -- of the next good index; the
        entries passed over travel with the sample as ``skipped`` (``[(path, reason), ...]``) so
        the training loop counts them even when the sample was loaded in a worker process
        (:class:`fin3r.data.skips.SkipLedger`)."""
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(len(self.refs), 16)):
            i = (index + attempt) % len(self.refs)
            try:
                sample = self.load(i)
            except Exception as e:  # any per-sample failure: a bad file must never end the run
                if self.strict or isinstance(e, (MemoryError, RecursionError)):
                    raise
                reason = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
                skipped.append((self.refs[i].describe(), reason))
                self.errors.append(skipped[-1])
                log.warning("skipping a bad sample: %s", reason)
                continue
            sample["skipped"] = skipped
            return sample
        raise InputError(f"16 consecutive bad samples from index {index} (last: {self.errors[-1][1]})")
