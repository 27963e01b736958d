"""Patch embedding and token positions of the CroCo family (key ``proj``; no transposition)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def patch_positions(batch: int, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Row-major ``(y, x)`` integer positions of an ``h x w`` token grid, ``(batch, h*w, 2)`` int64."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (h, w, 2)
    return grid.reshape(1, h * w, 2).expand(batch, -1, -1)


class PatchEmbed(nn.Module):
    """``img (B, C, H, W) -> (tokens (B, H/p * W/p, dim), pos (B, N, 2))``, H and W multiples of p."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        B, _, H, W = img.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        x = self.proj(img)
        pos = patch_positions(B, x.shape[2], x.shape[3], device=img.device)
        return x.flatten(2).transpose(1, 2), pos


__all__ = ["PatchEmbed", "patch_positions"]
