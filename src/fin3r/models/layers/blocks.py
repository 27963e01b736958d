"""Pre-norm transformer blocks of the CroCo family (LayerNorm eps 1e-6, no LayerScale).

- :class:`Block` (encoder): ``x += attn(norm1(x)); x += mlp(norm2(x))``.
- :class:`DecoderBlock`: self-attention, cross-attention to the other view's (normalised)
  tokens, MLP; keys ``norm1, attn, norm_y, norm2, cross_attn, norm3, mlp``.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from fin3r.models.layers.attention import Attention, CrossAttention
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.rope2d import RoPE2D

#: the LayerNorm of every CroCo-family block
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Block(nn.Module):
    """Encoder block: ``(x (B, N, C), pos (B, N, 2)) -> (B, N, C)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 rope: RoPE2D | None = None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, rope=rope)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Decoder block: ``(x (B, N, C), y (B, M, C), xpos, ypos) -> x (B, N, C)``.

    ``y`` is the other view's tokens (the memory); unlike the official block, only ``x`` is
    returned (the official block returns ``y`` unchanged as well).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_mem: bool = True, rope: RoPE2D | None = None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, rope=rope)
        self.cross_attn = CrossAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, rope=rope)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim) if norm_mem else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, xpos: Tensor, ypos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), xpos)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, y, xpos, ypos)
        return x + self.mlp(self.norm3(x))


__all__ = ["Block", "DecoderBlock", "LayerNorm"]
