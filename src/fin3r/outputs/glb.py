"""glTF 2.0 binary (``.glb``) of a scene: the coloured point cloud (a ``POINTS`` primitive) and each
camera drawn as a frustum (a ``LINES`` primitive), written here from the glTF 2.0 specification.

Frame: glTF is right-handed with +y up and cameras looking down -z, so the OpenCV world of a
:class:`~fin3r.outputs.scene.Scene` (view 0's camera: x right, y down, z forward) is written as
``(x, -y, -z)``: opened in a glTF viewer, the scene is seen as from the first camera, upright.
Units are the model's (glTF calls them metres). Colours are the image's sRGB colours converted to
linear RGB (``COLOR_0`` is linear in glTF), as float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

#: OpenCV camera/world axes -> glTF axes
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])
_ARRAY_BUFFER = 34962
_FLOAT = 5126
_POINTS, _LINES = 0, 1
#: frustum edges between its 5 corners (centre, then the image corners clockwise from top-left)
FRUSTUM_EDGES = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))
CAMERA_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB ``(..., 3)`` -> float32 linear RGB in ``[0, 1]`` (the sRGB transfer function)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def glb_bytes(points: np.ndarray, colors: np.ndarray, frusta: list[tuple[str, np.ndarray, tuple[int, int, int]]],
              extras: dict | None = None) -> bytes:
    """A ``.glb`` of ``points (N, 3)`` (OpenCV world) coloured by ``colors (N, 3)`` uint8 sRGB, and
    ``frusta``: ``(name, corners (5, 3) OpenCV world, sRGB colour)`` per camera (see
    :func:`fin3r.outputs.scene.frustum_corners`)."""
    blobs: list[bytes] = []
    gltf: dict = {"asset": {"version": "2.0", "generator": "fin3r"}, "scene": 0, "scenes": [{"nodes": []}],
                  "nodes": [], "meshes": [], "accessors": [], "bufferViews": [], "buffers": []}
    offset = 0

    def accessor(data: np.ndarray, with_bounds: bool) -> int:
        nonlocal offset
        data = np.ascontiguousarray(data, dtype="<f4").reshape(-1, 3)
        raw = data.tobytes()
        gltf["bufferViews"].append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw),
                                    "target": _ARRAY_BUFFER})
        blobs.append(raw)
        offset += len(raw)  # always a multiple of 4 (float32)
        acc = {"bufferView": len(gltf["bufferViews"]) - 1, "componentType": _FLOAT, "count": len(data), "type": "VEC3"}
        if with_bounds:
            acc["min"], acc["max"] = data.min(0).tolist(), data.max(0).tolist()
        gltf["accessors"].append(acc)
        return len(gltf["accessors"]) - 1

    def mesh(name: str, positions: np.ndarray, linear_colors: np.ndarray, mode: int) -> None:
        prim = {"attributes": {"POSITION": accessor(positions @ OPENCV_TO_GLTF, True),
                               "COLOR_0": accessor(linear_colors, False)}, "mode": mode}
        gltf["meshes"].append({"name": name, "primitives": [prim]})
        gltf["nodes"].append({"name": name, "mesh": len(gltf["meshes"]) - 1})
        gltf["scenes"][0]["nodes"].append(len(gltf["nodes"]) - 1)

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    keep = np.isfinite(points).all(axis=1) & (np.abs(points) < 3e38).all(axis=1)  # float32-representable
    if keep.any():
        mesh("points", points[keep], srgb_to_linear(np.asarray(colors).reshape(-1, 3)[keep]), _POINTS)
    for name, corners, color in frusta:
        segments = np.asarray(corners, dtype=np.float64)[np.array(FRUSTUM_EDGES).reshape(-1)]
        mesh(name, segments, np.repeat(srgb_to_linear(np.array([color]))[None, 0], len(segments), axis=0), _LINES)
    gltf["buffers"].append({"byteLength": offset})
    gltf["extras"] = {"frame": "glTF (x right, y up, z back) = OpenCV (x, -y, -z) of the first view's camera",
                      **(extras or {})}
    if offset == 0:  # glTF arrays, where present, hold at least one element
        for key in ("buffers", "bufferViews", "accessors", "meshes", "nodes"):
            gltf.pop(key)
        gltf["scenes"] = [{}]
    js = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode()
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if binary:
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks


def write_scene_glb(path: str | Path, scene, frustum_fraction: float = 0.08) -> Path:
    """Write a :class:`~fin3r.outputs.scene.Scene` as ``.glb`` (atomically): its points and a frustum
    per known camera, named ``camera <i>: <image>``."""
    from fin3r.io import atomic_write
    from fin3r.outputs.scene import drawable_frusta, frustum_depth

    depth = frustum_depth(scene, frustum_fraction)
    frusta = [(f"camera {i}: {cam.name}", corners, CAMERA_COLORS[i % len(CAMERA_COLORS)])
              for i, cam, corners in drawable_frusta(scene, depth)]
    data = glb_bytes(scene.points, scene.colors, frusta, {"confidence_cut": scene.conf_cut})
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


__all__ = ["OPENCV_TO_GLTF", "srgb_to_linear", "glb_bytes", "write_scene_glb"]
