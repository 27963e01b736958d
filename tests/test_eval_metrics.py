"""fin3r.eval.metrics / alignment / mono_scoring: known answers, brute force, MoGe golden numbers."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from fin3r.eval import alignment as al
from fin3r.eval import metrics as mt
from fin3r.eval.mono_scoring import MonoGT, score_mono

FIXTURE = Path(__file__).parent / "fixtures" / "eval_moge_metrics.safetensors"


def _points(depth, fx=0.8, fy=1.0):
    H, W = depth.shape
    u = (torch.arange(W) + 0.5) / W
    v = (torch.arange(H) + 0.5) / H
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([(uu - 0.5) / fx * depth, (vv - 0.5) / fy * depth, depth], -1)


def _scene(seed=0, H=40, W=56, frac=0.8):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(H, W, generator=g) * 9 + 1
    mask = torch.rand(H, W, generator=g) < frac
    return depth, mask, _points(depth)


# --- solvers ---------------------------------------------------------------------------------


def test_weighted_l1_scale_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 7, 50):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        y = torch.randn(n, generator=g, dtype=torch.float64)
        w = torch.rand(n, generator=g, dtype=torch.float64)
        a, loss, idx = al.weighted_l1_scale(x, y, w)
        cands = y / x  # the optimum is one of the ratios
        obj = (w[None] * (cands[:, None] * x[None] - y[None]).abs()).sum(-1)
        assert loss.item() == pytest.approx(obj.min().item(), rel=1e-9)
        assert a.item() == pytest.approx((y[idx] / x[idx]).item())


def test_weighted_l1_affine_reaches_brute_force_objective():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(25, generator=g, dtype=torch.float64) * 5
    y = 2 * x + 1 + torch.randn(25, generator=g, dtype=torch.float64) * 0.3
    w = torch.rand(25, generator=g, dtype=torch.float64)
    a, b = al.weighted_l1_affine(x, y, w)
    best = math.inf
    for i, j in itertools.combinations(range(25), 2):
        s = (y[j] - y[i]) / (x[j] - x[i])
        t = y[i] - s * x[i]
        best = min(best, (w * (s * x + t - y).abs()).sum().item())
    assert (w * (a * x + b - y).abs()).sum().item() == pytest.approx(best, rel=1e-9)


def test_points_scale_shift_and_umeyama_recover_known_transform():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(60, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    s, t = al.weighted_l1_points_scale_shift(p, 2.5 * p + shift, torch.ones(60, dtype=torch.float64))
    assert s.item() == pytest.approx(2.5) and torch.allclose(t, shift)
    R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64)).Q
    R = R * torch.det(R)  # proper rotation
    s, Rf, tf = al.umeyama_sim3(p, 0.7 * p @ R.T + shift)
    assert s.item() == pytest.approx(0.7, rel=1e-5)
    assert torch.allclose(Rf.double(), R, atol=1e-5) and torch.allclose(tf.double(), shift, atol=1e-5)


def test_median_scale_is_lower_middle():
    assert al.median_scale(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 6.0, 8.0])).item() == 2.0


def test_sample_index_covers_only_valid_pixels():
    depth, mask, _ = _scene(frac=0.2)
    sm, si = al.alignment_sample_index(mask)
    assert sm.shape == (64, 64) and bool(mask.reshape(-1)[si[sm]].all())
    sm, _ = al.alignment_sample_index(torch.zeros(10, 10, dtype=torch.bool))
    assert not sm.any()


# --- MoGe variants: known answers ---------------------------------------------------------


def test_prediction_equal_to_gt_is_perfect_in_every_variant():
    depth, mask, pts = _scene()
    pred = {"depth_metric": depth, "points_metric": pts}
    out = score_mono(pred, MonoGT(depth, mask, pts, is_metric=True), full=True)
    assert set(out) == {
        "depth_metric", "depth_scale_invariant", "depth_affine_invariant",
        "disparity_affine_invariant", "depth_median", "points_metric",
        "points_scale_invariant", "points_affine_invariant",
    }  # fmt: skip
    for var, m in out.items():
        assert m["rel"] == pytest.approx(0, abs=1e-5), var
        assert m["delta1"] == 1.0, var


def test_each_alignment_removes_exactly_its_own_ambiguity():
    depth, mask, pts = _scene(seed=4)
    gt = MonoGT(depth, mask, pts, is_metric=True)
    scaled = score_mono({"depth_metric": 3.7 * depth}, gt)
    assert scaled["depth_metric"]["rel"] == pytest.approx(2.7, rel=1e-4)
    for var in ("depth_scale_invariant", "depth_affine_invariant", "depth_median", "disparity_affine_invariant"):
        assert scaled[var]["rel"] < 1e-5, var
    shifted = score_mono({"depth_affine_invariant": 3.7 * depth + 2.0, "depth_scale_invariant": 3.7 * depth + 2.0}, gt)
    assert shifted["depth_affine_invariant"]["rel"] < 1e-5
    assert shifted["depth_scale_invariant"]["rel"] > 0.02 and shifted["depth_median"]["rel"] > 0.02
    assert shifted["disparity_affine_invariant"]["rel"] > 0.02
    disp = score_mono({"disparity_affine_invariant": 0.5 / depth + 0.1}, gt)
    assert disp["disparity_affine_invariant"]["rel"] < 1e-4
    assert "depth_scale_invariant" not in disp  # no depth prediction to fall back on
    p = score_mono({"points_scale_invariant": 2 * pts + torch.tensor([0.0, 0.0, 1.0])}, gt)
    assert p["points_affine_invariant"]["rel"] < 1e-5 and p["points_scale_invariant"]["rel"] > 0.01
    p = score_mono({"points_metric": pts + torch.tensor([0.5, 0.0, 0.0])}, gt)
    assert p["points_metric"]["rel"] < 1e-5 and p["points_scale_invariant"]["rel"] > 0.01


def test_non_metric_gt_skips_metric_variants_and_edges_reported():
    depth, mask, pts = _scene()
    edge = torch.zeros_like(mask)
    edge[:, :5] = True
    out = score_mono({"depth_metric": depth * 1.1}, MonoGT(depth, mask, pts, is_metric=False, edge=edge))
    assert "depth_metric" not in out and "points_metric" not in out
    assert out["depth_scale_invariant"]["rel_edge"] == pytest.approx(0, abs=1e-5)


def test_delta_counts_negative_predictions_like_moge():
    gt = torch.tensor([1.0, 1.0])
    assert mt.delta1(torch.tensor([-1.0, 3.0]), gt) == 0.5


def test_golden_numbers_from_official_moge():
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    tensors = load_file(str(FIXTURE))
    with safetensors.safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    for c in range(3):
        depth = tensors[f"case{c}.depth"]
        mask = tensors[f"case{c}.mask"].bool()
        noise = tensors[f"case{c}.noise"]
        H, W = depth.shape
        fx, fy = 0.8, 0.8 * W / H
        pts = _points(depth, fx, fy)
        sm, si = al.alignment_sample_index(mask)
        assert torch.equal(sm, tensors[f"case{c}.sample_mask"].bool())
        assert torch.equal(si[sm], tensors[f"case{c}.sample_index"].long()[sm])
        pd = depth * noise * 2.7 + 0.3
        pp = pts * noise[..., None] * 1.9 + torch.tensor([0.1, -0.2, 0.05])
        preds = {
            "scale": {"depth_scale_invariant": pd},
            "metric": {"depth_metric": pd, "points_metric": pp},
            "disp": {"disparity_affine_invariant": 1 / pd},
            "points": {"points_scale_invariant": pp},
        }
        for name, pred in preds.items():
            out = score_mono(pred, MonoGT(depth, mask, pts, is_metric=True))
            keys = json.loads(meta[f"case{c}.{name}.keys"])
            want = tensors[f"case{c}.{name}.values"]
            got = [out[k.rsplit(".", 1)[0]][k.rsplit(".", 1)[1]] for k in keys]
            assert torch.allclose(torch.tensor(got), want, atol=2e-5), (c, name, keys)


# --- pose ------------------------------------------------------------------------------------


def test_pose_auc_matches_hand_computed_curve():
    # errors 1, 3, 6 and a failure: recall steps of 1/4
    auc5, auc10 = mt.pose_auc([1.0, 3.0, 6.0, math.inf], (5, 10))
    # area up to 5: trapezoids (0,0)-(1,.25)-(3,.5)-(5,.5) = .125 + .75 + 1.0
    assert auc5 == pytest.approx((0.125 + 0.75 + 1.0) / 5)
    assert auc10 == pytest.approx((0.125 + 0.75 + 1.875 + 3.0) / 10)
    assert mt.pose_auc([0.0] * 3, (5,)) == [1.0]
    assert mt.pose_auc([5.0], (5,)) == [0.0]  # an error equal to the threshold does not count


def test_pose_errors_and_sign_ambiguity():
    T = torch.eye(4)
    T[:3, 3] = torch.tensor([1.0, 0.0, 0.0])
    Tf = T.clone()
    Tf[:3, 3] = -Tf[:3, 3]
    e = mt.pose_errors(Tf, T)
    assert e["rot"].item() == pytest.approx(0, abs=1e-3) and e["trans"].item() == pytest.approx(180)
    assert mt.pose_errors(Tf, T, symmetric=True)["max"].item() == pytest.approx(0, abs=1e-3)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    assert mt.rotation_error_deg(R, torch.eye(3)).item() == pytest.approx(30, abs=1e-3)
    assert math.isinf(mt.pose_errors(torch.full((4, 4), math.nan), T)["max"].item())


# --- reconstruction / aggregation ------------------------------------------------------------


def test_accuracy_completeness_normal_consistency():
    g = torch.Generator().manual_seed(5)
    pts = torch.rand(300, 3, generator=g)
    n = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)
    out = mt.accuracy_completeness(pts, pts, n, -n)
    assert out["acc"] == 0 and out["comp"] == 0 and out["nc"] == pytest.approx(1)
    out = mt.accuracy_completeness(pts + torch.tensor([0.0, 0.0, 10.0]), pts)
    assert out["acc"] > 9 and out["comp"] > 9


def test_key_average_skips_missing_and_nan():
    avg = mt.key_average([{"a": {"rel": 1.0}}, {"a": {"rel": math.nan}, "b": {"rel": 3.0}}, {"a": {"rel": 2.0}}])
    assert avg == {"a": {"rel": 1.5}, "b": {"rel": 3.0}}


def test_refined_l1_fits_reach_the_full_enumeration_objective():
    g = torch.Generator().manual_seed(6)
    for trial in range(6):
        n = 300
        x = torch.rand(n, generator=g) * 5 + 0.5
        y = 1.7 * x + 0.4 + torch.randn(n, generator=g) * (0.05 + trial * 0.3)
        w = 1 / y.abs().clamp_min(0.1)
        obj = {}
        for method in ("refine", "enumerate"):
            a, b = al.weighted_l1_affine(x, y, w, method=method)
            obj[method] = (w * (a * x + b - y).abs()).sum().item()
        assert obj["refine"] == pytest.approx(obj["enumerate"], rel=1e-5, abs=1e-6)
        p = torch.randn(100, 3, generator=g) + torch.tensor([0, 0, 4.0])
        q = 1.3 * p + torch.tensor([0.2, 0.0, -0.5]) + torch.randn(100, 3, generator=g) * 0.1 * trial
        wp = 1 / q.norm(dim=-1)
        objp = {}
        for method in ("refine", "enumerate"):
            s, t = al.weighted_l1_points_scale_shift(p, q, wp, method=method)
            objp[method] = (wp[:, None] * (s * p + t - q).abs()).sum().item()
        assert objp["refine"] == pytest.approx(objp["enumerate"], rel=1e-5, abs=1e-6)


def test_nearest_neighbors_brute_force_and_kdtree_agree():
    g = torch.Generator().manual_seed(7)
    q, r = torch.rand(500, 3, generator=g), torch.rand(300, 3, generator=g)
    d, i = mt.nearest_neighbors(q, r, chunk=64, use_scipy=False)
    full = torch.cdist(q.double(), r.double())
    assert torch.equal(i, full.argmin(1)) and torch.allclose(d.double(), full.min(1).values)
    try:
        import scipy  # noqa: F401
    except ImportError:
        return
    d2, i2 = mt.nearest_neighbors(q, r, use_scipy=True)
    assert torch.equal(i2, i) and torch.allclose(d2, d)


# --- MoGe's boundary F1, fov_x, local points (golden, MoGe 0286b49) ---------------------------

EXTRA_FIXTURE = Path(__file__).parent / "fixtures" / "eval_moge_extra_metrics.safetensors"


def _pinhole_points(depth, K):
    H, W = depth.shape
    u = (torch.arange(W) + 0.5) / W
    v = (torch.arange(H) + 0.5) / H
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([(uu - K[0, 2]) / K[0, 0] * depth, (vv - K[1, 2]) / K[1, 1] * depth, depth], -1)


def test_boundary_fov_local_points_match_official_moge():
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from fin3r.eval.boundary import boundary_f1

    tensors = load_file(str(EXTRA_FIXTURE))
    with safetensors.safe_open(str(EXTRA_FIXTURE), "pt") as f:
        meta = f.metadata()
    seen = set()
    for c in range(2):
        depth, mask = tensors[f"case{c}.depth"], tensors[f"case{c}.mask"].bool()
        seg, noise = tensors[f"case{c}.seg"].long(), tensors[f"case{c}.noise"]
        H, W = depth.shape
        K = torch.tensor([[0.9, 0, 0.5], [0, 0.9 * W / H, 0.5], [0, 0, 1.0]])
        Kp = torch.tensor([[0.8, 0, 0.5], [0, 0.8 * W / H, 0.5], [0, 0, 1.0]])
        pd = torch.roll(depth, shifts=(1, 0), dims=(0, 1)) * noise * 1.7 + 0.2
        pts = _pinhole_points(depth, K)
        pp = _pinhole_points(pd, K) * 0.6 + torch.tensor([0.05, -0.1, 0.2])
        gt = MonoGT(depth, mask, pts, is_metric=True, intrinsics=K, segmentation=seg, segment_ids=[1, 2, 3, 4],
                    has_sharp_boundary=True)
        preds = {
            "scale": {"depth_scale_invariant": pd, "intrinsics": Kp},
            "metric": {"depth_metric": pd, "points_metric": pp},
            "disp": {"disparity_affine_invariant": 1 / pd},
            "points": {"points_scale_invariant": pp, "depth_scale_invariant": pd},
        }
        for name, pred in preds.items():
            out = score_mono(pred, gt)
            keys = json.loads(meta[f"case{c}.{name}.keys"])
            want = tensors[f"case{c}.{name}.values"]
            got = [out[k.rsplit(".", 1)[0]][k.rsplit(".", 1)[1]] for k in keys]
            assert torch.allclose(torch.tensor(got, dtype=torch.float64), want, atol=2e-5), (c, name, keys, got)
            assert set(out) - {"depth_median"} == {k.rsplit(".", 1)[0] for k in keys}
            seen |= {k.split(".")[0] for k in keys}
        got = [boundary_f1(tensors[f"case{c}.rand_pred"], tensors[f"case{c}.rand_gt"], mask, r) for r in (1, 2, 3)]
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), tensors[f"case{c}.rand_f1"], atol=1e-6)
    assert {"boundary", "fov_x", "local_points"} <= seen


def test_extra_metrics_known_answers():
    from fin3r.eval.boundary import boundary_f1

    depth, mask, pts = _scene(3)
    depth[10:20, 10:30] = 0.5  # a sharp step
    assert boundary_f1(depth * 2.5, depth, mask, 2) == pytest.approx(1.0)  # F1 = 1 for pred = gt (up to scale)
    K = torch.tensor([[0.5, 0, 0.5], [0, 0.7, 0.5], [0, 0, 1.0]])  # fov_x = 90 degrees
    K2 = K.clone()
    K2[0, 0] = 0.5 / math.tan(math.radians(30))  # fov_x = 60 degrees
    from fin3r.eval.mono_scoring import fov_x_errors

    assert fov_x_errors(K2, K) == pytest.approx({"mae": 30.0, "deviation": -30.0}, abs=1e-4)
    seg = torch.zeros_like(depth, dtype=torch.long)
    seg[:, 28:] = 1
    gt = MonoGT(depth, mask, _points(depth), segmentation=seg, has_sharp_boundary=True)
    out = score_mono({"points_scale_invariant": _points(depth) * 3.0 + 1.0}, gt, variants=["local_points"])
    assert out["local_points"]["rel"] < 1e-5 and out["local_points"]["delta1"] == 1.0  # scale + shift removed
