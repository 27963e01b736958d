"""Output activations of the CroCo-family heads (pure functions).

Modes are the official ``(name, vmin, vmax)`` tuples, e.g. ``('exp', -inf, inf)`` for points and
``('exp', 1, inf)`` for confidences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Mode = tuple[str, float, float]


def reg_dense_depth(xyz: Tensor, mode: Mode) -> Tensor:
    """Points from raw head output ``xyz (..., 3)``: direction times ``expm1(norm)`` for ``'exp'``.

    ``'linear'`` returns ``xyz`` (clipped to the bounds if finite), ``'square'`` direction times
    ``norm**2``.
    """
    name, vmin, vmax = mode
    if name == "linear":
        if vmin == -math.inf and vmax == math.inf:
            return xyz
        return xyz.clip(min=vmin, max=vmax)
    if not (vmin == -math.inf and vmax == math.inf):
        raise ValueError(f"point activation {name!r} does not support bounds ({vmin}, {vmax})")
    d = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / d.clip(min=1e-8)
    if name == "exp":
        return direction * torch.expm1(d)
    if name == "square":
        return direction * d.square()
    raise ValueError(f"unknown point activation {name!r}")


def reg_dense_conf(x: Tensor, mode: Mode) -> Tensor:
    """Confidence from raw head output ``x (...)``: ``vmin + exp(x)`` (clipped at ``vmax``) for
    ``'exp'``, or a sigmoid mapped to ``[vmin, vmax]``."""
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if name == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown confidence activation {name!r}")


def reg_desc(desc: Tensor, mode: str = "norm") -> Tensor:
    """Descriptors ``(..., D)`` L2-normalised along the last axis (MASt3R ``desc_mode='norm'``)."""
    if "norm" not in mode:
        raise ValueError(f"unknown descriptor activation {mode!r}")
    return desc / desc.norm(dim=-1, keepdim=True)


__all__ = ["reg_dense_depth", "reg_dense_conf", "reg_desc", "Mode"]
