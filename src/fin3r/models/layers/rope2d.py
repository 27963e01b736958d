"""2D rotary position embedding (RoPE2D) of the CroCo family, computed directly from positions.

The head dimension ``D`` is split in two halves: the first half is rotated by the token's y
(row) position, the second by its x (column) position. Within each half the "rotate-half"
pairing is used (element ``i`` pairs with ``i + D/4``), with angles ``pos * freq^(-2j / (D/2))``.

Angles and their cos/sin are computed in float32 from ``pos.float()`` for every call, so any
integer positions work -- including negative ones (CUT3R's pose token sits at (-1, -1)) -- and
low-precision tokens are rotated in float32 and cast back (the semantics of the official cuRoPE
kernel; numerically identical to the official table-based fallback in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_cos_sin(pos: Tensor, head_dim: int, freq: float = 100.0, f0: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables for :func:`apply_rope2d`.

    Args:
        pos: ``(B, N, 2)`` integer (or float) (y, x) token positions.
        head_dim: ``D``, a multiple of 4.

    Returns:
        ``cos, sin``, each ``(B, 1, N, D)`` float32, laid out as ``[y, y, x, x]`` quarters.
    """
    if head_dim % 4:
        raise ValueError(f"RoPE2D needs a head dimension that is a multiple of 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = f0 / (freq ** (torch.arange(0, half, 2, device=pos.device, dtype=torch.float32) / half))
    angles = pos.float()[..., None] * inv_freq  # (B, N, 2, D/4)
    angles_y, angles_x = angles[:, :, 0], angles[:, :, 1]
    angles = torch.cat((angles_y, angles_y, angles_x, angles_x), dim=-1)[:, None]  # (B, 1, N, D)
    return angles.cos(), angles.sin()


def _rotate_quarters(tokens: Tensor) -> Tensor:
    """``[a, b, c, d] -> [-b, a, -d, c]`` on the last dimension (rotate-half within each half)."""
    a, b, c, d = tokens.chunk(4, dim=-1)
    return torch.cat((-b, a, -d, c), dim=-1)


def apply_rope2d(tokens: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``tokens (B, heads, N, D)`` with tables from :func:`rope_cos_sin`."""
    dtype = tokens.dtype
    t = tokens.float() if dtype != torch.float32 else tokens
    out = t * cos + _rotate_quarters(t) * sin
    return out.to(dtype)


class RoPE2D(nn.Module):
    """RoPE2D as a parameter-free module, shared by all attention layers of a model.

    ``rope(tokens (B, heads, N, D), pos (B, N, 2)) -> (B, heads, N, D)``; use :meth:`cos_sin` +
    :meth:`rotate` to rotate q and k with one set of tables.
    """

    def __init__(self, freq: float = 100.0, f0: float = 1.0):
        super().__init__()
        self.freq = float(freq)
        self.f0 = float(f0)

    def cos_sin(self, pos: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(pos, head_dim, self.freq, self.f0)

    @staticmethod
    def rotate(tokens: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return apply_rope2d(tokens, cos, sin)

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        if tokens.ndim != 4 or pos.ndim != 3 or pos.shape[-1] != 2:
            raise ValueError(f"RoPE2D expects tokens (B, heads, N, D) and pos (B, N, 2), got "
                             f"{tuple(tokens.shape)} and {tuple(pos.shape)}")
        cos, sin = self.cos_sin(pos, tokens.shape[-1])
        return apply_rope2d(tokens, cos, sin)

    def extra_repr(self) -> str:
        return f"freq={self.freq}, f0={self.f0}"


__all__ = ["RoPE2D", "rope_cos_sin", "apply_rope2d"]
