"""fin3r.eval.cut3r_depth: CUT3R's depth protocol against numbers from its official code."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fin3r.eval import alignment as al
from fin3r.eval.cut3r_depth import (
    CUT3R_METRICS,
    Cut3rDepthSettings,
    cut3r_depth_metrics,
    pixel_weighted_mean,
    resize_cubic,
)
from fin3r.eval.mono_scoring import MonoGT, score_mono

FIXTURE = Path(__file__).parent / "fixtures" / "eval_cut3r_depth.safetensors"
ALIGN = {"align_with_scale": "scale", "align_with_lad2": "scale&shift", "metric_scale": "metric"}


def test_golden_numbers_from_official_cut3r():
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    tensors = load_file(str(FIXTURE))
    with safetensors.safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    cases = sorted({k.split(".")[0] for k in tensors})
    assert len(cases) == 8
    for name in cases:
        kw = json.loads(meta[f"{name}.kwargs"])
        align = next((v for k, v in ALIGN.items() if kw.get(k)), "median")
        settings = Cut3rDepthSettings(max_depth=kw.get("max_depth"), post_clip_max=kw.get("post_clip_max"))
        mask = tensors.get(f"{name}.custom_mask")
        out = cut3r_depth_metrics(tensors[f"{name}.pred"], tensors[f"{name}.gt"], align, settings, mask=mask)
        want = tensors[f"{name}.values"]
        got = torch.tensor([out[k] for k in CUT3R_METRICS] + [out["valid_pixels"]], dtype=torch.float64)
        # Adam's path accumulates float32 rounding; everything else is the same arithmetic
        tol = 1e-5 if align == "scale&shift" else 1e-9
        assert torch.allclose(got, want, rtol=tol, atol=tol), (name, got, want)


def test_flipped_sign_pixel_is_an_outlier_under_cut3r_and_an_inlier_under_moge():
    gt = torch.full((4, 5), 2.0)
    pred = gt.clone()
    pred[1, 2] = -2.0  # one flipped sign: ratio -1 under MoGe's delta, clamped to 1e-5 under CUT3R's
    mask = torch.ones(4, 5, dtype=torch.bool)
    cut3r = cut3r_depth_metrics(pred, gt.double(), "metric")
    assert cut3r["delta1"] == pytest.approx(19 / 20)
    moge = score_mono({"depth_metric": pred}, MonoGT(gt, mask), variants=["depth_metric"])
    assert moge["depth_metric"]["delta1"] == 1.0
    # the same through fin3r's depth_median variant, which follows CUT3R
    med = score_mono({"depth_scale_invariant": pred}, MonoGT(gt, mask), variants=["depth_median"])
    assert med["depth_median"]["delta1"] == pytest.approx(19 / 20)


def test_cut3r_conventions_mask_epsilon_and_lower_median():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, -1.0, 80.0], dtype=torch.float64)
    pred = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0], dtype=torch.float32)
    out = cut3r_depth_metrics(pred, gt, "median", Cut3rDepthSettings(max_depth=70.0))
    assert out["valid_pixels"] == 4  # gt > 0 and gt < max_depth
    assert out["scale"] == 2.0  # torch.median's lower middle of (1, 2, 3, 4), not 2.5
    assert out["rel"] == pytest.approx(np.mean([1, 0, 1 / 3, 2 / 4]), abs=0)  # no epsilon
    inf_gt = torch.tensor([1.0, float("inf")], dtype=torch.float64)
    assert cut3r_depth_metrics(torch.ones(2), inf_gt, "metric")["valid_pixels"] == 2  # +inf is valid
    empty = cut3r_depth_metrics(torch.ones(3), torch.zeros(3, dtype=torch.float64), "median")
    assert empty["valid_pixels"] == 0 and empty["rel"] == 0.0


def test_equal_prediction_is_perfect_and_post_clip_applies():
    gt = torch.rand(6, 7, dtype=torch.float64) * 100 + 1
    for align in ("median", "scale", "metric"):
        out = cut3r_depth_metrics(gt.float() * (1.0 if align == "metric" else 3.0), gt, align)
        assert out["rel"] < 1e-6 and out["delta1"] == 1.0 and out["delta0"] == 0.0
    clipped = cut3r_depth_metrics(gt.float(), gt, "metric", Cut3rDepthSettings(post_clip_max=70.0))
    far = gt > 70
    assert clipped["rel"] == pytest.approx(((gt[far] - 70) / gt[far]).sum().item() / gt.numel(), rel=1e-5)


def test_irls_scale_approaches_the_absolute_l1_optimum():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(300, generator=g, dtype=torch.float64) * 10 + 1
    pred = (gt * 0.5 * torch.exp(torch.randn(300, generator=g, dtype=torch.float64) * 0.1)).float()
    s = al.irls_l1_scale(pred, gt)
    exact, best, _ = al.weighted_l1_scale(pred.double(), gt, torch.ones_like(gt))
    assert float(s) == pytest.approx(float(exact), rel=5e-3)  # 10 IRLS steps: close, not exact
    assert (s * pred - gt).abs().sum().item() == pytest.approx(best.item(), rel=1e-3)
    assert al.irls_l1_scale(pred, -gt).item() == 1e-3  # clamped


def test_pixel_weighted_mean_is_not_the_per_image_mean():
    recs = [{"rel": 0.1, "valid_pixels": 300}, {"rel": 0.4, "valid_pixels": 100}, {"rel": 9.0, "valid_pixels": 0}]
    agg = pixel_weighted_mean(recs, ["rel"])
    assert agg["rel"] == pytest.approx((0.1 * 300 + 0.4 * 100) / 400)
    assert agg["valid_pixels"] == 400


def test_resize_cubic_is_opencv_bicubic():
    import cv2

    x = np.random.default_rng(0).random((5, 9)).astype(np.float32)
    y = resize_cubic(torch.from_numpy(x), (12, 20))
    assert y.shape == (12, 20)
    assert np.array_equal(y.numpy(), cv2.resize(x, (20, 12), interpolation=cv2.INTER_CUBIC))
