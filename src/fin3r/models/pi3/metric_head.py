"""Pi3X's metric-scale branch: one learned token attends to every token of every view.

``metric_decoder`` (keys ``projects_x``, ``projects_y``, ``blocks.N.{norm2, norm_y, cross_attn.{q,k,v}_proj,
cross_attn.proj, norm3, mlp}``, ``linear_out``) projects the token and the decoder's tokens, runs
cross-attention-only pre-norm blocks (LayerNorm eps 1e-6, RoPE2D on q and k: the query at (0, 0),
the context at its decoder positions; no self-attention, no LayerScale) and a linear output;
``metric_head`` maps it to one log-scale per sample: ``metric = exp(metric_head(...))``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.models.layers.blocks import LayerNorm
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.rope2d import RoPE2D


class ProjCrossAttention(nn.Module):
    """Cross-attention ``(x (B, N, C), context (B, M, C), xpos, cpos) -> (B, N, C)`` with keys
    ``q_proj``, ``k_proj``, ``v_proj``, ``proj``; RoPE2D rotates q and k."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def _heads(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor, xpos: Tensor, cpos: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        if self.rope is not None:
            q, k = self.rope(q, xpos), self.rope(k, cpos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossOnlyBlock(nn.Module):
    """``x += cross_attn(norm2(x), norm_y(context)); x += mlp(norm3(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, rope: RoPE2D | None = None):
        super().__init__()
        self.norm2 = LayerNorm(dim)
        self.norm_y = LayerNorm(dim)
        self.cross_attn = ProjCrossAttention(dim, num_heads, rope)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, xpos: Tensor, cpos: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm2(x), self.norm_y(context), xpos, cpos)
        return x + self.mlp(self.norm3(x))


class ContextDecoder(nn.Module):
    """``(x (B, N, in_dim), context (B, M, in_dim), xpos, cpos) -> (B, N, out_dim)``."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, depth: int, out_dim: int, mlp_ratio: float = 4.0,
                 rope: RoPE2D | None = None):
        super().__init__()
        self.projects_x = nn.Linear(in_dim, dim)
        self.projects_y = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(CrossOnlyBlock(dim, num_heads, mlp_ratio, rope) for _ in range(depth))
        self.linear_out = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, context: Tensor, xpos: Tensor, cpos: Tensor) -> Tensor:
        x, context = self.projects_x(x), self.projects_y(context)
        for blk in self.blocks:
            x = blk(x, context, xpos, cpos)
        return self.linear_out(x)


__all__ = ["ProjCrossAttention", "CrossOnlyBlock", "ContextDecoder"]
