"""Feeding evaluation images to a :class:`~fin3r.models.base.Reconstructor` and back.

The protocols resize (never crop) the evaluation image to the model's input and resample the
prediction back to the ground-truth resolution. The input size is the family's
(``ModelFamily.eval_side`` / ``eval_side_is_width``):

- DUSt3R / MASt3R / CUT3R: long side ``512`` (``long_side``), each side floored to a multiple of
  the patch size (16) -- CUT3R's ``crop=False`` loading;
- VGGT: width ``518``, height ``round(H * 518 / W / 14) * 14`` (its ``load_fn``).

Predictions are resized back with bilinear interpolation (MoGe's baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.models.registry import find_family

__all__ = ["model_input_size", "resize_image", "resize_map", "mono_predictor", "MonoPredictor", "predict_views_resized",
           "default_num_views"]

#: image (3, H, W) in [0, 1] -> dict of MoGe-keyed maps at (H, W)
MonoPredictor = Callable[[Tensor], dict[str, Tensor]]


def model_input_size(height: int, width: int, family: str, patch: int, long_side: int | None = None) -> tuple[int, int]:
    """``(h, w)`` the model sees for an ``height x width`` evaluation image (see module doc; a
    family fin3r does not register is taken with a long side of 512)."""
    spec = find_family(family)
    if spec is not None and spec.eval_side_is_width:
        w = max(patch, (long_side or spec.eval_side) // patch * patch)
        h = max(patch, round(height * w / width / patch) * patch)
        return h, w
    long_side = long_side or (spec.eval_side if spec is not None else 512)
    s = long_side / max(height, width)
    h = max(patch, math.floor(height * s / patch) * patch)
    w = max(patch, math.floor(width * s / patch) * patch)
    return h, w


def resize_image(img: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, h, w)``, antialiased bicubic (clamped to [0, 1]); identity if equal."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def resize_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(B, h, w)`` or ``(B, h, w, C)`` maps to ``size``."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    if x.ndim == 3:
        return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1)


def mono_predictor(
    model,
    long_side: int | None = None,
    metric: bool | None = None,
    points: bool = False,
    device: torch.device | str | None = None,
    intrinsics: bool = False,
) -> MonoPredictor:
    """Wrap a Reconstructor into ``predict(image (3, H, W)) -> {MoGe key: map (H, W[, 3])}``.

    The depth is the z of the model's own-view point map (``MonoPrediction.depth``), reported as
    ``depth_scale_invariant`` -- and as ``depth_metric`` too when ``metric`` (default: MASt3R,
    whose metric head predicts metres). ``points=True`` adds ``points_scale_invariant``.
    ``depth_model_res`` is the depth at the model's output size (CUT3R's protocol upsamples it
    bicubically itself). ``intrinsics=True`` adds the normalized ``intrinsics (3, 3)`` the model's
    multi-view path predicts for the single view (VGGT: its camera head; CUT3R: estimated from its
    self-view points; none for the pairwise families), at the cost of a second forward.
    """
    family = getattr(model, "family", "")
    patch = int(getattr(model, "patch_size", 16))
    spec = find_family(family)
    is_metric = (spec is not None and spec.metric) if metric is None else metric
    dev = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def predict(image: Tensor) -> dict[str, Tensor]:
        H, W = image.shape[-2:]
        size = model_input_size(H, W, family, patch, long_side)
        x = resize_image(image[None].to(dev, torch.float32), size)
        pred = model.predict_mono(x)
        depth = resize_map(pred.depth.float(), (H, W))[0].cpu()
        out = {"depth_scale_invariant": depth, "depth_model_res": pred.depth[0].float().cpu()}
        if is_metric:
            out["depth_metric"] = depth
        if points:
            out["points_scale_invariant"] = resize_map(pred.pts3d.float(), (H, W))[0].cpu()
        if intrinsics and (spec is None or spec.views_per_forward != 2):
            K = model.predict_views(x[:, None]).intrinsics
            if K is not None:  # pixels at the input size -> normalized (image = [0, 1]^2)
                K = K[0, 0].float().cpu().clone()
                K[0] /= size[1]
                K[1] /= size[0]
                out["intrinsics"] = K
        return out

    return predict


def predict_views_resized(model, imgs: Tensor, long_side: int | None = None, align=None):
    """Run ``model.predict_views`` on ``imgs (S, 3, H, W)`` resized to the model input; pairwise
    models (DUSt3R, MASt3R) with ``S > 2`` go through the global alignment
    (:func:`fin3r.align.align_views` with ``align``, an :class:`~fin3r.align.AlignConfig`).

    Returns ``(ViewsPrediction, (h, w))`` -- the prediction at the input size ``(h, w)``."""
    from fin3r.align import AlignConfig, align_views, is_pairwise

    H, W = imgs.shape[-2:]
    family, patch = getattr(model, "family", ""), int(getattr(model, "patch_size", 16))
    size = model_input_size(H, W, family, patch, long_side)
    x = resize_image(imgs.float(), size)[None]
    dev = next(model.parameters()).device
    if is_pairwise(model) and x.shape[1] > 2:
        return align_views(model, x.to(dev), align or AlignConfig()), size
    with torch.no_grad():
        pred = model.predict_views(x.to(dev))
    return pred, size


def default_num_views(model) -> int | None:
    """Views per forward: 2 for the pairwise DUSt3R/MASt3R (more go through the global alignment),
    None (all) for CUT3R/VGGT (``ModelFamily.views_per_forward``)."""
    spec = find_family(getattr(model, "family", ""))
    return spec.views_per_forward if spec is not None else None
