"""MASt3R (``AsymmetricMASt3R``): DUSt3R's trunk with heads that also output dense descriptors.

Each head (``downstream_head{1,2}``) is the DUSt3R DPT (``dpt.*``: xyz + conf) plus an MLP on the
concatenated encoder and final decoder tokens (``head_local_features.fc{1,2}``: per patch
``(desc_dim + two_confs) * p^2`` values, pixel-shuffled). Outputs per view: ``pts3d``
(``pts3d_in_other_view`` for view 2), ``conf``, ``desc (B, H, W, D)`` (L2-normalised) and
``desc_conf (B, H, W)`` (``exp``, ``desc_conf_mode=('exp', 0, inf)`` for the released model).
The released model's points are metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.models.base import ViewsPrediction
from fin3r.models.croco.dust3r import DPTPts3dHead, Dust3r, _mode
from fin3r.models.layers.activations import reg_dense_conf, reg_desc
from fin3r.models.layers.mlp import Mlp


class CatMlpDPTHead(DPTPts3dHead):
    """``Cat_MLP_LocalFeatures_DPT_Pts3d``: DPT (``dpt.*``) + local-feature MLP (``head_local_features.*``).

    ``decout -> (B, num_channels + local_channels, H, W)`` raw channels.
    """

    def __init__(self, num_channels: int, local_channels: int, dec_depth: int, enc_dim: int, dec_dim: int,
                 patch_size: int, hidden_dim_factor: float, **dpt_widths):
        super().__init__(num_channels, dec_depth, enc_dim, dec_dim, patch_size, **dpt_widths)
        idim = enc_dim + dec_dim
        self.patch_size = patch_size
        self.head_local_features = Mlp(idim, int(hidden_dim_factor * idim), local_channels * patch_size**2)

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        pts = self.dpt(decout, image_size)
        H, W = image_size
        p = self.patch_size
        cat = torch.cat((decout[0], decout[-1]), dim=-1)
        local = self.head_local_features(cat).transpose(-1, -2).reshape(cat.shape[0], -1, H // p, W // p)
        return torch.cat((pts, F.pixel_shuffle(local, p)), dim=1)


class Mast3r(Dust3r):
    """MASt3R with the official constructor arguments (``output_mode='pts3d+desc24'``,
    ``head_type='catmlp+dpt'``, ``two_confs``, ``desc_conf_mode``, ``desc_mode``).

    ``head_hidden_dim_factor`` (official: 4, hard-coded) sizes the local-feature MLP of tiny models.
    """

    family = "mast3r"

    def __init__(self, output_mode: str = "pts3d+desc24", head_type: str = "catmlp+dpt",
                 desc_mode: str = "norm", two_confs: bool = False, desc_conf_mode: Sequence | None = None,
                 head_hidden_dim_factor: float = 4.0, **kwargs: Any):
        if not output_mode.startswith("pts3d+desc"):
            raise ValueError(f"Mast3r: unsupported output_mode {output_mode!r} (expected 'pts3d+desc<D>')")
        self.desc_dim = int(output_mode[len("pts3d+desc"):])
        self.desc_mode = desc_mode
        self.two_confs = bool(two_confs)
        self.head_hidden_dim_factor = float(head_hidden_dim_factor)
        self._desc_conf_mode_arg = _mode(desc_conf_mode)
        super().__init__(output_mode=output_mode, head_type=head_type, **kwargs)
        self.desc_conf_mode = self._desc_conf_mode_arg or self.conf_mode
        self._config.update(desc_mode=desc_mode, two_confs=self.two_confs,
                            desc_conf_mode=None if desc_conf_mode is None else list(self._desc_conf_mode_arg),
                            head_hidden_dim_factor=self.head_hidden_dim_factor)

    def _make_head(self) -> nn.Module:
        if self.head_type != "catmlp+dpt":
            raise ValueError(f"Mast3r: unsupported head_type {self.head_type!r} (expected 'catmlp+dpt')")
        return CatMlpDPTHead(self._head_channels, self.desc_dim + self.two_confs, self.dec_depth,
                             self.enc_embed_dim, self.dec_embed_dim, self.patch_size, self.head_hidden_dim_factor,
                             **self._dpt_widths)

    def _postprocess(self, raw: Tensor) -> dict[str, Tensor]:
        """Adds ``desc (B, H, W, D)`` and ``desc_conf (B, H, W)`` to DUSt3R's outputs."""
        res = super()._postprocess(raw)
        fmap = raw.permute(0, 2, 3, 1)
        start = 3 + int(self.conf_mode is not None)
        res["desc"] = reg_desc(fmap[..., start:start + self.desc_dim], self.desc_mode)
        if self.two_confs:
            res["desc_conf"] = reg_dense_conf(fmap[..., start + self.desc_dim], self.desc_conf_mode)
        else:
            res["desc_conf"] = res["conf"].clone()
        return res

    def _views_prediction(self, res1: dict, res2: dict) -> ViewsPrediction:
        pred = super()._views_prediction(res1, res2)
        pred.desc = torch.stack((res1["desc"], res2["desc"]), dim=1)
        pred.desc_conf = torch.stack((res1["desc_conf"], res2["desc_conf"]), dim=1)
        return pred


__all__ = ["Mast3r", "CatMlpDPTHead"]
