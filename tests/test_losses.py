"""fin3r.losses: invariances of the distillation loss, the replay criteria's minima, and parity of
the DUSt3R ConfLoss(Regr3D) with numbers produced by the official naver/dust3r code."""

from pathlib import Path

import pytest
import torch

from fin3r.errors import InputError
from fin3r.geometry import invert_rigid, quaternion_to_matrix
from fin3r.losses import distillation_loss, mono_distillation_loss, views_ground_truth
from fin3r.models import replay_loss
from fin3r.models.croco.replay import dust3r_conf_regr3d_loss
from fin3r.models.base import MonoPrediction, ViewsPrediction

FIXTURES = Path(__file__).parent / "fixtures"


def _mono(b=3, h=12, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = 1.0 + 4.0 * torch.rand(b, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, h, w, generator=g) > 0.1
    depth = teacher * (0.5 + torch.rand(b, h, w, generator=g, dtype=torch.float64))
    conf = 1.0 + torch.rand(b, h, w, generator=g, dtype=torch.float64) * 3
    return depth, conf, teacher, mask


@pytest.mark.parametrize("rho", ["sq", "abs"])
@pytest.mark.parametrize("kind", ["scale", "metric", "affine", "affine_disparity"])
def test_distillation_invariant_to_student_scale(rho, kind):
    depth, conf, teacher, mask = _mono()
    kw = dict(depth_kind=kind, rho=rho, min_valid=10)
    ref, _ = distillation_loss(depth, conf, teacher, mask, **kw)
    for k in (0.01, 3.0, 250.0):
        got, _ = distillation_loss(k * depth, conf, teacher, mask, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    # a different student is a different loss (the test can fail)
    other, _ = distillation_loss(depth + 0.5 * teacher, conf, teacher, mask, **kw)
    assert abs(float(other - ref)) > 1e-4


def test_affine_alignment_invariant_to_student_shift():
    depth, conf, teacher, mask = _mono()
    ref, _ = distillation_loss(depth, conf, teacher, mask, depth_kind="affine", min_valid=10)
    got, _ = distillation_loss(2.0 * depth + 7.0, conf, teacher, mask, depth_kind="affine", min_valid=10)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    scale_only, _ = distillation_loss(depth + 7.0, conf, teacher, mask, depth_kind="scale", min_valid=10)
    assert abs(float(scale_only - ref)) > 1e-4


def test_distillation_invariant_to_teacher_scale():
    depth, conf, teacher, mask = _mono()
    ref, _ = distillation_loss(depth, conf, teacher, mask, min_valid=10)
    got, _ = distillation_loss(depth, conf, 17.0 * teacher, mask, min_valid=10)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("kind", ["scale", "affine"])
def test_distillation_gradient_has_no_component_along_depth(kind):
    depth, conf, teacher, mask = _mono()
    depth.requires_grad_(True)
    loss, _ = distillation_loss(depth, conf, teacher, mask, depth_kind=kind, min_valid=10)
    (grad,) = torch.autograd.grad(loss, depth)
    assert grad.abs().max() > 1e-6  # the loss does pull on the shape
    along = ((grad * depth).sum() / (grad.norm() * depth.norm())).detach()
    assert abs(float(along)) < 1e-10


def test_perfect_student_gives_minus_lambda_mean_log_conf():
    _, conf, teacher, mask = _mono()
    mask[1] = False  # an image with nothing valid is skipped, not averaged in as zero
    depth = 0.37 * teacher
    loss, stats = distillation_loss(depth, conf, teacher, mask, lam=0.2, min_valid=10, far_quantile=None)
    used = [0, 2]
    expected = torch.stack([-0.2 * torch.log(conf[i][mask[i]]).mean() for i in used]).mean()
    torch.testing.assert_close(loss, expected)
    assert stats["images"] == 2 and stats["residual"] < 1e-20


def test_too_few_valid_pixels_are_skipped_and_all_skipped_is_zero_with_graph():
    depth, conf, teacher, mask = _mono()
    sparse = mask.clone()
    sparse[0] = False
    sparse[0, 0, :5] = True  # image 0: 5 valid pixels < min_valid
    alone, _ = distillation_loss(depth[1:], conf[1:], teacher[1:], mask[1:], min_valid=50)
    got, stats = distillation_loss(depth, conf, teacher, sparse, min_valid=50)
    torch.testing.assert_close(got, alone)
    assert stats["images"] == 2
    d = depth.clone().requires_grad_(True)
    zero, stats = distillation_loss(d, conf, teacher, torch.zeros_like(mask), min_valid=50)
    assert float(zero.detach()) == 0.0 and stats["images"] == 0
    zero.backward()
    assert d.grad is not None and float(d.grad.abs().sum()) == 0.0


def test_conf_is_trained_towards_lambda_over_residual():
    depth, _, teacher, mask = _mono()
    beta = torch.full_like(depth, 2.0, requires_grad=True)
    loss, _ = distillation_loss(depth, beta, teacher, mask, rho="abs", min_valid=10)
    (g,) = torch.autograd.grad(loss, beta)
    # pixels whose residual |e| < lam/beta = 0.1 want a larger beta (negative gradient)
    assert (g[mask] < 0).any() and (g[mask] > 0).any()


def test_align_scale_with_affine_teacher_is_an_error():
    depth, conf, teacher, mask = _mono()
    with pytest.raises(InputError, match="align='scale'"):
        distillation_loss(depth, conf, teacher, mask, depth_kind="affine", align="scale")
    with pytest.raises(InputError, match="depth_kind"):
        distillation_loss(depth, conf, teacher, mask, depth_kind="relative")


def test_affine_disparity_teacher_fits_inverse_depth():
    _, conf, teacher, mask = _mono()
    disparity = 3.0 / teacher + 0.2  # Depth-Anything-like label: affine in inverse depth
    loss, stats = distillation_loss(teacher * 5, conf, disparity, mask, depth_kind="affine_disparity", min_valid=10, far_quantile=None)
    assert stats["residual"] < 1e-20
    # the same label read as affine *depth* is a bad fit
    _, wrong = distillation_loss(teacher * 5, conf, disparity, mask, depth_kind="affine", min_valid=10, far_quantile=None)
    assert wrong["residual"] > 1e-4


def test_mono_distillation_averages_both_heads():
    depth, conf, teacher, mask = _mono()
    pred = MonoPrediction(depth=depth, conf=conf, pts3d=torch.zeros(*depth.shape, 3), depth_aux=[2 * teacher], conf_aux=[conf])
    loss, stats = mono_distillation_loss(pred, teacher, mask, min_valid=10)
    a, _ = distillation_loss(depth, conf, teacher, mask, min_valid=10)
    b, _ = distillation_loss(2 * teacher, conf, teacher, mask, min_valid=10)
    torch.testing.assert_close(loss, (a + b) / 2)
    assert stats["heads"] == 2


def test_dust3r_confloss_matches_official_numbers():
    from safetensors.torch import load_file

    fx = load_file(FIXTURES / "dust3r_confloss_regr3d.safetensors")
    loss, stats = dust3r_conf_regr3d_loss(fx["pts3d_pred"], fx["conf"], fx["pts3d_gt_view0"], fx["valid"], alpha=0.2)
    torch.testing.assert_close(loss, fx["loss"][0], rtol=1e-5, atol=1e-5)
    assert stats["view0"] == pytest.approx(float(fx["conf_loss_1"][0]), rel=1e-5)
    assert stats["view1"] == pytest.approx(float(fx["conf_loss_2"][0]), rel=1e-5)


# --- replay -----------------------------------------------------------------------------------


def _views_batch(b=2, s=2, h=8, w=10, kind="metric", seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = 1.0 + 3.0 * torch.rand(b, s, h, w, generator=g)
    valid = torch.rand(b, s, h, w, generator=g) > 0.15
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    K = torch.tensor([[8.0, 0, w / 2], [0, 8.0, h / 2], [0, 0, 1]]).expand(b, s, 3, 3).clone()
    q = torch.randn(b, s, 4, generator=g)
    c2w = torch.eye(4).repeat(b, s, 1, 1)
    c2w[..., :3, :3] = quaternion_to_matrix(q)
    c2w[..., :3, 3] = torch.randn(b, s, 3, generator=g)
    return {"depth": depth, "valid": valid, "K": K, "cam2world": c2w, "depth_kind": [kind] * b}


def _pred_from_gt(gt, batch, scale=1.0, conf=None):
    c = conf if conf is not None else torch.full(gt["valid"].shape, 1.5)
    return ViewsPrediction(
        pts3d=gt["pts3d"] * scale,
        conf=c,
        cam2world=gt["rel_pose"].clone(),
        intrinsics=batch["K"].clone(),
        depth=gt["depth"] * scale,
        depth_conf=c,
        extras={"pts3d_self": gt["pts3d_self"] * scale, "conf_self": c},
    )


def test_views_ground_truth_puts_view0_at_identity():
    batch = _views_batch()
    gt = views_ground_truth(batch)
    torch.testing.assert_close(gt["rel_pose"][:, 0], torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(gt["pts3d"][:, 0], gt["pts3d_self"][:, 0], atol=1e-5, rtol=0)
    # view 1's points, taken to the world by each camera, coincide
    c2w = batch["cam2world"]
    world_via_0 = torch.einsum("bij,bhwj->bhwi", c2w[:, 0, :3, :3], gt["pts3d"][:, 1]) + c2w[:, 0, None, None, :3, 3]
    world_via_1 = torch.einsum("bij,bhwj->bhwi", c2w[:, 1, :3, :3], gt["pts3d_self"][:, 1]) + c2w[:, 1, None, None, :3, 3]
    torch.testing.assert_close(world_via_0, world_via_1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["dust3r", "mast3r", "cut3r", "vggt"])
def test_replay_of_ground_truth_is_minimal(family):
    batch = _views_batch()
    gt = views_ground_truth(batch)
    if family == "vggt":  # VGGT predicts in the normalised frame (its GT is divided by avg_scale)
        valid = gt["valid"]
        pts = torch.where(valid[..., None], gt["pts3d"], torch.zeros_like(gt["pts3d"]))
        avg = pts.norm(dim=-1).flatten(1).sum(1) / (valid.flatten(1).sum(1) + 1e-3)
        perfect = _pred_from_gt(gt, batch, scale=1.0)
        perfect.pts3d = gt["pts3d"] / avg.view(-1, 1, 1, 1, 1)
        perfect.depth = gt["depth"] / avg.view(-1, 1, 1, 1)
        perfect.cam2world = gt["rel_pose"].clone()
        perfect.cam2world[..., :3, 3] /= avg.view(-1, 1, 1)
    else:
        perfect = _pred_from_gt(gt, batch)
    best, stats = replay_loss(family, perfect, batch)
    assert torch.isfinite(best)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        noisy = _pred_from_gt(gt, batch)
        noisy.pts3d = perfect.pts3d + 0.05 * torch.randn(perfect.pts3d.shape, generator=g)
        noisy.depth = perfect.depth
        noisy.cam2world = perfect.cam2world
        worse, _ = replay_loss(family, noisy, batch)
        assert float(worse) > float(best) + 1e-4
    if family in ("dust3r", "mast3r", "cut3r"):  # only the -alpha log conf term is left
        n_terms = {"dust3r": 2, "mast3r": 2, "cut3r": 2}[family]
        torch.testing.assert_close(best, torch.tensor(-0.2 * torch.log(torch.tensor(1.5)).item() * n_terms), atol=2e-5, rtol=0)


def test_dust3r_replay_is_scale_invariant_but_mast3r_metric_is_not():
    batch = _views_batch()
    gt = views_ground_truth(batch)
    d_ref, _ = replay_loss("dust3r", _pred_from_gt(gt, batch), batch)
    d_scaled, _ = replay_loss("dust3r", _pred_from_gt(gt, batch, scale=3.0), batch)
    torch.testing.assert_close(d_scaled, d_ref, atol=1e-5, rtol=0)
    m_ref, _ = replay_loss("mast3r", _pred_from_gt(gt, batch), batch)
    m_scaled, _ = replay_loss("mast3r", _pred_from_gt(gt, batch, scale=3.0), batch)
    assert float(m_scaled) > float(m_ref) + 0.1
    batch["depth_kind"] = ["scale"] * 2  # non-metric samples: MASt3R falls back to avg_dis
    m_rel, _ = replay_loss("mast3r", _pred_from_gt(gt, batch, scale=3.0), batch)
    torch.testing.assert_close(m_rel, d_ref, atol=1e-5, rtol=0)


def test_cut3r_pose_term_sees_a_wrong_pose():
    batch = _views_batch()
    gt = views_ground_truth(batch)
    ok, stats = replay_loss("cut3r", _pred_from_gt(gt, batch), batch)
    assert stats["pose"] < 1e-5
    bad = _pred_from_gt(gt, batch)
    bad.cam2world = invert_rigid(bad.cam2world)
    worse, stats = replay_loss("cut3r", bad, batch)
    assert stats["pose"] > 0.1 and float(worse) > float(ok)


def test_replay_rejects_unknown_family_and_wrong_shapes():
    batch = _views_batch()
    gt = views_ground_truth(batch)
    with pytest.raises(InputError, match="unknown model family"):
        replay_loss("no_such_family", _pred_from_gt(gt, batch), batch)
    pred = _pred_from_gt(gt, batch)
    pred.pts3d = pred.pts3d[:, :1]
    with pytest.raises(InputError, match="does not match"):
        replay_loss("dust3r", pred, batch)
