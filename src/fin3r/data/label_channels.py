"""Optional channels of a label-cache entry: a teacher's surface normals and the label's confidence.

Next to ``<key>.depth.png`` / ``<key>.mask.png`` (see :mod:`fin3r.data.labels`) an entry may hold

``<key>.normal.png``   16-bit 3-channel PNG: unit normals ``n`` (MoGe-2 ``-normal`` checkpoints),
                       code ``round((n + 1) / 2 * 65535)`` per component -> error <= 1/65535 per
                       component (half a step); all codes 0 outside the label's mask.
``<key>.conf.png``     16-bit PNG: per-pixel confidence in [0, 1] (the ensemble teacher's agreement),
                       code ``round(c * 65535)`` -> error <= 0.5/65535.

Both are written before the sidecar (which names them: ``normal_file``, ``conf_file``), so an
entry stays complete-or-absent. Entries without them are ordinary entries: the readers return
``None`` and callers go on without the channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fin3r.errors import InputError
from fin3r.io import atomic_write

__all__ = ["NORMAL_CODE_ERROR", "CONF_CODE_ERROR", "channel_path", "write_label_channels",
           "read_label_normals", "read_label_confidence"]

NORMAL_CODE_ERROR = 1.0 / 65535  # largest per-component error of the stored normals
CONF_CODE_ERROR = 0.5 / 65535  # largest error of the stored confidence


def channel_path(mask_path: Path, channel: str) -> Path:
    """``<key>.<channel>.png`` beside the entry's mask file ``<key>.mask.png``."""
    return mask_path.with_name(mask_path.name[: -len(".mask.png")] + f".{channel}.png")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def _png_bytes(codes: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", codes)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def write_label_channels(mask_path: Path, mask: np.ndarray, normals: Any = None, confidence: Any = None,
                         hashes: dict[str, str] | None = None) -> dict[str, str]:
    """Write the given optional channels of one entry (``normals (H, W, 3)``, ``confidence
    (H, W)``) beside ``mask_path``; returns the sidecar fields naming the files written.
    ``hashes``: filled with ``{"normal"|"conf": SHA-256 of the bytes written}`` (the sidecar
    carries them, so a reader can tell a mixed entry)."""
    import hashlib

    hashes = {} if hashes is None else hashes
    fields: dict[str, str] = {}
    h, w = mask.shape
    if normals is not None:
        n = _as_numpy(normals)
        if n.shape != (h, w, 3):
            raise InputError(f"label normals must be (H, W, 3) = ({h}, {w}, 3), got {n.shape}")
        n = np.where(mask[..., None] & np.isfinite(n), np.clip(n, -1, 1), -1.0)
        codes = np.rint((n + 1) / 2 * 65535).astype(np.uint16)
        path = channel_path(mask_path, "normal")
        data = _png_bytes(np.ascontiguousarray(codes[..., ::-1]))  # OpenCV writes BGR
        atomic_write(path, lambda t: Path(t).write_bytes(data))
        fields["normal_file"] = path.name
        hashes["normal"] = hashlib.sha256(data).hexdigest()
    if confidence is not None:
        c = _as_numpy(confidence)
        if c.shape != (h, w):
            raise InputError(f"label confidence must be (H, W) = ({h}, {w}), got {c.shape}")
        c = np.where(mask & np.isfinite(c), np.clip(c, 0, 1), 0.0)
        path = channel_path(mask_path, "conf")
        data = _png_bytes(np.rint(c * 65535).astype(np.uint16))
        atomic_write(path, lambda t: Path(t).write_bytes(data))
        fields["conf_file"] = path.name
        hashes["conf"] = hashlib.sha256(data).hexdigest()
    return fields


def _read_png16(path: Path, channels: int, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    try:
        codes = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    except OSError as e:
        raise InputError(f"{path}: unreadable label channel ({e})") from None
    want = shape + ((channels,) if channels > 1 else ())
    if codes is None or codes.dtype != np.uint16 or codes.shape != want:
        got = "undecodable" if codes is None else f"{codes.dtype} {codes.shape}"
        raise InputError(f"{path}: expected a 16-bit PNG of shape {want}, got {got}")
    return codes


def read_label_normals(mask_path: Path, meta: dict[str, Any]) -> np.ndarray | None:
    """``(H, W, 3)`` float32 unit normals (0 outside the mask) of an entry, or ``None`` when the
    entry has none (its sidecar names no ``normal_file``)."""
    if not meta.get("normal_file"):
        return None
    shape = (int(meta["height"]), int(meta["width"]))
    codes = _read_png16(channel_path(mask_path, "normal"), 3, shape)[..., ::-1]
    n = codes.astype(np.float32) / 65535 * 2 - 1
    n[(codes == 0).all(-1)] = 0.0
    return n


def read_label_confidence(mask_path: Path, meta: dict[str, Any]) -> np.ndarray | None:
    """``(H, W)`` float32 confidence in [0, 1] of an entry, or ``None`` when it has none."""
    if not meta.get("conf_file"):
        return None
    shape = (int(meta["height"]), int(meta["width"]))
    return _read_png16(channel_path(mask_path, "conf"), 1, shape).astype(np.float32) / 65535
