"""The sample contract and the crops/resizes that keep images, depth and intrinsics consistent.

A *view* (mono sample) is a dict:

    img        (3, H, W) float32 in [0, 1]
    depth      (H, W) float32, planar z; 0 = invalid
    valid      (H, W) bool
    K          (3, 3) float32 intrinsics in pixels (pixel (row i, col j) centre at u=j, v=i)
    cam2world  (4, 4) float32 OpenCV camera-to-world (identity when unknown)
    source     str ("world", "sa1b", "hypersim", "tartanair", ...)
    depth_kind "metric" | "scale" | "affine" | "affine_disparity": what ``depth`` is known up
               to; for "affine_disparity" (relative Depth Anything / DPT teachers) the ``depth``
               field holds the teacher's disparity (see fin3r.teachers.base)

A multi-view (replay) sample has the same keys with a leading ``S`` axis (``img (S, 3, H, W)``);
the default collate batches both to ``(B, ...)`` / ``(B, S, ...)``. Extra keys (``normals``,
``key``, ``path``, ...) are allowed.

All geometric operations here work on any number of leading axes and apply the same pixel
mapping to every field: images are resampled bilinearly (antialiased when shrinking), depth and
masks by *nearest* pixel centre (``nearest-exact``: no mixing of depths across edges), and ``K``
through :func:`fin3r.geometry.scale_intrinsics` / :func:`fin3r.geometry.crop_intrinsics`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.errors import InputError
from fin3r.geometry import crop_intrinsics, scale_intrinsics

__all__ = [
    "DEPTH_KINDS",
    "make_view",
    "check_view",
    "stack_views",
    "resize_view",
    "crop_view",
    "crop_resize_view",
    "crop_box_for",
]

#: what a depth label is known up to: metres, one scale per image, scale and shift, or inverse
#: depth up to scale and shift (the one list; teachers, samples and losses use it)
DEPTH_KINDS = ("metric", "scale", "affine", "affine_disparity")
_PIXEL_KEYS = ("depth", "valid", "normals", "mask", "teacher_conf")  # per-pixel fields resampled by nearest


def make_view(
    img: Any,
    depth: Any,
    K: Any,
    cam2world: Any = None,
    source: str = "unknown",
    depth_kind: str = "metric",
    valid: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a contract view from arrays or tensors.

    Args:
        img: ``(3, H, W)`` or ``(H, W, 3)``; float in [0, 1] or uint8 (divided by 255).
        depth: ``(H, W)``; non-finite or <= 0 values become invalid (0).
        K: ``(3, 3)`` pixels. cam2world: ``(4, 4)`` or None (identity).
        valid: optional extra mask, and-ed with ``depth > 0``.
        extra: more keys stored as given.
    """
    img = img if isinstance(img, Tensor) else torch.tensor(np.asarray(img))
    if img.ndim != 3:
        raise InputError(f"img must be (3, H, W) or (H, W, 3), got {tuple(img.shape)}")
    if img.shape[0] != 3 and img.shape[-1] == 3:
        img = img.permute(2, 0, 1)
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    depth = torch.as_tensor(depth).float()
    if depth.shape != img.shape[1:]:
        raise InputError(f"depth {tuple(depth.shape)} does not match image {tuple(img.shape[1:])}")
    ok = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= torch.as_tensor(valid).bool()
    if depth_kind not in DEPTH_KINDS:
        raise InputError(f"depth_kind must be one of {DEPTH_KINDS}, got {depth_kind!r}")
    view = {
        "img": img.contiguous(),
        "depth": torch.where(ok, depth, torch.zeros_like(depth)),
        "valid": ok,
        "K": torch.as_tensor(K).float().reshape(3, 3),
        "cam2world": torch.eye(4) if cam2world is None else torch.as_tensor(cam2world).float().reshape(4, 4),
        "source": source,
        "depth_kind": depth_kind,
    }
    view.update(extra)
    return view


def check_view(view: dict, num_views: int | None = None) -> None:
    """Raise :class:`InputError` unless ``view`` fits the contract (``num_views`` = S for a
    multi-view sample, None for a mono view)."""
    for key in ("img", "depth", "valid", "K", "cam2world", "source", "depth_kind"):
        if key not in view:
            raise InputError(f"sample lacks key {key!r}")
    lead = () if num_views is None else (num_views,)
    img = view["img"]
    if img.ndim != len(lead) + 3 or tuple(img.shape[: len(lead) + 1]) != lead + (3,):
        raise InputError(f"img must be {lead + (3, 'H', 'W')}, got {tuple(img.shape)}")
    hw = tuple(img.shape[-2:])
    if tuple(view["depth"].shape) != lead + hw or tuple(view["valid"].shape) != lead + hw:
        raise InputError(f"depth/valid must be {lead + hw}, got {tuple(view['depth'].shape)}")
    if view["valid"].dtype != torch.bool:
        raise InputError("valid must be bool")
    if tuple(view["K"].shape) != lead + (3, 3) or tuple(view["cam2world"].shape) != lead + (4, 4):
        raise InputError("K must be (..., 3, 3) and cam2world (..., 4, 4)")
    if view["depth_kind"] not in DEPTH_KINDS:
        raise InputError(f"depth_kind must be one of {DEPTH_KINDS}, got {view['depth_kind']!r}")
    if bool((view["depth"][~view["valid"]] != 0).any()):
        raise InputError("depth must be 0 where valid is False")


