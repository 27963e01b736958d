"""Binary PLY point clouds (the ``<stem>.ply`` / ``scene.ply`` of ``fin3r infer``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


__all__ = ["write_ply", "read_ply"]
