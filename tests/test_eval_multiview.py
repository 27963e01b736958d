"""Scene readers (7-Scenes, NRGBD, ScanNet), multi-view depth and point-map evaluation."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.errors import InputError
from fin3r.eval.mvdepth import MultiViewConfig, evaluate_mvdepth
from fin3r.eval.pointmap import align_pointmaps_median, evaluate_pointmap
from fin3r.eval.registration import icp_point_to_point
from fin3r.eval.scenes import list_scenes, load_frame, read_scene, write_7scenes_frame


def _png16(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)


def _rgb(path, H=12, W=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)


def test_7scenes_layout_round_trip_and_invalid_depth(tmp_path):
    depth = torch.full((12, 16), 2.5)
    valid = torch.ones(12, 16, dtype=torch.bool)
    valid[0, 0] = False
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    for i in range(3):
        write_7scenes_frame(tmp_path / "sc", i, torch.rand(3, 12, 16), depth, valid, c2w)
    frames = read_scene(tmp_path, "sc", "7scenes")
    assert [f.name for f in frames] == ["seq-01/frame-000000", "seq-01/frame-000001", "seq-01/frame-000002"]
    assert frames[0].K[0, 0] == 525.0  # the 7-Scenes default intrinsics
    f = load_frame(frames[1])
    assert f["depth"][1, 1] == pytest.approx(2.5) and not f["valid"][0, 0] and f["depth"][0, 0] == 0
    assert torch.allclose(f["cam2world"], c2w)
    (tmp_path / "sc/seq-01/frame-000002.pose.txt").unlink()
    with pytest.raises(InputError, match=r"benchmark .*: missing file .*frame-000002.pose.txt"):
        read_scene(tmp_path, "sc", "7scenes", bench="b")
    assert list_scenes(tmp_path) == ["sc"]


def test_nrgbd_gl_to_cv_and_nan_poses_and_scannet_layout(tmp_path):
    root = tmp_path / "nrgbd"
    poses = [np.eye(4), np.full((4, 4), np.nan), np.eye(4)]
    for i in range(3):
        _rgb(root / f"s/images/img{i}.png")
        _png16(root / f"s/depth/depth{i}.png", np.full((12, 16), 1500))
    np.savetxt(root / "s/poses.txt", np.concatenate(poses))
    frames = read_scene(root, "s", "nrgbd")
    assert [f.name for f in frames] == ["img0", "img2"]  # the NaN pose is skipped
    assert np.allclose(np.diag(frames[0].cam2world), [1, -1, -1, 1])  # y, z flipped (OpenGL -> OpenCV)
    assert frames[0].K[0, 0] == pytest.approx(554.2562584220408)
    assert load_frame(frames[0])["depth"][0, 0] == pytest.approx(1.5)

    sc = tmp_path / "scannet"
    _rgb(sc / "s/color/0.jpg", 24, 32)  # colour is resized to the depth resolution
    _png16(sc / "s/depth/0.png", np.full((12, 16), 800))
    (sc / "s/pose").mkdir(parents=True)
    np.savetxt(sc / "s/pose/0.txt", np.eye(4))
    (sc / "s/intrinsic").mkdir()
    np.savetxt(sc / "s/intrinsic/intrinsic_depth.txt", np.diag([100.0, 100, 1, 1]))
    (frame,) = read_scene(sc, "s", "scannet")
    f = load_frame(frame)
    assert f["img"].shape == (3, 12, 16) and f["K"][0, 0] == 100


def test_alignment_icp_and_normals_known_answers():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 8, 10, 3, generator=g) + torch.tensor([0, 0, 5.0])
    valid = torch.ones(2, 8, 10, dtype=torch.bool)
    pred = (gt - torch.tensor([0, 0, 5.0])) * 0.3 + torch.tensor([0, 0, 1.0])  # z-shift + scale
    assert torch.allclose(align_pointmaps_median(pred, gt, valid), gt, atol=1e-4)

    pts = torch.rand(400, 3, generator=g)
    c, s = math.cos(0.05), math.sin(0.05)
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    T = icp_point_to_point(pts, pts @ R.T + torch.tensor([0.01, 0.0, 0.02]), threshold=0.1).float()
    assert torch.allclose(T[:3, :3], R, atol=1e-3) and torch.allclose(T[:3, 3], torch.tensor([0.01, 0, 0.02]), atol=1e-3)



class _OracleViews(torch.nn.Module):
    """Predicts the GT points (view-0 frame) of the exported world scene it was given, up to a
    scale (and a z shift) -- which the protocols' alignments must remove."""

    family, patch_size = "vggt", 16

    def __init__(self, table, z_shift=0.0):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.table = table  # image-sum -> (depth, K, cam2world)
        self.z_shift = z_shift

    def predict_views(self, imgs):
        from fin3r.geometry import depth_to_points, invert_rigid, transform_points
        from fin3r.models.base import ViewsPrediction

        items = [self.table[round(float(x.sum()), 2)] for x in imgs[0]]
        depth = torch.stack([d for d, _, _ in items])
        K = torch.stack([k for _, k, _ in items])
        c2w = torch.stack([c for _, _, c in items])
        pts = transform_points(invert_rigid(c2w[0])[None] @ c2w, depth_to_points(depth, K))
        pts = 0.5 * pts + torch.tensor([0.0, 0.0, self.z_shift])
        return ViewsPrediction(pts3d=pts[None], conf=torch.ones(1, *depth.shape))