def stack_views(views: list[dict]) -> dict[str, Any]:
    """Mono views of one scene -> one multi-view sample (tensors stacked on a new axis 0;
    strings/ints must agree across views and are kept once, other values become lists)."""
    if not views:
        raise InputError("stack_views needs at least one view")
    out: dict[str, Any] = {}
    for key in views[0]:
        vals = [v[key] for v in views]
        if isinstance(vals[0], Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (str, int, float)) and all(v == vals[0] for v in vals):
            out[key] = vals[0]
        else:
            out[key] = vals
    return out


def _resample(x: Tensor, height: int, width: int, nearest: bool) -> Tensor:
    """Resample the last two axes of ``x`` (any leading axes; image channels included)."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    dtype = flat.dtype
    if nearest:
        out = F.interpolate(flat.float(), size=(height, width), mode="nearest-exact")
        return out.to(dtype).reshape(*lead, height, width)
    shrink = height < x.shape[-2] or width < x.shape[-1]
    out = F.interpolate(flat.float(), size=(height, width), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out.reshape(*lead, height, width)


def resize_view(view: dict, height: int, width: int) -> dict:
    """Resize every pixel field of a (mono or multi-view) sample to ``height x width``.

    ``img`` bilinear (antialiased when shrinking, clamped to [0, 1]); ``depth``/``valid`` (and
    ``normals``, ``mask`` if present) nearest; ``K`` scaled by (W'/W, H'/H) with the pixel-centre
    convention. Returns a new dict; the input is not modified.
    """
    out = dict(view)
    H, W = view["img"].shape[-2:]
    if (H, W) == (height, width):
        return out
    out["img"] = _resample(view["img"], height, width, nearest=False).clamp(0, 1)
    for key in _PIXEL_KEYS:
        if key in view and isinstance(view[key], Tensor):
            x = view[key]
            if key == "normals":  # (..., H, W, 3): channels last
                out[key] = _resample(x.movedim(-1, -3), height, width, nearest=True).movedim(-3, -1)
            else:
                out[key] = _resample(x, height, width, nearest=True)
    if "depth" in out and "valid" in out:
        out["valid"] = out["valid"] & (out["depth"] > 0)
    out["K"] = scale_intrinsics(view["K"], width / W, height / H)
    return out


def crop_view(view: dict, x0: int, y0: int, height: int, width: int) -> dict:
    """Crop rows ``y0:y0+height`` and columns ``x0:x0+width`` of every pixel field; ``K`` shifted
    by ``crop_intrinsics``. The box must lie inside the image."""
    H, W = view["img"].shape[-2:]
    if x0 < 0 or y0 < 0 or x0 + width > W or y0 + height > H:
        raise InputError(f"crop box x0={x0} y0={y0} {width}x{height} leaves the {W}x{H} image")
    out = dict(view)
    out["img"] = view["img"][..., y0:y0 + height, x0:x0 + width]
    for key in _PIXEL_KEYS:
        if key in view and isinstance(view[key], Tensor):
            if key == "normals":
                out[key] = view[key][..., y0:y0 + height, x0:x0 + width, :]
            else:
                out[key] = view[key][..., y0:y0 + height, x0:x0 + width]
    out["K"] = crop_intrinsics(view["K"], x0, y0)
    return out


def crop_box_for(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    mode: str = "center",
    generator: torch.Generator | None = None,
    max_zoom: float = 1.0,
) -> tuple[int, int, int, int, float]:
    """The crop (x0, y0, w, h) of an ``in_hw`` image that, resized by ``scale``, gives exactly
    ``out_hw`` with the input's aspect preserved (cover, then crop).

    ``mode="center"`` centres the crop; ``"random"`` draws its position (and, with
    ``max_zoom > 1``, a zoom in [1, max_zoom]) from ``generator``. Returns (x0, y0, w, h, scale).
    """
    H, W = in_hw
    h_out, w_out = out_hw
    zoom = 1.0
    if mode == "random" and max_zoom > 1:
        zoom = 1.0 + (max_zoom - 1.0) * float(torch.rand((), generator=generator))
    elif mode not in ("center", "random"):
        raise InputError(f"crop mode must be 'center' or 'random', got {mode!r}")
    scale = max(h_out / H, w_out / W) * zoom  # input pixels -> output pixels
    w_in = min(W, max(1, int(math.floor(w_out / scale + 1e-6))))
    h_in = min(H, max(1, int(math.floor(h_out / scale + 1e-6))))
    if mode == "center":
        x0, y0 = (W - w_in) // 2, (H - h_in) // 2
    else:
        x0 = int(torch.randint(0, W - w_in + 1, (), generator=generator))
        y0 = int(torch.randint(0, H - h_in + 1, (), generator=generator))
    return x0, y0, w_in, h_in, scale


def crop_resize_view(
    view: dict,
    height: int,
    width: int,
    mode: str = "center",
    generator: torch.Generator | None = None,
    max_zoom: float = 1.0,
) -> dict:
    """Crop (to the target aspect) then resize a sample to exactly ``height x width``; images,
    depth, masks and ``K`` stay consistent (a 3D point projects to the same content before and
    after). Multi-view samples get the same box for every view."""
    H, W = view["img"].shape[-2:]
    x0, y0, w_in, h_in, _ = crop_box_for((H, W), (height, width), mode, generator, max_zoom)
    return resize_view(crop_view(view, x0, y0, h_in, w_in), height, width)
