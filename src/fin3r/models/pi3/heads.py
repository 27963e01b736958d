"""π3's prediction heads: the token decoders in front of them and the camera head.

- :class:`TokenDecoder` (keys ``projects``, ``blocks.N.*``, ``linear_out``): a linear projection
  of the decoder's concatenated last two layers, ``depth`` pre-norm transformer blocks (LayerNorm
  eps 1e-6, RoPE2D within each frame, no LayerScale, no qk-norm: the CroCo-family
  :class:`~fin3r.models.layers.blocks.Block`) and a linear output. π3 has three of them (points,
  confidence, camera), with the same widths for points and confidence.
- :class:`CameraHead` (keys ``res_conv.{0,1}.res_conv{1,2,3}``, ``more_mlps.{0,2}``, ``fc_t``,
  ``fc_rot``): two residual 3-layer ReLU MLPs per token, the mean over the patch tokens, a 2-layer
  ReLU MLP, then 3 translation and 9 rotation values; the rotation is the nearest rotation to the
  row-normalised 3x3 matrix (:func:`nearest_rotation`). Output: camera-to-world ``(B, 4, 4)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.models.layers.blocks import Block
from fin3r.models.layers.rope2d import RoPE2D


class TokenDecoder(nn.Module):
    """``(tokens (B, N, in_dim), pos (B, N, 2)) -> (B, N, out_dim)``.

    Args:
        in_dim: width of the incoming tokens (twice the decoder width in π3).
        dim, num_heads, depth, mlp_ratio: the blocks (1024, 16, 5, 4 in π3).
        out_dim: width of the output (1024 for points/confidence, 512 for the camera).
        rope: the model's shared RoPE2D.
    """

    def __init__(self, in_dim: int, dim: int, num_heads: int, depth: int, out_dim: int, mlp_ratio: float = 4.0,
                 rope: RoPE2D | None = None):
        super().__init__()
        self.projects = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True, rope=rope) for _ in range(depth))
        self.linear_out = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        x = self.projects(tokens)
        for blk in self.blocks:
            x = blk(x, pos)
        return self.linear_out(x)


class ResidualMLP(nn.Module):
    """``x + relu(l3(relu(l2(relu(l1(x))))))`` on ``(..., dim)`` (keys ``res_conv1..3``: the official
    names of what began as 1x1 convolutions)."""

    def __init__(self, dim: int):
        super().__init__()
        self.res_conv1 = nn.Linear(dim, dim)
        self.res_conv2 = nn.Linear(dim, dim)
        self.res_conv3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.res_conv1(x))
        y = F.relu(self.res_conv2(y))
        return x + F.relu(self.res_conv3(y))


def nearest_rotation(m: Tensor) -> Tensor:
    """``(..., 9)`` -> ``(..., 3, 3)`` rotations: the 9 values read row-major as a matrix ``M``, each
    row normalised to unit length, then the rotation closest to ``M`` (SVD ``M = U S V^T``,
    ``R = U diag(1, 1, det(U V^T)) V^T``), as π3's camera head computes it."""
    shape = m.shape[:-1]
    m = F.normalize(m.reshape(-1, 3, 3), p=2, dim=-1)
    u, _, vh = torch.linalg.svd(m.transpose(-1, -2))  # SVD of M^T = U' S V'^T, so M = V' S U'^T
    v = vh.transpose(-1, -2)
    det = torch.det(v @ u.transpose(-1, -2))
    r = torch.cat((v[..., :-1], v[..., -1:] * det.view(-1, 1, 1)), dim=-1) @ u.transpose(-1, -2)
    return r.reshape(*shape, 3, 3)


class CameraHead(nn.Module):
    """``(tokens (B, P, dim), patch grid) -> camera-to-world (B, 4, 4)`` from the patch tokens of one
    frame (registers already removed). Runs in the dtype of its input (π3 calls it in fp32)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.res_conv = nn.ModuleList(ResidualMLP(dim) for _ in range(2))
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens
        for blk in self.res_conv:
            x = blk(x)
        x = self.more_mlps(x.mean(dim=1))
        t = self.fc_t(x)
        R = nearest_rotation(self.fc_rot(x))
        pose = torch.zeros(x.shape[0], 4, 4, dtype=x.dtype, device=x.device)
        pose[:, :3, :3] = R
        pose[:, :3, 3] = t
        pose[:, 3, 3] = 1.0
        return pose


__all__ = ["TokenDecoder", "ResidualMLP", "CameraHead", "nearest_rotation"]
