"""Relative pose: pair-list readers (SuperGlue txt, LoFTR npz, RoMa npz), solvers, evaluation loop."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.errors import InputError
from fin3r.eval.metrics import pose_errors
from fin3r.eval.relpose import (
    Pair, RelposeConfig, evaluate_relpose, load_pairs, mutual_nn_matches, solve_essential, solve_pnp,
    write_superglue_pairs,
)  # fmt: skip


def _rot(axis, deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    C = 1 - c
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])  # fmt: skip


def _T(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])


def _img(path, H=48, W=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def test_superglue_loftr_and_roma_layouts(tmp_path):
    T = _T(_rot([0, 1, 0], 10), [0.3, 0, 0.1])
    sg = tmp_path / "sg"
    _img(sg / "a/0.jpg")
    _img(sg / "a/1.jpg")
    write_superglue_pairs(sg / "pairs.txt", [Pair("a/0.jpg", "a/1.jpg", sg / "a/0.jpg", sg / "a/1.jpg", K, 2 * K, T)])
    (p,) = load_pairs(sg)
    assert np.allclose(p.T_0to1, T) and np.allclose(p.K1, 2 * K) and p.path0 == sg / "a/0.jpg"

    lo = tmp_path / "loftr"
    c0, c1 = _T(_rot([0, 0, 1], 5), [1, 2, 3]), _T(_rot([1, 0, 0], 7), [1.5, 2, 3])
    for f, c in ((10, c0), (20, c1)):
        (lo / "scene0707_00/pose").mkdir(parents=True, exist_ok=True)
        np.savetxt(lo / f"scene0707_00/pose/{f}.txt", c)
    np.savez(lo / "test.npz", name=np.array([[707, 0, 10, 20]]))
    np.savez(lo / "intrinsics.npz", scene0707_00=K)
    (p,) = load_pairs(lo)
    assert np.allclose(p.T_0to1, np.linalg.inv(c1) @ c0) and p.K_size == (480, 640)
    assert p.name0 == "scene0707_00/color/10.jpg"

    ro = tmp_path / "roma"
    (ro / "scene0707_00/intrinsic").mkdir(parents=True)
    np.savetxt(ro / "scene0707_00/intrinsic/intrinsic_color.txt", np.pad(K, ((0, 1), (0, 1))))
    np.savez(ro / "test.npz", name=np.array([[707, 0, 10, 20]]), rel_pose=T[:3].reshape(1, 12))
    (p,) = load_pairs(ro)
    assert np.allclose(p.T_0to1, T) and np.allclose(p.K0, K)

    (lo / "scene0707_00/pose/20.txt").unlink()
    with pytest.raises(InputError, match=r"benchmark loftr: missing file .*pose/20.txt"):
        load_pairs(lo)
    with pytest.raises(InputError, match="no pair list"):
        load_pairs(tmp_path / "sg" / "a")


def _scene_points(T, H=48, W=64, seed=0):
    """View 1's points on its pixel grid expressed in camera 0 (a random depth map)."""
    rng = np.random.default_rng(seed)
    depth = 2 + rng.random((H, W))
    vv, uu = np.mgrid[0:H, 0:W]
    rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu, dtype=float)], -1)
    X1 = rays * depth[..., None]
    Ti = np.linalg.inv(T)
    return X1 @ Ti[:3, :3].T + Ti[:3, 3]


def test_pnp_recovers_the_exact_pose():
    T = _T(_rot([0.2, 1, 0.1], 12), [0.4, -0.1, 0.2])
    est = solve_pnp(_scene_points(T), K)
    e = pose_errors(torch.as_tensor(est), torch.as_tensor(T))
    assert e["rot"].item() < 1e-3 and e["trans"].item() < 1e-2


