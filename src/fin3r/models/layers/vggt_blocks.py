"""The transformer block of VGGT (DINOv2 encoder, frame/global aggregator, camera-head trunk).

One pre-norm block with LayerScale serves all three uses; they differ only in options:

============================  ==========  =======  =====  ============
use                           LN eps      qk-norm  RoPE   LayerScale
============================  ==========  =======  =====  ============
DINOv2 encoder blocks         1e-6        no       no     yes
aggregator frame/global       1e-5        yes      yes    yes
camera-head trunk             1e-5        no       no     yes
============================  ==========  =======  =====  ============

``x += ls1(attn(norm1(x), pos)); x += ls2(mlp(norm2(x)))``. Keys: ``norm1, attn.{qkv, q_norm,
k_norm, proj}, ls1.gamma, norm2, mlp.{fc1, fc2}, ls2.gamma`` -- the official ones. The q/k norms
(``LayerNorm(head_dim)``, eps 1e-5) act per head *before* RoPE.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fin3r.models.layers.attention import Attention
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.rope2d import RoPE2D


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (not in place), ``gamma (dim,)``."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class QKNormAttention(Attention):
    """Self-attention ``(x (B, N, C), pos (B, N, 2) | None) -> (B, N, C)`` on SDPA, with optional
    per-head q/k LayerNorm (eps 1e-5) applied before the optional RoPE2D (VGGT's order)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: RoPE2D | None = None):
        super().__init__(dim, num_heads, qkv_bias=True, rope=rope)
        head_dim = dim // num_heads
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-5) if qk_norm else nn.Identity()

    def rope_qk(self, q: Tensor, k: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
        return super().rope_qk(self.q_norm(q), self.k_norm(k), pos)


class LayerScaleBlock(nn.Module):
    """Pre-norm block with LayerScale: ``(x (B, N, C), pos (B, N, 2) | None) -> (B, N, C)``.

    Args:
        dim: token width ``C``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``C``.
        norm_eps: eps of ``norm1``/``norm2`` (1e-6 in DINOv2, 1e-5 elsewhere in VGGT).
        qk_norm: per-head LayerNorm on q and k.
        rope: shared RoPE2D (frequency 100 in VGGT) or None.
        init_values: LayerScale initial value (real values come from checkpoints).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-5,
                 qk_norm: bool = False, rope: RoPE2D | None = None, init_values: float = 0.01):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = QKNormAttention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


__all__ = ["LayerScale", "QKNormAttention", "LayerScaleBlock"]
