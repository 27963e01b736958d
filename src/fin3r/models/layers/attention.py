"""Multi-head self- and cross-attention of the CroCo family, on ``scaled_dot_product_attention``.

Key names follow the official code: self-attention ``qkv`` + ``proj``; cross-attention
``projq``, ``projk``, ``projv`` + ``proj``. RoPE2D (if given) rotates q and k, never v.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.models.layers.rope2d import RoPE2D


class Attention(nn.Module):
    """Self-attention: ``(x (B, N, C), pos (B, N, 2)) -> (B, N, C)``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d)
        q, k = self.rope_qk(q, k, pos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def rope_qk(self, q: Tensor, k: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """RoPE2D on ``q, k (B, heads, N, d)`` with one set of tables (identity without RoPE);
        subclasses override this to change how q and k are prepared (norms, precision)."""
        if self.rope is None:
            return q, k
        if pos is None:
            raise ValueError("this attention layer uses RoPE2D and needs token positions")
        cos, sin = self.rope.cos_sin(pos, q.shape[-1])
        return self.rope.rotate(q, cos, sin), self.rope.rotate(k, cos, sin)


class CrossAttention(nn.Module):
    """Cross-attention: ``(query (B, Nq, C), key (B, Nk, C), value (B, Nk, C), qpos, kpos) -> (B, Nq, C)``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def _heads(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                qpos: Tensor | None = None, kpos: Tensor | None = None) -> Tensor:
        B, Nq, C = query.shape
        q, k, v = self._heads(self.projq(query)), self._heads(self.projk(key)), self._heads(self.projv(value))
        if self.rope is not None:
            q = self.rope(q, qpos)
            k = self.rope(k, kpos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, Nq, C))


__all__ = ["Attention", "CrossAttention"]
