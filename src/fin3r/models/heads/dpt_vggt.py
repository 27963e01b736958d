"""The DPT head of VGGT (depth and point heads), and its UV sin-cos position embedding.

Differs from the CroCo-family DPT (``dpt_croco.py``):

- four token layers (default ``[4, 11, 17, 23]``) of the aggregator's ``(B, S, P, 2C)`` outputs,
  patch tokens only, each through one shared ``norm`` (LayerNorm, eps 1e-5), then
  ``projects.i`` (1x1 conv) and ``resize_layers.i`` (ConvT k4s4, ConvT k2s2, Identity,
  Conv k3s2);
- a sinusoidal UV position embedding (x 0.1) is added after each projection and again after the
  final upsampling to the image size;
- ``refinenet4`` has no ``resConfUnit1``; fusion upsampling uses explicit sizes
  (bilinear, align_corners=True);
- **the residual units add ReLU(x), not x**: the official ``ResidualConvUnit`` applies an
  in-place ``ReLU`` to its input before the first conv, so its skip connection sees the
  rectified input. Reproduced explicitly here (no in-place ops).

Output: ``conv2(ReLU(conv(...)))`` with ``C = output_dim`` channels, then the activation of the
first ``C - 1`` channels (``"exp"`` for depth, ``"inv_log"`` for points) and ``1 + exp`` for the
last channel (confidence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def uv_grid(width: int, height: int, aspect_ratio: float, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> Tensor:
    """UV coordinates ``(height, width, 2)`` of a ``width x height`` grid centred on 0, spanning
    ``+-aspect/diag`` in u and ``+-1/diag`` in v (``diag = sqrt(aspect^2 + 1)``), cell centres."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                        device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)


def sincos_embed_1d(pos: Tensor, dim: int, omega_0: float = 100.0) -> Tensor:
    """``pos (M,) -> (M, dim)`` = ``[sin(pos * w), cos(pos * w)]``, ``w_j = omega_0^(-2j/dim)``,
    computed in float64, returned float32."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def uv_position_embedding(height: int, width: int, channels: int, aspect_ratio: float,
                          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The DPT position embedding ``(channels, height, width)``: sin-cos of u in the first half of
    the channels, of v in the second, for a grid of the given aspect ratio (image W / H)."""
    grid = uv_grid(width, height, aspect_ratio, dtype=dtype, device=device).reshape(-1, 2)
    emb = torch.cat((sincos_embed_1d(grid[:, 0], channels // 2), sincos_embed_1d(grid[:, 1], channels // 2)), dim=-1)
    return emb.reshape(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """``x -> conv2(relu(conv1(relu(x)))) + relu(x)`` (the VGGT quirk: the skip adds ReLU(x))."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """``(x, skip=None, size) -> out_conv(upsample(rcu2(x + rcu1(skip))))`` (``rcu1`` only when
    ``has_residual``); upsampling is bilinear, align_corners=True, to ``size`` or 2x."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.has_residual = has_residual

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


def inverse_log(y: Tensor) -> Tensor:
    """``sign(y) * (exp(|y|) - 1)``."""
    return torch.sign(y) * torch.expm1(y.abs())


class VggtDPTHead(nn.Module):
    """DPT head: aggregated tokens -> dense prediction ``(B, S, H, W, C-1)`` + confidence ``(B, S, H, W)``.

    Args:
        dim_in: token width (2 x aggregator width: frame and global tokens concatenated).
        patch_size: 14.
        output_dim: channels before activation incl. confidence (2 depth, 4 points).
        activation: ``"exp"`` or ``"inv_log"`` for the prediction channels.
        features: fusion width (256).
        out_channels: widths of the four projections (256, 512, 1024, 1024).
        layers: indices into the aggregator's output list (4, 11, 17, 23).
        frames_chunk: frames processed per chunk (memory only; results are identical).
    """

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 2, activation: str = "exp",
                 features: int = 256, out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 layers: tuple[int, ...] = (4, 11, 17, 23), frames_chunk: int = 8):
        super().__init__()
        if activation not in ("exp", "inv_log"):
            raise ValueError(f"unknown DPT activation {activation!r}")
        if len(out_channels) != 4 or len(layers) != 4:
            raise ValueError("the VGGT DPT head takes exactly four layers and four widths")
        self.patch_size = patch_size
        self.activation = activation
        self.layers = tuple(layers)
        self.frames_chunk = frames_chunk
        self.norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, 1) for oc in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FusionBlock(features)
        self.scratch.refinenet2 = FusionBlock(features)
        self.scratch.refinenet3 = FusionBlock(features)
        self.scratch.refinenet4 = FusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1)
        )

    @staticmethod
    def _add_pos(x: Tensor, aspect_ratio: float, ratio: float = 0.1) -> Tensor:
        emb = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, device=x.device, dtype=x.dtype)
        return x + ratio * emb.to(x.dtype)[None]

    def _forward_frames(self, tokens: dict[int, Tensor], patch_start: int, h: int, w: int) -> Tensor:
        """Tokens of one chunk by layer index, each ``(B, s, P, 2C)`` -> raw output ``(B*s, output_dim, H, W)``."""
        aspect = w / h  # image W / H (patch multiples, so equal to the pixel aspect)
        feats = []
        for i, layer in enumerate(self.layers):
            x = tokens[layer][:, :, patch_start:]
            x = self.norm(x.reshape(-1, x.shape[-2], x.shape[-1]))
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)
            x = self._add_pos(self.projects[i](x), aspect)
            feats.append(self.resize_layers[i](x))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = F.interpolate(out, size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True)
        out = self._add_pos(out, aspect)
        return s.output_conv2(out)

    def forward(self, tokens: list[Tensor], patch_start: int, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``tokens``: the aggregator's list of ``(B, S, P, 2C)``; ``image_hw``: ``(H, W)`` pixels.

        Returns:
            ``pred (B, S, H, W, output_dim - 1)`` activated, ``conf (B, S, H, W)`` = 1 + exp.
        """
        B, S = tokens[self.layers[0]].shape[:2]
        h, w = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        chunk = self.frames_chunk if self.frames_chunk and self.frames_chunk > 0 else S
        outs = []
        for start in range(0, S, chunk):
            part = {layer: tokens[layer][:, start : start + chunk] for layer in self.layers}
            out = self._forward_frames(part, patch_start, h, w)  # (B * s, C, H, W)
            outs.append(out.reshape(B, -1, *out.shape[1:]))
        out = torch.cat(outs, dim=1)  # (B, S, C, H, W)
        out = out.permute(0, 1, 3, 4, 2)
        pred, conf = out[..., :-1], out[..., -1]
        pred = torch.exp(pred) if self.activation == "exp" else inverse_log(pred)
        return pred, 1 + conf.exp()


__all__ = ["VggtDPTHead", "ResidualConvUnit", "FusionBlock", "uv_position_embedding", "inverse_log"]
