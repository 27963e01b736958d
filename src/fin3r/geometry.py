"""Pure, batched geometry: pixels, depth <-> points, rigid transforms, rotations, alignment.

Conventions (shared by the whole package):

* Cameras are OpenCV: x right, y down, z forward; depth is planar ``z``.
* Pixels: the centre of pixel (row ``i``, column ``j``) is at ``(u, v) = (j, i)``; intrinsics
  ``K`` are in pixels, ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.
* Poses are ``(..., 4, 4)`` rigid matrices; ``cam2world`` maps camera-frame points to the world.
* Quaternions are ``(..., 4)`` in ``(w, x, y, z)`` order.

Batching: a matrix argument (``K``, ``T``) carries leading batch dimensions that line up with the
*leading* dimensions of the data argument; any extra data dimensions (pixels ``H, W`` or a
point axis ``N``) are broadcast. So ``K (B, 3, 3)`` goes with ``depth (B, H, W)``, and
``T (B, S, 4, 4)`` goes with ``pts (B, S, N, 3)`` or ``pts (B, S, H, W, 3)``.

All functions are differentiable (no in-place ops on inputs, no Python-side data dependence).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "pixel_grid",
    "depth_to_points",
    "project_points",
    "transform_points",
    "invert_rigid",
    "relative_pose",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "scale_intrinsics",
    "crop_intrinsics",
    "align_scale",
    "align_scale_shift",
]


def _left_align(mat: Tensor, data_batch_ndim: int) -> Tensor:
    """Insert singleton dims after the batch dims of ``mat (..., a, b)`` so they broadcast
    against data whose first ``data_batch_ndim`` dims are batch/pixel dims (leading-aligned)."""
    extra = data_batch_ndim - (mat.ndim - 2)
    if extra <= 0:
        return mat
    return mat.reshape(mat.shape[:-2] + (1,) * extra + mat.shape[-2:])


def pixel_grid(
    h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Pixel-centre coordinates of an ``h x w`` image.

    Returns:
        ``(H, W, 2)`` with ``[..., 0] = u = column`` and ``[..., 1] = v = row``.
    """
    dtype = dtype or torch.get_default_dtype()
    v, u = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((u, v), dim=-1)


def depth_to_points(depth: Tensor, K: Tensor) -> Tensor:
    """Back-project a planar depth map into camera-frame points.

    Args:
        depth: ``(..., H, W)`` planar depth ``z`` (invalid pixels simply give points with that z).
        K: ``(..., 3, 3)`` intrinsics in pixels; its leading dims line up with ``depth``'s.

    Returns:
        ``(..., H, W, 3)`` points ``z * K^-1 [u, v, 1]``.
    """
    h, w = depth.shape[-2:]
    K = _left_align(K, depth.ndim)  # (..., 1, 1, 3, 3) against (..., H, W)
    uv = pixel_grid(h, w, device=depth.device, dtype=depth.dtype)
    fx, skew, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    y_n = (uv[..., 1] - cy) / fy
    x_n = (uv[..., 0] - cx - skew * y_n) / fx
    return torch.stack(torch.broadcast_tensors(x_n * depth, y_n * depth, depth), dim=-1)


