"""DINOv2 ViT with register tokens, as VGGT uses it for its per-image encoder.

Keys match the official ``aggregator.patch_embed.*`` sub-tree: ``cls_token (1, 1, C)``,
``pos_embed (1, 1 + M*M, C)``, ``register_tokens (1, R, C)``, ``mask_token (1, C)`` (unused,
kept for key parity), ``patch_embed.proj`` (conv p x p), ``blocks.N.*`` (LayerNorm eps 1e-6,
LayerScale, no qk-norm, no RoPE) and ``norm`` (eps 1e-6).

Token layout: ``[cls, registers (R), patches (h*w, row-major)]``. The learned position embedding
(an ``M x M`` grid for ``img_size = M * patch``) is added to cls + patches only, before the
registers are inserted. For other grids it is resized bicubically **with antialiasing and an
explicit output size** (``interpolate_offset = 0``), in fp32; for a square input of the
native grid size it is used as is (the official short-cut, reproduced for bit parity).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.models.layers.checkpointing import run_block
from fin3r.models.layers.vggt_blocks import LayerScaleBlock


class ConvPatchEmbed(nn.Module):
    """``img (B, 3, H, W) -> tokens (B, H/p * W/p, C)`` by a strided conv (key ``proj``)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: Tensor) -> Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT with registers: ``img (B, 3, H, W)`` (already normalised) -> token dict.

    Args:
        img_size: training image size; the position-embedding grid is ``img_size // patch_size``
            squared (518 / 14 = 37 for VGGT).
        patch_size: patch size (14).
        embed_dim, depth, num_heads, mlp_ratio: ViT-L/14 is 1024, 24, 16, 4.
        num_register_tokens: register tokens (4).
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        self.patch_embed = ConvPatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.blocks = nn.ModuleList(
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, norm_eps=1e-6, init_values=1.0) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # never used in the forward pass; present in official checkpoints (frozen there too)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, h: int, w: int, img_h: int, img_w: int) -> Tensor:
        """Position embedding ``(1, 1 + h*w, C)`` of cls + an ``h x w`` patch grid (dtype of the
        parameter). ``img_h``/``img_w`` (pixels) decide the official no-resize short-cut."""
        n_native = self.pos_embed.shape[1] - 1
        if h * w == n_native and img_h == img_w:
            return self.pos_embed
        m = int(math.sqrt(n_native))
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, img: Tensor) -> Tensor:
        """``img (B, 3, H, W) -> (B, 1 + R + h*w, C)`` tokens entering the first block."""
        B, _, H, W = img.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = self.patch_embed(img)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.position_embedding(h, w, H, W)
        return torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        """Returns ``x_norm_clstoken (B, C)``, ``x_norm_regtokens (B, R, C)``,
        ``x_norm_patchtokens (B, h*w, C)`` and ``x_prenorm (B, 1 + R + h*w, C)``."""
        x = self.prepare_tokens(img)
        for blk in self.blocks:
            x = run_block(blk, x, None)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
        }


__all__ = ["ConvPatchEmbed", "DinoV2Encoder"]
