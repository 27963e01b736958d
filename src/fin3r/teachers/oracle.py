"""The oracle teacher: the synthetic world's exact depth behind an unknown per-image scale.

It is NOT a real monocular model: it reads the ground truth. It exists to test and demonstrate
the distillation machinery with a teacher whose quality is known and controllable, and it says so
wherever it appears (its ``name`` starts with ``"oracle"``, its metadata has ``is_oracle: true``,
and the label cache records both).

Ground truth reaches it in one of two ways:

- from the sample dict: ``teacher.predict(batch["img"], depth=batch["depth"], valid=batch["valid"])``
  (training on ``fin3r.data.world`` data sets);
- from world keys: ``teacher.predict(img, keys=[...])`` re-renders each view exactly
  (``fin3r.data.world.render_from_key``); world images written by
  ``fin3r.data.world.save_world_image`` carry their key in a PNG text chunk, which is how
  ``fin3r label --teacher oracle`` labels a folder of exported world images.

Degradations (all optional, applied in this order; masked so invalid pixels never leak in):
``pool=k`` (average-pool by k, bilinear back: a low-resolution teacher), ``blur=sigma`` (Gaussian,
in pixels), ``noise=sigma`` (multiplicative log-normal per pixel). Then every image is multiplied
by a random scale, log-uniform in ``scale_range`` -- so ``depth_kind`` is ``"scale"``. The random
draws of an image depend only on ``seed`` and the image's world key (when ``keys`` are given) or
its ground-truth depth, never on the batch it came in.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.data.world import render_from_key
from fin3r.errors import InputError
from fin3r.teachers.base import Teacher, TeacherOutput


def _masked_filter(depth: Tensor, mask: Tensor, op) -> tuple[Tensor, Tensor]:
    """Normalised filtering: ``op(depth * mask) / op(mask)``; defined where ``op(mask) > 0``."""
    w = mask.float()[:, None]
    num = op(depth[:, None] * w)
    den = op(w)
    ok = den > 1e-6
    return torch.where(ok, num / den.clamp_min(1e-6), torch.zeros_like(num))[:, 0], ok[:, 0]


def _gaussian_kernel(sigma: float) -> Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class OracleTeacher(Teacher):
    """Exact (optionally degraded) ground-truth depth times an unknown per-image scale.

    Args:
        noise: std of the per-pixel log-normal multiplicative noise (0 = none).
        blur: Gaussian blur sigma in pixels (0 = none).
        pool: average-pool factor then bilinear upsampling (1 = none).
        scale_range: the per-image scale is log-uniform in this range.
        seed: base seed of the per-image random draws.
    """

    depth_kind = "scale"
    needs_ground_truth = True
    version = "1"

    def __init__(self, noise: float = 0.0, blur: float = 0.0, pool: int = 1,
                 scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0):
        if noise < 0 or blur < 0 or pool < 1 or not 0 < scale_range[0] <= scale_range[1]:
            raise InputError(f"oracle: bad degradation noise={noise} blur={blur} pool={pool} scale_range={scale_range}")
        self.noise, self.blur, self.pool = float(noise), float(blur), int(pool)
        self.scale_range, self.seed = (float(scale_range[0]), float(scale_range[1])), int(seed)
        parts = [f"{k}={v:g}" for k, v in (("noise", self.noise), ("blur", self.blur), ("pool", self.pool)) if v not in (0, 1)]
        self.name = "oracle" + (f"({','.join(parts)})" if parts else "")

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(oracle={"noise": self.noise, "blur": self.blur, "pool": self.pool,
                            "scale_range": list(self.scale_range), "seed": self.seed})
        return meta

    def _ground_truth(self, img: Tensor, depth, valid, keys) -> tuple[Tensor, Tensor]:
        if depth is None and keys is not None:
            if len(keys) != img.shape[0]:
                raise InputError(f"oracle: {len(keys)} keys for {img.shape[0]} images")
            views = [render_from_key(k) for k in keys]
            depth = torch.stack([v["depth"] for v in views])
            valid = torch.stack([v["valid"] for v in views])
        if depth is None:
            raise InputError("the oracle teacher reads the synthetic world's ground truth: pass depth= and valid= "
                             "(the sample dict's) or keys= (world keys); it cannot label real images")
        depth = torch.as_tensor(depth, dtype=torch.float32, device=img.device)
        if depth.shape != (img.shape[0],) + tuple(img.shape[-2:]):
            raise InputError(f"oracle: ground truth {tuple(depth.shape)} does not match images {tuple(img.shape)}")
        ok = torch.isfinite(depth) & (depth > 0)
        if valid is not None:
            ok &= torch.as_tensor(valid, device=img.device).bool()
        return torch.where(ok, depth, torch.zeros_like(depth)), ok

    def _predict(self, img: Tensor, depth: Tensor | None = None, valid: Tensor | None = None,
                 keys: Sequence[str] | None = None, **_: Any) -> TeacherOutput:
        depth, mask = self._ground_truth(img, depth, valid, keys)
        B, H, W = depth.shape
        out, ok = depth, mask
        if self.pool > 1:
            k = self.pool
            low, low_ok = _masked_filter(out, ok, lambda x: F.avg_pool2d(x, k, ceil_mode=True))
            up, up_ok = _masked_filter(low, low_ok, lambda x: F.interpolate(x, size=(H, W), mode="bilinear",
                                                                            align_corners=False))
            out = up
            ok = ok & up_ok
        if self.blur > 0:
            g = _gaussian_kernel(self.blur).to(img.device)
            r = len(g) // 2

            def conv(x):
                x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
                return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))

            out, blur_ok = _masked_filter(out, ok, conv)
            ok = ok & blur_ok
        scales = torch.empty(B)
        noise = torch.zeros(B, H, W)
        lo, hi = math.log(self.scale_range[0]), math.log(self.scale_range[1])
        for b in range(B):
            ident = keys[b].encode() if keys is not None else depth[b].detach().cpu().numpy().tobytes()
            crc = zlib.crc32(ident)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + crc) % (2**63))
            scales[b] = math.exp(lo + (hi - lo) * float(torch.rand((), generator=g)))
            if self.noise > 0:
                noise[b] = torch.randn(H, W, generator=g) * self.noise
        out = out * torch.exp(noise.to(img.device)) * scales.to(img.device)[:, None, None]
        out = torch.where(ok, out, torch.zeros_like(out))
        return TeacherOutput(out, ok, self.depth_kind, {"scale": scales})
