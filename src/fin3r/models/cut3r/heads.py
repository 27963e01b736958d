"""CUT3R's prediction heads (our own code; keys ``downstream_head.*`` as the official ones).

Both heads take the official head input ``decout = [encoder tokens, decoder layer 2L/4 (no pose
token), decoder layer 3L/4 (no pose token), dec_norm(last layer) (pose token first)]`` and
return the official output dict, per frame:

- ``pts3d_in_self_view (B, H, W, 3)``, ``conf_self (B, H, W)``: points in the frame's own camera;
- ``pts3d_in_other_view (B, H, W, 3)``, ``conf (B, H, W)``: points in the first frame's camera
  (the "world"), from tokens modulated by the pose token (``final_transform``);
- ``rgb (B, H, W, 3)`` in ``[-1, 1]`` (if the model has the RGB head);
- ``camera_pose (B, 7)``: camera-to-world translation + unit quaternion ``(w, x, y, z)``, ``w >= 0``.

:class:`Cut3rDPTHead` is ``DPTPts3dPose`` (three CroCo DPTs ``dpt_self``, ``dpt_cross``, ``dpt_rgb``
with hooks ``[0, 1, 2, 3]``); :class:`Cut3rLinearHead` is ``LinearPts3dPose`` (MLP + pixel shuffle:
``proj``, ``rgb_proj``, ``cross_proj``). The heads always run in fp32 (autocast off).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.geometry import quaternion_to_matrix
from fin3r.models.layers.activations import Mode, reg_dense_conf, reg_dense_depth
from fin3r.models.cut3r.blocks import ConditionModulationBlock
from fin3r.models.heads.dpt_croco import OFFICIAL_FEATURE_DIM, OFFICIAL_LAYER_DIMS, DPTCroCo
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.rope2d import RoPE2D


# --- activations (pure functions) --------------------------------------------------------------
def postprocess_pts3d(raw: Tensor, depth_mode: Mode, conf_mode: Mode,
                      positive_z: bool = False) -> tuple[Tensor, Tensor]:
    """Raw ``(B, 4, H, W)`` -> ``(pts3d (B, H, W, 3), conf (B, H, W))``.

    ``positive_z`` flips each point to ``z >= 0`` first (the official linear head's self view).
    """
    fmap = raw.permute(0, 2, 3, 1)
    xyz = fmap[..., 0:3]
    if positive_z:
        xyz = xyz * torch.sign(xyz[..., 2:3])
    return reg_dense_depth(xyz, depth_mode), reg_dense_conf(fmap[..., 3], conf_mode)


def postprocess_rgb(raw: Tensor, eps: float = 1e-6) -> Tensor:
    """Raw ``(B, 3, H, W)`` -> ``rgb (B, H, W, 3)`` in ``[-1, 1]`` (a squeezed sigmoid)."""
    rgb = torch.sigmoid(raw.permute(0, 2, 3, 1)) * (1 - 2 * eps) + eps
    return (rgb - 0.5) * 2


def postprocess_pose(raw: Tensor, mode: Mode = ("exp", -float("inf"), float("inf"))) -> Tensor:
    """Raw pose ``(..., 7)`` -> ``camera_pose (..., 7)``: translation with the norm activation of
    ``mode`` (``'exp'``: ``t / |t| * expm1(|t|)``), quaternion ``(w, x, y, z)`` normalised, ``w >= 0``."""
    name, vmin, vmax = mode
    if vmin != -float("inf") or vmax != float("inf"):
        raise ValueError(f"pose activation {name!r} does not support bounds ({vmin}, {vmax})")
    trans, quats = raw[..., 0:3], raw[..., 3:7]
    if name == "linear":
        return trans  # the official code drops the quaternion in this (unused) mode
    d = trans.norm(dim=-1, keepdim=True)
    if name == "exp":
        scale = torch.expm1(d) / d.clip(min=1e-8)
    elif name == "square":
        scale = d.square() / d.clip(min=1e-8)
    else:
        raise ValueError(f"unknown pose activation {name!r}")
    quats = F.normalize(quats, p=2, dim=-1)
    quats = torch.where(quats[..., 0:1] < 0, -quats, quats)
    return torch.cat([trans * scale, quats], dim=-1)


def camera_pose_to_cam2world(camera_pose: Tensor) -> Tensor:
    """``camera_pose (..., 7)`` = (t, quaternion wxyz) -> ``cam2world (..., 4, 4)``."""
    R = quaternion_to_matrix(camera_pose[..., 3:7])
    T = torch.zeros(camera_pose.shape[:-1] + (4, 4), dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = camera_pose[..., 0:3]
    T[..., 3, 3] = 1
    return T


# --- modules -----------------------------------------------------------------------------------
class PoseDecoder(nn.Module):
    """``pose token (B, C) -> raw pose (B, 7)`` (keys ``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), 7)

    def forward(self, pose_token: Tensor) -> Tensor:
        return self.mlp(pose_token)


