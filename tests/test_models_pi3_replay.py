"""π3 replay: its own training loss against the official ``Pi3Loss`` (golden fixture), and its parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fin3r.errors import InputError
from fin3r.losses import views_ground_truth
from fin3r.models.base import ViewsPrediction
from fin3r.models.pi3.replay import l1_scale, pi3_criterion, pi3_replay_loss, resample_valid

FIXTURE = Path(__file__).parent / "fixtures" / "pi3_loss.safetensors"


def fixture_batch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    f = load_file(str(FIXTURE))
    batch = {"depth": f["depth"], "valid": f["valid"].bool(), "K": f["K"], "cam2world": f["cam2world"]}
    return f, batch


def test_criterion_matches_the_official_loss():
    f, batch = fixture_batch()
    loss, stats = pi3_criterion(f["pred_local_points"], f["pred_camera_poses"], views_ground_truth(batch))
    assert abs(stats["local"] - f["local_pts_loss_hq"].item()) < 1e-6
    assert abs(stats["normal"] - f["normal_loss_hq"].item()) < 1e-6
    assert abs(stats["camera_trans"] - f["trans_loss_hq"].item()) < 1e-6
    assert abs(stats["camera_rot"] - f["rot_loss_hq"].item()) < 1e-5
    assert abs(loss.item() - f["total_hq"].item()) < 1e-5
    # the terms are visible: each one moves the total
    no_normal, _ = pi3_criterion(f["pred_local_points"], f["pred_camera_poses"], views_ground_truth(batch),
                                 normal_weight=0.0)
    assert loss.item() - no_normal.item() > 1e-3


def test_loss_is_scale_invariant_and_differentiable():
    f, batch = fixture_batch()
    gt = views_ground_truth(batch)
    local = f["pred_local_points"].clone().requires_grad_(True)
    poses = f["pred_camera_poses"].clone()
    base, _ = pi3_criterion(local, poses, gt)
    scaled_poses = poses.clone()
    scaled_poses[..., :3, 3] *= 3.0
    scaled, _ = pi3_criterion(local * 3.0, scaled_poses, gt)
    assert abs(base.item() - scaled.item()) < 1e-5
    base.backward()
    assert local.grad is not None and local.grad.abs().sum() > 0


def test_l1_scale_is_the_weighted_l1_minimiser():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=g)
    y = 2.5 * x + 0.3 * torch.randn(3, 50, generator=g)
    w = torch.rand(3, 50, generator=g)
    a = l1_scale(x, y, w)
    grid = torch.linspace(1.5, 3.5, 20001)
    cost = (w[:, None] * (grid[None, :, None] * x[:, None] - y[:, None]).abs()).sum(-1)
    best = grid[cost.argmin(dim=1)]
    assert torch.allclose(a, best, atol=2e-4)


def test_resample_valid_picks_evenly_spaced_valid_entries():
    values = torch.arange(10.0).reshape(1, 2, 5, 1)
    valid = torch.tensor([[[True, False, True, True, False], [True, True, False, False, True]]])
    picked = resample_valid(values, valid, count=4)[:, 0]
    assert picked.tolist() == [0.0, 2.0, 5.0, 6.0]  # valid 0 2 3 5 6 9; positions 0, 1.5, 3, 4.5 floored
    assert resample_valid(values, torch.zeros_like(valid), count=3).tolist() == [[1.0]] * 3


def test_confidence_term_is_bce_against_the_within_threshold_target():
    f, batch = fixture_batch()
    gt = views_ground_truth(batch)
    args = (f["pred_local_points"], f["pred_camera_poses"], gt)
    plain, _ = pi3_criterion(*args)
    confident = torch.full(batch["valid"].shape, 5.0)
    loss, stats = pi3_criterion(*args, conf_logits=confident)
    # a pixel's target is 1 only within 0.02; these predictions are mostly farther, so high logits cost
    assert stats["conf"] > 1.0
    assert abs(loss.item() - (plain.item() + 0.05 * stats["conf"])) < 1e-5
    low, low_stats = pi3_criterion(*args, conf_logits=-confident)
    assert low_stats["conf"] < stats["conf"]


def test_one_view_has_no_camera_term_and_replay_needs_local_points():
    f, batch = fixture_batch()
    one = {k: v[:, :1] for k, v in batch.items()}
    gt = views_ground_truth(one)
    loss, stats = pi3_criterion(f["pred_local_points"][:, :1], f["pred_camera_poses"][:, :1], gt)
    assert torch.isfinite(loss) and "camera_rot" not in stats
    pred = ViewsPrediction(pts3d=gt["pts3d"], conf=torch.ones(gt["valid"].shape))
    with pytest.raises(InputError, match="local points"):
        pi3_replay_loss(pred, one)