def test_essential_recovers_rotation_and_direction_up_to_sign():
    T = _T(_rot([0, 1, 0.3], 8), [0.5, 0.05, 0.1])
    rng = np.random.default_rng(1)
    X0 = np.concatenate([rng.uniform(-1, 1, (200, 2)), rng.uniform(2, 4, (200, 1))], 1)
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    Kr = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])  # a real-size camera: 0.5 px is tight
    k0 = X0[:, :2] / X0[:, 2:] * 500 + Kr[:2, 2]
    k1 = X1[:, :2] / X1[:, 2:] * 500 + Kr[:2, 2]
    est = solve_essential(k0, k1, Kr, Kr)
    e = pose_errors(torch.as_tensor(est), torch.as_tensor(T), symmetric=True)
    assert e["rot"].item() < 0.1 and e["trans"].item() < 0.5
    assert np.isnan(solve_essential(k0[:3], k1[:3], Kr, Kr)).all()  # too few matches: a failure


def test_mutual_nn_on_identical_maps_matches_every_grid_point():
    f = torch.nn.functional.normalize(torch.randn(32, 48, 8), dim=-1)
    uv0, uv1 = mutual_nn_matches(f, f, stride=8)
    assert len(uv0) == 4 * 6 and np.array_equal(uv0, uv1)


class _OracleCams(torch.nn.Module):
    """A stand-in model whose camera head returns the GT poses of the pair it was given."""

    family, patch_size = "vggt", 16

    def __init__(self, poses):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.poses = poses  # list of T_0to1 in pair order
        self.i = 0

    def predict_views(self, imgs):
        from fin3r.models.base import ViewsPrediction

        T = torch.as_tensor(self.poses[self.i], dtype=torch.float32)
        self.i += 1
        c2w = torch.stack([torch.eye(4), torch.linalg.inv(T)])[None]  # camera 1 in camera-0 frame
        B, S, _, H, W = imgs.shape
        return ViewsPrediction(pts3d=torch.zeros(B, S, H, W, 3), conf=torch.ones(B, S, H, W), cam2world=c2w)


def test_evaluate_relpose_with_oracle_cameras_is_perfect_and_reports_sign_handling(tmp_path):
    root = tmp_path / "bench"
    pairs = []
    for i in range(3):
        _img(root / f"c/{i}_0.jpg")
        _img(root / f"c/{i}_1.jpg")
        T = _T(_rot([0, 1, 0], 3 + i), [0.2, 0.0, 0.05 * i])
        pairs.append(Pair(f"c/{i}_0.jpg", f"c/{i}_1.jpg", root / f"c/{i}_0.jpg", root / f"c/{i}_1.jpg", K, K, T))
    write_superglue_pairs(root / "pairs.txt", pairs)
    model = _OracleCams([p.T_0to1 for p in pairs])
    res = evaluate_relpose(model, tmp_path, "bench", out_dir=tmp_path / "out", progress=False,
                           config=RelposeConfig(solver="cameras"))
    s = res["benchmarks"]["bench"]
    assert s["auc@5"] == pytest.approx(1.0, abs=1e-3) and s["num_failed"] == 0
    assert "signed" in res["translation_sign"] and (tmp_path / "out/relpose_pairs.csv").is_file()
    assert len(res["records"]["bench"]) == 3 and res["records"]["bench"][0]["rot"] < 1e-2


def test_tiny_models_run_every_solver(tmp_path):
    from fin3r.eval.world_benchmarks import export_world_benchmarks
    from fin3r.models import build_model

    torch.manual_seed(0)
    export_world_benchmarks(tmp_path, num_pairs=1, height=32, width=48, tasks=("relpose",))
    for name, solver in (("dust3r_tiny", "pnp"), ("mast3r_tiny", "essential"), ("vggt_tiny", "cameras")):
        res = evaluate_relpose(build_model(name).eval(), tmp_path, "world_pairs", progress=False,
                               config=RelposeConfig(solver=solver))
        s = res["benchmarks"]["world_pairs"]
        assert s["num_pairs"] == 1 and 0 <= s["auc@20"] <= 1
    with pytest.raises(InputError, match="camera head"):
        evaluate_relpose(build_model("dust3r_tiny").eval(), tmp_path, "world_pairs", progress=False,
                         config=RelposeConfig(solver="cameras"))
