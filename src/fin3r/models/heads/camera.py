"""VGGT's camera head and its pose encoding.

**Pose encoding** ``pose_enc (..., 9) = [T (3), quaternion (4, x y z w: scalar LAST), fov_h, fov_w]``
describes the *camera-from-world* transform ``x_cam = R x_world + T`` (OpenCV axes) and a pinhole
camera with the principal point at the image centre ``(W/2, H/2)`` and
``fy = (H/2) / tan(fov_h/2)``, ``fx = (W/2) / tan(fov_w/2)``. VGGT's world frame is the camera frame
of the first view. :func:`pose_encoding_to_cameras` turns it into our conventions
(``cam2world (..., 4, 4)``, ``intrinsics (..., 3, 3)`` in pixels); :func:`cameras_to_pose_encoding`
is its inverse. ``fin3r.geometry`` quaternions are ``(w, x, y, z)``: the reordering happens here.

**Camera head**: the camera token (index 0) of the last aggregator layer -> ``token_norm`` ->
``num_iterations`` (4) refinements. Each iteration embeds the previous encoding
(``empty_pose_tokens`` on the first), derives an AdaLN shift/scale/gate from it
(``poseLN_modulation``), modulates the LayerNorm'd (no affine, eps 1e-6) tokens, runs the ``trunk``
(LayerScale blocks, attention across the S views), ``trunk_norm`` and ``pose_branch`` (an MLP)
to a delta. Activations: translation and quaternion linear, field of view ReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fin3r.geometry import invert_rigid, matrix_to_quaternion, quaternion_to_matrix
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.vggt_blocks import LayerScaleBlock

POSE_ENC_DIM = 9


def pose_encoding_to_cameras(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``pose_enc (..., 9)`` camera-from-world -> ``cam2world (..., 4, 4)``, ``intrinsics (..., 3, 3)``.

    ``image_hw`` is ``(H, W)`` in pixels; the principal point is ``(W/2, H/2)`` as in VGGT.
    Computed in float32 (or the input's float64).
    """
    enc = pose_enc if pose_enc.dtype == torch.float64 else pose_enc.float()
    t, quat_xyzw, fov_h, fov_w = enc[..., :3], enc[..., 3:7], enc[..., 7], enc[..., 8]
    R = quaternion_to_matrix(quat_xyzw[..., [3, 0, 1, 2]])  # -> (w, x, y, z)
    world2cam = torch.zeros(enc.shape[:-1] + (4, 4), dtype=enc.dtype, device=enc.device)
    world2cam[..., :3, :3] = R
    world2cam[..., :3, 3] = t
    world2cam[..., 3, 3] = 1.0
    H, W = image_hw
    K = torch.zeros(enc.shape[:-1] + (3, 3), dtype=enc.dtype, device=enc.device)
    K[..., 0, 0] = (W / 2.0) / torch.tan(fov_w / 2.0)
    K[..., 1, 1] = (H / 2.0) / torch.tan(fov_h / 2.0)
    K[..., 0, 2] = W / 2.0
    K[..., 1, 2] = H / 2.0
    K[..., 2, 2] = 1.0
    return invert_rigid(world2cam), K


def cameras_to_pose_encoding(cam2world: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pose_encoding_to_cameras`: ``cam2world (..., 4, 4)``, ``intrinsics (..., 3, 3)``
    -> ``pose_enc (..., 9)`` (quaternion x y z w with w >= 0; the principal point is not encoded)."""
    world2cam = invert_rigid(cam2world)
    quat_wxyz = matrix_to_quaternion(world2cam[..., :3, :3])
    H, W = image_hw
    fov_h = 2 * torch.atan((H / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2.0) / intrinsics[..., 0, 0])
    return torch.cat(
        (world2cam[..., :3, 3], quat_wxyz[..., [1, 2, 3, 0]], fov_h[..., None], fov_w[..., None]), dim=-1
    )


class CameraHead(nn.Module):
    """``tokens (B, S, P, 2C)`` of the last aggregator layer -> list of ``pose_enc (B, S, 9)``, one per
    refinement iteration (the last is the prediction).

    Args:
        dim_in: token width (2 x aggregator width).
        trunk_depth: trunk blocks (4).
        num_heads: trunk attention heads (16).
        mlp_ratio: trunk MLP ratio (4).
    """

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        self.trunk = nn.Sequential(
            *(LayerScaleBlock(dim_in, num_heads, mlp_ratio, norm_eps=1e-5) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.trunk_norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENC_DIM))
        self.embed_pose = nn.Linear(POSE_ENC_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENC_DIM)

    @staticmethod
    def activate(pose_enc: Tensor) -> Tensor:
        """Translation and quaternion linear, the two fields of view ReLU."""
        return torch.cat((pose_enc[..., :7], torch.relu(pose_enc[..., 7:])), dim=-1)

    def forward(self, last_tokens: Tensor, num_iterations: int = 4) -> list[Tensor]:
        tokens = self.token_norm(last_tokens[:, :, 0])  # (B, S, 2C) camera tokens
        B, S, _ = tokens.shape
        pose_enc = None
        encodings = []
        for _ in range(num_iterations):
            if pose_enc is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                cond = self.embed_pose(pose_enc.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            pose_enc = delta if pose_enc is None else pose_enc + delta
            encodings.append(self.activate(pose_enc))
        return encodings


__all__ = ["CameraHead", "pose_encoding_to_cameras", "cameras_to_pose_encoding", "POSE_ENC_DIM"]
