"""fin3r.geometry: round trips, conventions and closed-form alignment (numerical truth)."""

import math

import pytest
import torch

from fin3r.geometry import (
    align_scale,
    align_scale_shift,
    crop_intrinsics,
    depth_to_points,
    invert_rigid,
    matrix_to_quaternion,
    pixel_grid,
    project_points,
    quaternion_to_matrix,
    relative_pose,
    scale_intrinsics,
    transform_points,
)

D = torch.float64


def _K(fx=50.0, fy=60.0, cx=15.5, cy=11.0, skew=0.0):
    return torch.tensor([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=D)


def _random_rigid(shape, gen):
    q = torch.randn(*shape, 4, dtype=D, generator=gen)
    T = torch.eye(4, dtype=D).expand(*shape, 4, 4).clone()
    T[..., :3, :3] = quaternion_to_matrix(q)
    T[..., :3, 3] = torch.randn(*shape, 3, dtype=D, generator=gen)
    return T


def test_pixel_grid_convention():
    g = pixel_grid(3, 4, dtype=D)
    assert g.shape == (3, 4, 2)
    assert g[2, 1].tolist() == [1.0, 2.0]  # (u = column, v = row)


def test_depth_points_project_round_trip_batched_and_skewed():
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 5, 7, dtype=D, generator=gen) * 4 + 0.5
    K = torch.stack(
        [
            torch.tensor([[50.0, 0.0, 3.5], [0.0, 55.0, 2.0], [0, 0, 1]], dtype=D),
            torch.tensor([[40.0, 1.5, 3.0], [0.0, 45.0, 2.5], [0, 0, 1]], dtype=D),
        ]
    )
    pts = depth_to_points(depth, K)
    assert pts.shape == (2, 5, 7, 3)
    assert torch.equal(pts[..., 2], depth)
    uv, z = project_points(pts, K)
    assert torch.allclose(uv, pixel_grid(5, 7, dtype=D).expand(2, 5, 7, 2), atol=1e-10)
    assert torch.allclose(z, depth)
    # principal point back-projects onto the optical axis
    d1 = torch.ones(1, 5, 7, dtype=D)
    K1 = torch.tensor([[[50.0, 0.0, 3.0], [0.0, 50.0, 2.0], [0, 0, 1]]], dtype=D)
    p = depth_to_points(d1, K1)
    assert torch.allclose(p[0, 2, 3], torch.tensor([0.0, 0.0, 1.0], dtype=D))
    assert p[0, 2, 4, 0] > 0 and p[0, 3, 3, 1] > 0  # x right, y down


def test_unbatched_K_broadcasts_over_batch():
    depth = torch.rand(3, 4, 5, dtype=D) + 1
    K = _K(skew=0.3)
    assert torch.allclose(depth_to_points(depth, K)[1], depth_to_points(depth[1], K))


def test_rigid_inverse_relative_pose_and_transform():
    gen = torch.Generator().manual_seed(1)
    T = _random_rigid((2, 3), gen)
    eye = torch.eye(4, dtype=D).expand(2, 3, 4, 4)
    assert torch.allclose(invert_rigid(T) @ T, eye, atol=1e-12)
    assert torch.allclose(T @ invert_rigid(T), eye, atol=1e-12)
    assert torch.allclose(relative_pose(T, T), eye, atol=1e-12)
    a, b = T[:, 0], T[:, 1]
    assert torch.allclose(a @ relative_pose(a, b), b, atol=1e-12)
    pts = torch.randn(2, 3, 10, 3, dtype=D, generator=gen)
    ref = (T[..., None, :3, :3] @ pts[..., None]).squeeze(-1) + T[..., None, :3, 3]
    assert torch.allclose(transform_points(T, pts), ref)
    assert torch.allclose(transform_points(invert_rigid(T), transform_points(T, pts)), pts)
    # pixel-shaped points (B, H, W, 3) with T (B, 4, 4)
    grid = torch.randn(2, 4, 5, 3, dtype=D, generator=gen)
    out = transform_points(T[:, 0], grid)
    assert torch.allclose(out[1, 2, 3], T[1, 0, :3, :3] @ grid[1, 2, 3] + T[1, 0, :3, 3])


def test_quaternion_round_trip_and_sign():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(500, 4, dtype=D, generator=gen)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    # hard cases: 180-degree rotations (w = 0) about each axis, and the identity
    special = torch.tensor(
        [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0.6, 0.8, 0]], dtype=D
    )
    q = torch.cat((q, special))
    R = quaternion_to_matrix(q)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=D).expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(q), dtype=D))
    q2 = matrix_to_quaternion(R)
    assert (q2[:, 0] >= 0).all()
    # unique up to sign when w == 0
    err = torch.minimum((q2 - q).norm(dim=-1), (q2 + q).norm(dim=-1))
    assert err.max() < 1e-10
    # known rotation: 90 degrees about z maps x to y
    qz = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=D)
    assert torch.allclose(quaternion_to_matrix(qz) @ torch.tensor([1.0, 0, 0], dtype=D),
                          torch.tensor([0.0, 1, 0], dtype=D), atol=1e-12)  # fmt: skip