class _Cut3rHead(nn.Module):
    """Shared parts: pose head, the two AdaLN ``final_transform`` blocks, the activations."""

    def __init__(self, dec_dim: int, dec_num_heads: int, rope: RoPE2D, depth_mode: Mode, conf_mode: Mode,
                 pose_mode: Mode):
        super().__init__()
        self.depth_mode, self.conf_mode, self.pose_mode = depth_mode, conf_mode, pose_mode
        self.pose_head = PoseDecoder(dec_dim)
        self.final_transform = nn.ModuleList(
            [ConditionModulationBlock(dec_dim, dec_num_heads, 4.0, rope=rope) for _ in range(2)])

    def split_pose(self, decout: Sequence[Tensor], pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(camera_pose (B, 7), tokens (B, N, C), tokens_cross (B, N, C))`` from the last layer."""
        last = decout[-1]
        pose_token, tokens = last[:, 0], last[:, 1:]
        camera_pose = postprocess_pose(self.pose_head(pose_token), self.pose_mode)
        tokens_cross = tokens
        for blk in self.final_transform:
            tokens_cross = blk(tokens_cross, pose_token, pos)
        return camera_pose, tokens, tokens_cross


class Cut3rDPTHead(_Cut3rHead):
    """``DPTPts3dPose``: DPTs ``dpt_self``, ``dpt_cross`` (and ``dpt_rgb``) with hooks ``[0, 1, 2, 3]``."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_num_heads: int, rope: RoPE2D, depth_mode: Mode,
                 conf_mode: Mode, pose_mode: Mode, rgb_head: bool = True, patch_size: int = 16,
                 layer_dims: Sequence[int] = OFFICIAL_LAYER_DIMS, feature_dim: int = OFFICIAL_FEATURE_DIM,
                 last_dim: int | None = None):
        super().__init__(dec_dim, dec_num_heads, rope, depth_mode, conf_mode, pose_mode)
        widths = dict(layer_dims=layer_dims, feature_dim=feature_dim, last_dim=last_dim)
        dims = [enc_dim, dec_dim, dec_dim, dec_dim]
        self.dpt_self = DPTCroCo(4, [0, 1, 2, 3], dims, patch_size, **widths)
        self.dpt_cross = DPTCroCo(4, [0, 1, 2, 3], dims, patch_size, **widths)
        self.dpt_rgb = DPTCroCo(3, [0, 1, 2, 3], dims, patch_size, **widths) if rgb_head else None

    def forward(self, decout: Sequence[Tensor], image_size: tuple[int, int], pos: Tensor) -> dict[str, Tensor]:
        camera_pose, tokens, tokens_cross = self.split_pose(decout, pos)
        layers = list(decout[:-1]) + [tokens]
        pts, conf = postprocess_pts3d(self.dpt_self(layers, image_size), self.depth_mode, self.conf_mode)
        out = {"pts3d_in_self_view": pts, "conf_self": conf}
        if self.dpt_rgb is not None:
            out["rgb"] = postprocess_rgb(self.dpt_rgb(layers, image_size))
        out["camera_pose"] = camera_pose
        raw_cross = self.dpt_cross(list(decout[:-1]) + [tokens_cross], image_size)
        out["pts3d_in_other_view"], out["conf"] = postprocess_pts3d(raw_cross, self.depth_mode, self.conf_mode)
        return out


class Cut3rLinearHead(_Cut3rHead):
    """``LinearPts3dPose``: per-token MLPs whose outputs are pixel-shuffled to ``p x p`` patches."""

    def __init__(self, dec_dim: int, dec_num_heads: int, rope: RoPE2D, depth_mode: Mode, conf_mode: Mode,
                 pose_mode: Mode, rgb_head: bool = True, patch_size: int = 16, mlp_ratio: float = 4.0):
        super().__init__(dec_dim, dec_num_heads, rope, depth_mode, conf_mode, pose_mode)
        self.patch_size = patch_size
        hidden = int(mlp_ratio * dec_dim)
        self.proj = Mlp(dec_dim, hidden, 4 * patch_size**2)
        self.rgb_proj = Mlp(dec_dim, hidden, 3 * patch_size**2) if rgb_head else None
        self.cross_proj = Mlp(dec_dim, hidden, 4 * patch_size**2)

    def _to_image(self, feat: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, N, C * p * p) -> (B, C, H, W)``."""
        H, W = image_size
        p = self.patch_size
        return F.pixel_shuffle(feat.transpose(-1, -2).reshape(feat.shape[0], -1, H // p, W // p), p)

    def forward(self, decout: Sequence[Tensor], image_size: tuple[int, int], pos: Tensor) -> dict[str, Tensor]:
        camera_pose, tokens, tokens_cross = self.split_pose(decout, pos)
        raw = self._to_image(self.proj(tokens), image_size)
        pts, conf = postprocess_pts3d(raw, self.depth_mode, self.conf_mode, positive_z=True)
        out = {"pts3d_in_self_view": pts, "conf_self": conf}
        if self.rgb_proj is not None:
            out["rgb"] = postprocess_rgb(self._to_image(self.rgb_proj(tokens), image_size))
        out["camera_pose"] = camera_pose
        raw_cross = self._to_image(self.cross_proj(tokens_cross), image_size)
        out["pts3d_in_other_view"], out["conf"] = postprocess_pts3d(raw_cross, self.depth_mode, self.conf_mode)
        return out


__all__ = ["Cut3rDPTHead", "Cut3rLinearHead", "PoseDecoder", "postprocess_pts3d", "postprocess_rgb",
           "postprocess_pose", "camera_pose_to_cam2world"]