def project_points(pts: Tensor, K: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Project camera-frame points to pixels.

    Args:
        pts: ``(..., 3)`` camera-frame points, e.g. ``(B, N, 3)`` or ``(B, H, W, 3)``.
        K: ``(..., 3, 3)`` intrinsics; its leading dims line up with ``pts``'s.
        eps: ``|z| < eps`` is replaced by ``eps`` in the division (keeps values finite).

    Returns:
        ``uv (..., 2)`` pixel coordinates and ``z (...)`` depth. Points with ``z <= 0`` are
        behind the camera; mask them with ``z > 0``.
    """
    K = _left_align(K, pts.ndim - 1)
    z = pts[..., 2]
    z_safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    x_n = pts[..., 0] / z_safe
    y_n = pts[..., 1] / z_safe
    u = K[..., 0, 0] * x_n + K[..., 0, 1] * y_n + K[..., 0, 2]
    v = K[..., 1, 1] * y_n + K[..., 1, 2]
    u, v = torch.broadcast_tensors(u, v)
    return torch.stack((u, v), dim=-1), z


def transform_points(T: Tensor, pts: Tensor) -> Tensor:
    """Apply a rigid (or any affine) transform to points.

    Args:
        T: ``(..., 4, 4)``; its leading dims line up with ``pts``'s.
        pts: ``(..., N, 3)`` or ``(..., H, W, 3)``.

    Returns:
        Points of the same shape as ``pts``: ``R @ p + t``.
    """
    T = _left_align(T, pts.ndim - 1)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return (R @ pts[..., None]).squeeze(-1) + t


def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of rigid transforms ``(..., 4, 4)`` (``[R^T, -R^T t]``; exact for rotations)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat((Rt, -Rt @ t), dim=-1)
    bottom = torch.zeros_like(T[..., 3:, :])
    bottom = bottom + torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    return torch.cat((top, bottom), dim=-2)


def relative_pose(cam2world_a: Tensor, cam2world_b: Tensor) -> Tensor:
    """Pose of camera b in camera a's frame: ``inv(a) @ b``, shapes ``(..., 4, 4)``."""
    return invert_rigid(cam2world_a) @ cam2world_b


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices from quaternions ``(..., 4)`` in ``(w, x, y, z)`` order (normalised first).

    Returns:
        ``(..., 3, 3)``.
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    m = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(m, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w >= 0`` from rotations ``(..., 3, 3)``.

    Numerically stable for every rotation: of the four algebraic solutions it uses the one whose
    pivot component is largest.
    """
    r = R.unbind(-1)  # columns
    m00, m10, m20 = r[0].unbind(-1)
    m01, m11, m21 = r[1].unbind(-1)
    m02, m12, m22 = r[2].unbind(-1)
    pivots = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
    )
    # four times the pivot component, one candidate quaternion per pivot
    p4 = 2 * pivots.clamp_min(1e-12).sqrt()
    cand = torch.stack(
        (
            torch.stack((p4[..., 0] ** 2 / 4, m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, p4[..., 1] ** 2 / 4, m01 + m10, m02 + m20), -1),
            torch.stack((m02 - m20, m01 + m10, p4[..., 2] ** 2 / 4, m12 + m21), -1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, p4[..., 3] ** 2 / 4), -1),
        ),
        dim=-2,
    ) / p4[..., None]
    best = pivots.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def _pixel_affine(K: Tensor, a_x: Tensor, b_x: Tensor, a_y: Tensor, b_y: Tensor) -> Tensor:
    """``M @ K`` with ``M = [[a_x, 0, b_x], [0, a_y, b_y], [0, 0, 1]]`` (a pixel-space map)."""
    a_x, b_x, a_y, b_y = torch.broadcast_tensors(a_x, b_x, a_y, b_y)
    one, zero = torch.ones_like(a_x), torch.zeros_like(a_x)
    M = torch.stack((a_x, zero, b_x, zero, a_y, b_y, zero, zero, one), -1)
    return M.reshape(a_x.shape + (3, 3)) @ K


def scale_intrinsics(K: Tensor, sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """Intrinsics ``(..., 3, 3)`` after resizing the image by ``sx`` (width) and ``sy`` (height).

    With pixel centres at integers, the new coordinate is ``u' = (u + 0.5) * sx - 0.5``, so
    ``fx' = sx fx``, ``cx' = sx (cx + 0.5) - 0.5`` (and likewise for y); skew scales with ``sx``.
    ``sx``/``sy`` may be floats or tensors broadcasting against ``K``'s leading dims.
    """
    sx = torch.as_tensor(sx, dtype=K.dtype, device=K.device)
    sy = torch.as_tensor(sy, dtype=K.dtype, device=K.device)
    return _pixel_affine(K, sx, 0.5 * sx - 0.5, sy, 0.5 * sy - 0.5)


def crop_intrinsics(K: Tensor, x0: float | Tensor, y0: float | Tensor) -> Tensor:
    """Intrinsics ``(..., 3, 3)`` of a crop whose top-left pixel is column ``x0``, row ``y0``."""
    x0 = torch.as_tensor(x0, dtype=K.dtype, device=K.device)
    y0 = torch.as_tensor(y0, dtype=K.dtype, device=K.device)
    one = torch.ones((), dtype=K.dtype, device=K.device)
    return _pixel_affine(K, one, -x0, one, -y0)


def _masked_weights(pred: Tensor, mask: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Flatten to ``(B, M)`` and return ``(w, finite-safe pred-mask)``; masked entries weigh 0."""
    while mask.ndim < pred.ndim:
        mask = mask[..., None]
    mask = mask.expand_as(pred).bool()
    w = mask.to(pred.dtype)
    if weight is not None:
        while weight.ndim < pred.ndim:
            weight = weight[..., None]
        w = torch.where(mask, weight.expand_as(pred).to(pred.dtype), torch.zeros_like(w))
    return w.flatten(1), mask.flatten(1)


def align_scale(
    pred: Tensor, target: Tensor, mask: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Closed-form per-sample scale ``s = argmin_s sum w (s * pred - target)^2`` over the mask.

    Args:
        pred, target: ``(B, ...)`` (depth maps ``(B, H, W)``, point maps ``(B, H, W, 3)``, ...).
        mask: bool ``(B, ...)``, the same shape as ``pred`` or a prefix of it (``(B, H, W)`` for
            point maps). Masked-out entries are ignored even if they hold NaN or inf.
        weight: optional non-negative ``(B, ...)`` weights, shaped like ``mask``.

    Returns:
        ``scale (B,)`` = ``sum w p t / sum w p^2``; ``1`` where that denominator is zero (empty
        mask or all-zero prediction). Differentiable w.r.t. ``pred``, ``target`` and ``weight``.
    """
    w, m = _masked_weights(pred, mask, weight)
    p = torch.where(m, pred.flatten(1), torch.zeros_like(w))
    t = torch.where(m, target.flatten(1).to(pred.dtype), torch.zeros_like(w))
    num = (w * p * t).sum(1)
    den = (w * p * p).sum(1)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))


def align_scale_shift(
    pred: Tensor, target: Tensor, mask: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Closed-form per-sample ``(s, c) = argmin sum w (s * pred + c - target)^2`` over the mask.

    Args: as :func:`align_scale`.

    Returns:
        ``scale (B,)`` and ``shift (B,)``. Solved on weighted-mean-centred values (stable). If the
        masked prediction has no spread (fewer than two distinct values, or an empty mask) the
        scale is ``1`` and the shift is the weighted mean of ``target - pred`` (``0`` if empty).
    """
    w, m = _masked_weights(pred, mask, weight)
    p = torch.where(m, pred.flatten(1), torch.zeros_like(w))
    t = torch.where(m, target.flatten(1).to(pred.dtype), torch.zeros_like(w))
    w_sum = w.sum(1)
    has = w_sum > 0
    w_safe = torch.where(has, w_sum, torch.ones_like(w_sum))
    p_mean = (w * p).sum(1) / w_safe
    t_mean = (w * t).sum(1) / w_safe
    pc = torch.where(m, p - p_mean[:, None], torch.zeros_like(p))
    tc = torch.where(m, t - t_mean[:, None], torch.zeros_like(t))
    var = (w * pc * pc).sum(1)
    cov = (w * pc * tc).sum(1)
    # relative threshold: a spread at round-off level of the values is no spread
    tiny = (w * p * p).sum(1) * (torch.finfo(pred.dtype).eps * 16) + torch.finfo(pred.dtype).tiny
    ok = var > tiny
    scale = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.ones_like(var))
    shift = t_mean - scale * p_mean
    return scale, shift