def test_oracle_scores_perfectly_on_an_exported_world_scene_set(tmp_path):
    from fin3r.eval.world_benchmarks import export_world_benchmarks

    export_world_benchmarks(tmp_path, num_scenes=1, views_per_scene=3, height=32, width=48, tasks=("multiview",))
    table = {}
    for fr in read_scene(tmp_path / "world_scenes", "scene_00", "7scenes"):
        f = load_frame(fr)
        table[round(float(f["img"].sum()), 2)] = (f["depth"], f["K"], f["cam2world"])
    cfg = MultiViewConfig(num_views=3, icp_threshold=0.0)
    mv = evaluate_mvdepth(_OracleViews(table), tmp_path, "world_scenes", config=cfg, progress=False)
    s = mv["benchmarks"]["world_scenes"]
    assert s["num_views_scored"] == 3 and s["inliers103"] > 0.99 and s["absrel"] < 1e-3
    pm = evaluate_pointmap(_OracleViews(table, z_shift=0.2), tmp_path, "world_scenes", out_dir=tmp_path / "out", config=cfg, progress=False)
    s = pm["benchmarks"]["world_scenes"]
    assert s["acc"] < 1e-3 and s["comp"] < 1e-3 and s["nc"] > 0.99 and s["num_reconstructions"] == 1
    assert (tmp_path / "out/pointmap.json").is_file()


def test_tiny_pairwise_model_runs_both_protocols(tmp_path):
    from fin3r.eval.world_benchmarks import export_world_benchmarks
    from fin3r.models import build_model

    torch.manual_seed(0)
    export_world_benchmarks(tmp_path, num_scenes=1, views_per_scene=3, height=32, width=48, tasks=("multiview",))
    model = build_model("dust3r_tiny").eval()
    mv = evaluate_mvdepth(model, tmp_path, "world_scenes", progress=False)
    assert mv["benchmarks"]["world_scenes"]["num_views_scored"] == 3
    pm = evaluate_pointmap(model, tmp_path, "world_scenes", progress=False, config=MultiViewConfig(icp_threshold=0.05))
    s = pm["benchmarks"]["world_scenes"]
    assert s["num_reconstructions"] == 2 and all(math.isfinite(s[k]) for k in ("acc", "comp", "nc"))


class _OraclePairs(_OracleViews):
    """A pairwise (DUSt3R-family) oracle: each pair's exact GT point maps in its first view's frame,
    times a different scale per pair -- the global alignment must make one scene of them."""

    family = "dust3r"

    def predict_views(self, imgs):
        from fin3r.models.base import ViewsPrediction

        assert imgs.shape[1] == 2
        preds = [_OracleViews.predict_views(self, pair[None]) for pair in imgs]
        scales = torch.tensor([1.0 + 0.37 * k for k in range(len(preds))])[:, None, None, None, None]
        pts = torch.cat([p.pts3d for p in preds]) * scales
        valid = torch.stack([torch.stack([self.table[round(float(x.sum()), 2)][0] > 0 for x in pair]) for pair in imgs])
        return ViewsPrediction(pts3d=pts, conf=1 + 4 * valid.float())  # no weight where there is no GT (sky)


def test_pairwise_model_beyond_pairs_goes_through_the_global_alignment(tmp_path, monkeypatch):
    """DUSt3R/MASt3R with num_views = 4: pairs -> global alignment -> scored like any multi-view
    model; exact pair predictions give (near-)exact depth and point maps. The world's principal
    point is the pixel-grid centre ((W - 1) / 2), DUSt3R's is W / 2: the alignment is told."""
    from fin3r.align import AlignConfig, OptimizerConfig
    from fin3r.eval.world_benchmarks import export_world_benchmarks

    export_world_benchmarks(tmp_path, num_scenes=1, views_per_scene=4, height=32, width=48, tasks=("multiview",))
    table = {}
    for fr in read_scene(tmp_path / "world_scenes", "scene_00", "7scenes"):
        f = load_frame(fr)
        table[round(float(f["img"].sum()), 2)] = (f["depth"], f["K"], f["cam2world"])
    cfg = MultiViewConfig(num_views=4, icp_threshold=0.0, align_iters=60)
    assert cfg.align_config().optimizer.niter == 60
    monkeypatch.setattr(MultiViewConfig, "align_config", lambda self: AlignConfig(
        optimizer=OptimizerConfig(niter=self.align_iters, principal_point=(23.5, 15.5))))
    mv = evaluate_mvdepth(_OraclePairs(table), tmp_path, "world_scenes", config=cfg, progress=False)
    s = mv["benchmarks"]["world_scenes"]
    assert s["num_views_scored"] == 4 and s["inliers103"] > 0.999 and s["absrel"] < 2e-3
    pm = evaluate_pointmap(_OraclePairs(table), tmp_path, "world_scenes", config=cfg, progress=False)
    s = pm["benchmarks"]["world_scenes"]
    assert s["num_reconstructions"] == 1 and s["acc"] < 5e-3 and s["comp"] < 5e-3 and s["nc"] > 0.98, s
