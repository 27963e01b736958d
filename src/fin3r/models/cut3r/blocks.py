"""Blocks that CUT3R adds to the shared CroCo layers (our own code; keys as the official ones).

- :class:`HalfRoPEAttention` / :func:`cut3r_encoder_block`: CUT3R's image encoder rounds q and k
  to float16 before RoPE and casts them back afterwards (its copy of the CroCo blocks does this;
  the official cuRoPE kernel rotates in float32 and writes the result into the float16 tensor).
  Reproduced here because skipping it moves the outputs by ~1e-3.
- :class:`ModLN` and :class:`ConditionModulationBlock`: the AdaLN-modulated blocks of the head's
  ``final_transform`` (keys ``norm1.norm``, ``norm1.mlp.1``, ``attn``, ``norm2.*``, ``mlp``).
- :class:`LocalMemory`: the pose retriever (keys ``proj_q``, ``masked_token``, ``mem``,
  ``write_blocks``, ``read_blocks``): a small learned memory written with each frame's mean
  encoder token and its output pose token, read to produce the next frame's pose token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fin3r.models.layers.attention import Attention
from fin3r.models.layers.blocks import Block, DecoderBlock, LayerNorm
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.rope2d import RoPE2D


class HalfRoPEAttention(Attention):
    """:class:`Attention` whose q and k pass through float16 around RoPE (CUT3R's encoder).

    ``q -> fp16 -> RoPE (computed in fp32, result rounded to fp16) -> q.dtype``; v is untouched.
    """

    def rope_qk(self, q: Tensor, k: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.rope is None:
            return q, k
        q16, k16 = super().rope_qk(q.to(torch.float16), k.to(torch.float16), pos)
        return q16.to(q.dtype), k16.to(k.dtype)


def cut3r_encoder_block(dim: int, num_heads: int, mlp_ratio: float = 4.0, rope: RoPE2D | None = None) -> Block:
    """A CroCo encoder :class:`Block` whose attention is :class:`HalfRoPEAttention`."""
    block = Block(dim, num_heads, mlp_ratio, rope=rope)
    block.attn = HalfRoPEAttention(dim, num_heads=num_heads, qkv_bias=True, rope=rope)
    return block


class ModLN(nn.Module):
    """AdaLN modulation: ``LayerNorm(x) * (1 + scale) + shift`` with ``(shift, scale) = mlp(mod)``.

    ``x (B, N, C)``, ``mod (B, C_mod)``; keys ``norm`` and ``mlp.1`` (``mlp.0`` is a SiLU).
    """

    def __init__(self, dim: int, mod_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, dim * 2))

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = self.mlp(mod).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ConditionModulationBlock(nn.Module):
    """Pre-norm transformer block with AdaLN conditioning: ``(x (B, N, C), mod (B, C), pos) -> x``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, rope: RoPE2D | None = None):
        super().__init__()
        self.norm1 = ModLN(dim, dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True, rope=rope)
        self.norm2 = ModLN(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mod: Tensor, pos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x, mod), pos)
        return x + self.mlp(self.norm2(x, mod))


class LocalMemory(nn.Module):
    """CUT3R's pose retriever.

    The memory ``mem (B, size, 2 * v_dim)`` holds (key, value) halves. ``update_mem`` writes a
    frame's (projected mean encoder token, output pose token); ``inquire`` reads the value half
    for a query token. Blocks are :class:`DecoderBlock` of width ``2 * v_dim`` without RoPE.

    Args:
        size: number of memory slots (``local_mem_size``, 256 in the released models).
        k_dim: encoder width (the query/key input).
        v_dim: decoder width (the pose token).
    """

    def __init__(self, size: int, k_dim: int, v_dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        self.v_dim = v_dim
        self.proj_q = nn.Linear(k_dim, v_dim)
        self.masked_token = nn.Parameter(torch.randn(1, 1, v_dim) * 0.2)
        self.mem = nn.Parameter(torch.randn(1, size, 2 * v_dim) * 0.2)
        self.write_blocks = nn.ModuleList([DecoderBlock(2 * v_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.read_blocks = nn.ModuleList([DecoderBlock(2 * v_dim, num_heads, mlp_ratio) for _ in range(depth)])

    def initial_memory(self, batch: int) -> Tensor:
        """``(batch, size, 2 * v_dim)``: the learned initial memory."""
        return self.mem.expand(batch, -1, -1)

    def update_mem(self, mem: Tensor, feat_k: Tensor, feat_v: Tensor) -> Tensor:
        """``mem (B, size, 2v)``, ``feat_k (B, 1, k_dim)``, ``feat_v (B, 1, v_dim)`` -> new memory."""
        feat = torch.cat([self.proj_q(feat_k), feat_v], dim=-1)
        for blk in self.write_blocks:
            mem = blk(mem, feat, None, None)
        return mem

    def inquire(self, query: Tensor, mem: Tensor) -> Tensor:
        """``query (B, 1, k_dim)`` -> pose token ``(B, 1, v_dim)`` read from ``mem``."""
        x = self.proj_q(query)
        x = torch.cat([x, self.masked_token.expand(x.shape[0], -1, -1)], dim=-1)
        for blk in self.read_blocks:
            x = blk(x, mem, None, None)
        return x[..., -self.v_dim:]


__all__ = ["HalfRoPEAttention", "cut3r_encoder_block", "ModLN", "ConditionModulationBlock", "LocalMemory",
           "LayerNorm"]
