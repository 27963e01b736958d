"""DUSt3R (``AsymmetricCroCo3DStereo``): two views in, a point map of each in view 1's frame out.

Our own implementation with the official state_dict keys (checked against the official key list in
``tests/test_models_dust3r.py``).
Build any size with the official constructor keyword names, e.g. the 512 DPT checkpoint::

    Dust3r(head_type="dpt", img_size=(512, 512), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
           dec_embed_dim=768, dec_depth=12, dec_num_heads=12)

Outputs (``forward(img1, img2) -> (res1, res2)``, images ``(B, 3, H, W)`` in ``[0, 1]``):
``res1 = {'pts3d' (B, H, W, 3), 'conf' (B, H, W)}`` in view 1's frame,
``res2 = {'pts3d_in_other_view' (B, H, W, 3), 'conf' (B, H, W)}`` also in view 1's frame.
The point scale is arbitrary (training normalised it by the mean distance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fin3r.errors import InputError
from fin3r.models.base import MonoPrediction, ViewsPrediction
from fin3r.models.croco.encoder import CroCoStereo
from fin3r.models.layers.activations import reg_dense_conf, reg_dense_depth
from fin3r.models.heads.dpt_croco import OFFICIAL_FEATURE_DIM, OFFICIAL_LAYER_DIMS, DPTCroCo, dpt_hooks
from fin3r.models.heads.linear import LinearPatchHead

inf = math.inf


def _mode(mode: Sequence | None) -> tuple | None:
    """Official activation modes as tuples (JSON gives lists)."""
    return None if mode is None else (str(mode[0]), float(mode[1]), float(mode[2]))


class DPTPts3dHead(nn.Module):
    """The DUSt3R DPT head (``PixelwiseTaskWithDPT``; keys ``dpt.*``): ``decout -> (B, C, H, W)`` raw."""

    def __init__(self, num_channels: int, dec_depth: int, enc_dim: int, dec_dim: int, patch_size: int,
                 layer_dims: Sequence[int], feature_dim: int, last_dim: int | None):
        super().__init__()
        self.dpt = DPTCroCo(num_channels, dpt_hooks(dec_depth), [enc_dim, dec_dim, dec_dim, dec_dim], patch_size,
                            layer_dims=layer_dims, feature_dim=feature_dim, last_dim=last_dim)

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        return self.dpt(decout, image_size)


class LinearPts3dHead(LinearPatchHead):
    """The DUSt3R linear head (keys ``proj.*``) on the last decoder tokens: ``decout -> (B, C, H, W)`` raw."""

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> Tensor:  # type: ignore[override]
        return super().forward(decout[-1], image_size)


class Dust3r(CroCoStereo):
    """DUSt3R with the official constructor arguments (ignored official-only ones: see
    ``fin3r.models.croco.checkpoint.IGNORED_ARGS``). ``dpt_layer_dims``, ``dpt_feature_dim`` and
    ``dpt_last_dim`` default to the official widths; set them for tiny models."""

    family = "dust3r"

    def __init__(self, output_mode: str = "pts3d", head_type: str = "linear",
                 depth_mode: Sequence = ("exp", -inf, inf), conf_mode: Sequence | None = ("exp", 1, inf),
                 img_size: int | Sequence[int] = (224, 224), enc_embed_dim: int = 1024, enc_depth: int = 24,
                 enc_num_heads: int = 16, dec_embed_dim: int = 768, dec_depth: int = 12, dec_num_heads: int = 12,
                 mlp_ratio: float = 4.0, patch_size: int = 16, norm_im2_in_dec: bool = True,
                 pos_embed: str = "RoPE100", dpt_layer_dims: Sequence[int] = OFFICIAL_LAYER_DIMS,
                 dpt_feature_dim: int = OFFICIAL_FEATURE_DIM, dpt_last_dim: int | None = None):
        super().__init__(enc_embed_dim=enc_embed_dim, enc_depth=enc_depth, enc_num_heads=enc_num_heads,
                         dec_embed_dim=dec_embed_dim, dec_depth=dec_depth, dec_num_heads=dec_num_heads,
                         mlp_ratio=mlp_ratio, patch_size=patch_size, norm_im2_in_dec=norm_im2_in_dec,
                         pos_embed=pos_embed)
        img_size = tuple(img_size) if isinstance(img_size, Sequence) else (int(img_size), int(img_size))
        self.output_mode = output_mode
        self.head_type = head_type
        self.depth_mode = _mode(depth_mode)
        self.conf_mode = _mode(conf_mode)
        self._config: dict[str, Any] = dict(
            output_mode=output_mode, head_type=head_type, depth_mode=list(self.depth_mode),
            conf_mode=None if self.conf_mode is None else list(self.conf_mode), img_size=list(img_size),
            enc_embed_dim=enc_embed_dim, enc_depth=enc_depth, enc_num_heads=enc_num_heads,
            dec_embed_dim=dec_embed_dim, dec_depth=dec_depth, dec_num_heads=dec_num_heads, mlp_ratio=mlp_ratio,
            patch_size=patch_size, norm_im2_in_dec=norm_im2_in_dec, pos_embed=pos_embed)
        if head_type in ("dpt", "catmlp+dpt"):
            last = dpt_feature_dim // 2 if dpt_last_dim is None else dpt_last_dim
            self._config.update(dpt_layer_dims=list(dpt_layer_dims), dpt_feature_dim=dpt_feature_dim,
                                dpt_last_dim=last)
        self._dpt_widths = dict(layer_dims=tuple(dpt_layer_dims), feature_dim=dpt_feature_dim, last_dim=dpt_last_dim)
        self.downstream_head1 = self._make_head()
        self.downstream_head2 = self._make_head()

    # --- heads --------------------------------------------------------------------------------
    @property
    def _head_channels(self) -> int:
        return 3 + (self.conf_mode is not None)

    def _make_head(self) -> nn.Module:
        if self.output_mode != "pts3d":
            raise ValueError(f"Dust3r: unsupported output_mode {self.output_mode!r} (expected 'pts3d')")
        if self.head_type == "linear":
            return LinearPts3dHead(self.dec_embed_dim, self._head_channels, self.patch_size)
        if self.head_type == "dpt":
            return DPTPts3dHead(self._head_channels, self.dec_depth, self.enc_embed_dim, self.dec_embed_dim,
                                self.patch_size, **self._dpt_widths)
        raise ValueError(f"Dust3r: unsupported head_type {self.head_type!r} (expected 'linear' or 'dpt')")

    def _postprocess(self, raw: Tensor) -> dict[str, Tensor]:
        """Raw head output ``(B, C, H, W)`` -> ``{'pts3d' (B, H, W, 3), 'conf' (B, H, W)}``."""
        fmap = raw.permute(0, 2, 3, 1)
        res = {"pts3d": reg_dense_depth(fmap[..., 0:3], self.depth_mode)}
        if self.conf_mode is not None:
            res["conf"] = reg_dense_conf(fmap[..., 3], self.conf_mode)
        return res

    def run_heads(self, dec1: list[Tensor], dec2: list[Tensor], image_size: tuple[int, int]) -> tuple[dict, dict]:
        """Both heads in fp32 (autocast off), as the official model does."""
        device_type = dec1[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            res1 = self._postprocess(self.downstream_head1([t.float() for t in dec1], image_size))
            res2 = self._postprocess(self.downstream_head2([t.float() for t in dec2], image_size))
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    # --- forward ------------------------------------------------------------------------------
    def forward(self, img1: Tensor, img2: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The official pair forward on ``img1, img2 (B, 3, H, W)`` in [0, 1] (same H, W)."""
        self.check_images(img1)
        self.check_images(img2)
        if img1.shape != img2.shape:
            raise InputError(f"{type(self).__name__}: both views must have the same shape, got "
                             f"{tuple(img1.shape)} and {tuple(img2.shape)}")
        feat1, pos1, feat2, pos2 = self.encode_pair(img1, img2)
        dec1, dec2 = self.decode(feat1, pos1, feat2, pos2)
        return self.run_heads(dec1, dec2, tuple(img1.shape[-2:]))

    def predict_mono(self, img: Tensor) -> MonoPrediction:
        """The image as both views of a pair, encoded once. ``depth`` = z of head 1's ``pts3d``;
        ``depth_aux``/``conf_aux`` = head 2 (z of ``pts3d_in_other_view``, the same camera)."""
        self.check_images(img)
        feat, pos = self.encode_with_pos(img)
        dec1, dec2 = self.decode(feat, pos, feat, pos)
        res1, res2 = self.run_heads(dec1, dec2, tuple(img.shape[-2:]))
        conf1 = res1.get("conf", torch.ones_like(res1["pts3d"][..., 2]))
        conf2 = res2.get("conf", torch.ones_like(res2["pts3d_in_other_view"][..., 2]))
        return MonoPrediction(depth=res1["pts3d"][..., 2], conf=conf1, pts3d=res1["pts3d"],
                              depth_aux=[res2["pts3d_in_other_view"][..., 2]], conf_aux=[conf2])

    def predict_views(self, imgs: Tensor) -> ViewsPrediction:
        """``imgs (B, 2, 3, H, W)``: the pair's point maps in view 0's frame."""
        self.check_images(imgs, ndim=5)
        if imgs.shape[1] != 2:
            raise InputError(f"{type(self).__name__}.predict_views takes pairs (S = 2), got S = {imgs.shape[1]}")
        res1, res2 = self(imgs[:, 0], imgs[:, 1])
        return self._views_prediction(res1, res2)

    def _views_prediction(self, res1: dict, res2: dict) -> ViewsPrediction:
        pts3d = torch.stack((res1["pts3d"], res2["pts3d_in_other_view"]), dim=1)
        conf = torch.stack((res1["conf"], res2["conf"]), dim=1) if "conf" in res1 else torch.ones_like(pts3d[..., 0])
        return ViewsPrediction(pts3d=pts3d, conf=conf)

    # --- checkpoints --------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"family": self.family, **self._config}

    def official_state_dict(self) -> dict[str, Tensor]:
        """Our state_dict plus the official alias keys (``*.dpt.scratch.layer_rn.{0..3}.weight``)
        and the unused ``mask_token`` (zeros), so ``torch.save({'model': ...})`` loads with
        ``strict=True`` in the original repository."""
        sd = dict(self.state_dict())
        for key in list(sd):
            if ".dpt.scratch.layer" in key and key.endswith("_rn.weight"):
                i = int(key.split(".dpt.scratch.layer")[1][0])
                sd[key.replace(f"scratch.layer{i}_rn.", f"scratch.layer_rn.{i - 1}.")] = sd[key]
        ref = self.decoder_embed.weight
        sd["mask_token"] = torch.zeros(1, 1, self.dec_embed_dim, dtype=ref.dtype, device=ref.device)
        return sd


__all__ = ["Dust3r", "DPTPts3dHead", "LinearPts3dHead"]