def test_angles():
    """The pose angles (one implementation, the evaluation protocol's: fin3r.eval.metrics)."""
    from fin3r.eval.metrics import rotation_error_deg, translation_error_deg

    ang = torch.tensor([0.0, 0.5, 30.0, 90.0, 179.0], dtype=D)
    half = torch.deg2rad(ang) / 2
    axis = torch.tensor([1.0, 2.0, 2.0], dtype=D) / 3
    q = torch.cat((half.cos()[:, None], half.sin()[:, None] * axis), -1)
    R = quaternion_to_matrix(q)
    eye = torch.eye(3, dtype=D).expand_as(R)
    assert torch.allclose(rotation_error_deg(eye, R), ang, atol=1e-6)
    assert torch.allclose(rotation_error_deg(R, eye), ang, atol=1e-6)
    a = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=D)
    b = torch.tensor([[0.0, 2, 0], [3, 0, 0], [-1, 0, 0], [1, 0, 0]], dtype=D)
    assert torch.allclose(translation_error_deg(a, b), torch.tensor([90.0, 0, 180, 90], dtype=D))


def test_intrinsics_resize_and_crop_match_the_pixel_convention():
    gen = torch.Generator().manual_seed(3)
    K = torch.tensor([[[50.0, 0.5, 15.5], [0.0, 60.0, 11.0], [0, 0, 1]]], dtype=D)
    pts = torch.randn(1, 20, 3, dtype=D, generator=gen) + torch.tensor([0, 0, 5.0], dtype=D)
    uv, _ = project_points(pts, K)
    # resize by 2 in x, 0.5 in y: pixel centres map as u' = (u + 0.5) s - 0.5
    uv2, _ = project_points(pts, scale_intrinsics(K, 2.0, 0.5))
    assert torch.allclose(uv2[..., 0], (uv[..., 0] + 0.5) * 2.0 - 0.5)
    assert torch.allclose(uv2[..., 1], (uv[..., 1] + 0.5) * 0.5 - 0.5)
    # per-sample factors as tensors
    Kb = K.expand(2, 3, 3)
    Ks = scale_intrinsics(Kb, torch.tensor([2.0, 3.0], dtype=D), torch.tensor([1.0, 1.0], dtype=D))
    assert torch.allclose(Ks[1, 0, 0], K[0, 0, 0] * 3)
    uvc, _ = project_points(pts, crop_intrinsics(K, 4, 3))
    assert torch.allclose(uvc, uv - torch.tensor([4.0, 3.0], dtype=D))


@pytest.mark.parametrize("shape", [(3, 6, 8), (3, 6, 8, 3)])
def test_align_scale_recovers_known_scale_and_ignores_masked_outliers(shape):
    gen = torch.Generator().manual_seed(4)
    pred = torch.rand(shape, dtype=D, generator=gen) + 0.1
    s_true = torch.tensor([0.5, 2.0, 7.0], dtype=D)
    target = pred * s_true.view(3, *([1] * (len(shape) - 1)))
    mask = torch.rand(shape[:3], generator=gen) > 0.3
    target = target.clone()
    target[~mask] = float("nan")  # masked outliers, even non-finite, have no effect
    target[0][~mask[0]] = 1e9
    s = align_scale(pred, target, mask)
    assert torch.allclose(s, s_true, rtol=1e-12)
    pred_nan = pred.clone()
    pred_nan[~mask] = float("nan")
    assert torch.allclose(align_scale(pred_nan, target, mask), s_true, rtol=1e-12)
    # weighted least squares with noise matches the normal equations
    noisy = pred * 2 + 0.1 * torch.randn(shape, dtype=D, generator=gen)
    w = torch.rand(shape[:3], dtype=D, generator=gen)
    s = align_scale(pred, noisy, mask, w)
    wm = (w * mask)
    while wm.ndim < pred.ndim:
        wm = wm[..., None]
    ref = (wm * pred * noisy).flatten(1).sum(1) / (wm * pred * pred).flatten(1).sum(1)
    assert torch.allclose(s, ref)


def test_align_scale_shift_recovers_known_values_and_is_differentiable():
    gen = torch.Generator().manual_seed(5)
    pred = torch.rand(4, 10, 12, dtype=D, generator=gen, requires_grad=True)
    s_true = torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=D)
    c_true = torch.tensor([1.0, -2.0, 0.0, 10.0], dtype=D)
    target = (pred.detach() * s_true[:, None, None] + c_true[:, None, None]).clone()
    mask = torch.rand(4, 10, 12, generator=gen) > 0.5
    target[~mask] = float("inf")
    pred_nan = torch.where(mask, pred, torch.full_like(pred, float("nan")))  # masked NaN in pred too
    s, c = align_scale_shift(pred_nan, target, mask)
    assert torch.allclose(s, s_true, rtol=1e-10) and torch.allclose(c, c_true, atol=1e-10)
    (s.sum() + c.sum()).backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()


def test_alignment_degenerate_inputs():
    pred = torch.zeros(2, 5, dtype=D)
    target = torch.ones(2, 5, dtype=D)
    mask = torch.tensor([[True] * 5, [False] * 5])
    assert torch.equal(align_scale(pred, target, mask), torch.ones(2, dtype=D))
    s, c = align_scale_shift(pred + 3, target, mask)
    assert torch.equal(s, torch.ones(2, dtype=D))
    assert torch.allclose(c, torch.tensor([-2.0, 0.0], dtype=D))
