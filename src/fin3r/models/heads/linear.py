"""The DUSt3R linear head: each decoder token predicts its ``p x p`` patch of points (+ conf)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LinearPatchHead(nn.Module):
    """``tokens (B, N, C) -> (B, out_channels, H, W)`` by a linear layer and pixel shuffle (key ``proj``)."""

    def __init__(self, dim: int, out_channels: int, patch_size: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, out_channels * patch_size**2)

    def forward(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        B, N, _ = tokens.shape
        H, W = image_size
        p = self.patch_size
        feat = self.proj(tokens).transpose(-1, -2).reshape(B, -1, H // p, W // p)
        return F.pixel_shuffle(feat, p)


__all__ = ["LinearPatchHead"]
