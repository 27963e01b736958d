"""The CroCo-style DPT head (``DPTOutputAdapter_fix`` of DUSt3R/MASt3R/CUT3R), our own code.

Four hooked token layers ``(B, N, C_i)`` are reshaped to ``(B, C_i, H/p, W/p)``, brought to
strides 4, 8, 16, 32 by ``act_postprocess``, projected to ``feature_dim`` by ``scratch.layerN_rn``
and fused coarse-to-fine by four ``scratch.refinenetN`` blocks, then ``head`` upsamples to full
resolution. Keys match the official module; the official ``scratch.layer_rn.{0..3}`` alias
ModuleList is not created (loaders drop or map those keys, see ``fin3r.models.croco.checkpoint``).

The official widths are hard-coded there (feature_dim 256, last_dim 128, layer_dims
96/192/384/768); they are arguments here so tiny test models stay small, and
:func:`dpt_widths_from_state_dict` recovers them from weight shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

OFFICIAL_LAYER_DIMS = (96, 192, 384, 768)
OFFICIAL_FEATURE_DIM = 256


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (keys ``conv1``, ``conv2``)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class FeatureFusionBlock(nn.Module):
    """``(coarse, skip=None) -> out_conv(up2(rcu2(coarse + rcu1(skip))))`` (bilinear, align_corners)."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """Container that gives the official ``scratch.*`` key names."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int):
        super().__init__()
        for i, c in enumerate(layer_dims, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, feature_dim, kernel_size=3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(feature_dim))


class DPTCroCo(nn.Module):
    """``layers (list of (B, N, C) tokens) -> (B, num_channels, H, W)``.

    Args:
        num_channels: output channels (4 for DUSt3R: xyz + conf).
        hooks: indices into the token list of the four layers to fuse (``[0, 2L/4, 3L/4, L]``).
        dim_tokens: channels of the four hooked layers (encoder dim, then decoder dims).
        patch_size: the token stride in pixels.
    """

    def __init__(self, num_channels: int, hooks: Sequence[int], dim_tokens: Sequence[int], patch_size: int = 16,
                 layer_dims: Sequence[int] = OFFICIAL_LAYER_DIMS, feature_dim: int = OFFICIAL_FEATURE_DIM,
                 last_dim: int | None = None):
        super().__init__()
        if len(hooks) != 4 or len(dim_tokens) != 4 or len(layer_dims) != 4:
            raise ValueError("DPTCroCo needs exactly four hooks, dim_tokens and layer_dims")
        last_dim = feature_dim // 2 if last_dim is None else last_dim
        self.hooks = list(hooks)
        self.patch_size = patch_size
        d = list(layer_dims)
        self.scratch = _Scratch(d, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, kernel_size=1),
        )
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], d[0], 1), nn.ConvTranspose2d(d[0], d[0], kernel_size=4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], d[1], 1), nn.ConvTranspose2d(d[1], d[1], kernel_size=2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], d[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], d[3], 1), nn.Conv2d(d[3], d[3], kernel_size=3, stride=2, padding=1)),
        ])

    def forward(self, tokens: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        H, W = image_size
        h, w = H // self.patch_size, W // self.patch_size
        feats = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            x = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
            x = self.act_postprocess[i](x)
            feats.append(getattr(self.scratch, f"layer{i + 1}_rn")(x))
        s = self.scratch
        path = s.refinenet4(feats[3])[:, :, : feats[2].shape[2], : feats[2].shape[3]]
        path = s.refinenet3(path, feats[2])
        path = s.refinenet2(path, feats[1])
        path = s.refinenet1(path, feats[0])
        return self.head(path)


def dpt_hooks(dec_depth: int) -> list[int]:
    """The official hook indices ``[0, 2L//4, 3L//4, L]``; the official head needs ``L > 9``."""
    if dec_depth <= 9:
        raise ValueError(f"the CroCo DPT head needs a decoder depth > 9, got {dec_depth}")
    return [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]


def dpt_widths_from_state_dict(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, object]:
    """``layer_dims``, ``feature_dim`` and ``last_dim`` of the DPT under ``prefix`` (e.g.
    ``"downstream_head1.dpt."``) read from weight shapes; ``{}`` if there is no such DPT."""
    try:
        layer_dims = [int(state_dict[f"{prefix}act_postprocess.{i}.0.weight"].shape[0]) for i in range(4)]
        feature_dim = int(state_dict[f"{prefix}scratch.layer1_rn.weight"].shape[0]) \
            if f"{prefix}scratch.layer1_rn.weight" in state_dict \
            else int(state_dict[f"{prefix}scratch.layer_rn.0.weight"].shape[0])
        last_dim = int(state_dict[f"{prefix}head.2.weight"].shape[0])
    except KeyError:
        return {}
    return {"layer_dims": layer_dims, "feature_dim": feature_dim, "last_dim": last_dim}


__all__ = ["DPTCroCo", "FeatureFusionBlock", "ResidualConvUnit", "dpt_hooks", "dpt_widths_from_state_dict",
           "OFFICIAL_LAYER_DIMS", "OFFICIAL_FEATURE_DIM"]
