"""Global alignment of pairwise predictions (``fin3r.align``): pair graphs, camera recovery, the
spanning-tree initialisation and the optimiser -- against the synthetic world's ground truth and
against the official DUSt3R optimiser on the same pair predictions (golden fixture)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fin3r.align import AlignConfig, OptimizerConfig, PairPredictions, align_pairs, align_views, pair_graph
from fin3r.align.camera import estimate_focal, solve_pnp_ransac, weighted_similarity
from fin3r.align.init import init_from_spanning_tree, maximum_spanning_tree
from fin3r.align.optimizer import PointCloudAligner
from fin3r.errors import InputError
from fin3r.eval.alignment import umeyama_sim3
from fin3r.eval.metrics import rotation_error_deg as rotation_angle_deg
from fin3r.geometry import depth_to_points, invert_rigid, quaternion_to_matrix, transform_points

FIXTURE = Path(__file__).parent / "fixtures" / "dust3r_global_align.safetensors"


# --- pair graphs ----------------------------------------------------------------------------------
def _undirected(edges):
    assert set(edges) == {(j, i) for i, j in edges}, "not symmetrised"
    return {(i, j) for i, j in edges if i < j}


def test_pair_graphs_match_the_official_definitions():
    assert _undirected(pair_graph(4, "complete")) == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    assert len(pair_graph(8, "complete")) == 8 * 7
    # swin-2, cyclic: i with i+1, i+2 (mod n); non-cyclic stops at the end
    assert _undirected(pair_graph(5, "swin-2")) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (0, 3),
                                                    (0, 4), (1, 4)}  # 3-0, 4-0, 4-1 wrap around
    assert _undirected(pair_graph(6, "swin-2-noncyclic")) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4),
                                                              (3, 5), (4, 5)}
    assert len(_undirected(pair_graph(8, "swin"))) == 8 * 3  # default window 3
    # logwin-2 on 8: offsets 1, 2 both ways (cyclic) = swin-2 here; logwin-3 adds offset 4
    assert _undirected(pair_graph(8, "logwin-2")) == _undirected(pair_graph(8, "swin-2"))
    assert _undirected(pair_graph(8, "logwin-3")) - _undirected(pair_graph(8, "swin-2")) == {(i, i + 4) for i in range(4)}
    assert _undirected(pair_graph(9, "logwin-3-noncyclic")) == {(i, i + k) for k in (1, 2, 4) for i in range(9 - k)}
    assert _undirected(pair_graph(4, "oneref-2")) == {(0, 2), (1, 2), (2, 3)}
    assert _undirected(pair_graph(3, "oneref")) == {(0, 1), (0, 2)}
    for bad in ("full", "swin-x", "oneref-5", "complete-3", "swin-0"):
        with pytest.raises(InputError):
            pair_graph(5, bad)
    with pytest.raises(InputError):
        pair_graph(1, "complete")


# --- camera recovery --------------------------------------------------------------------------------
def _random_rotation(g):
    return quaternion_to_matrix(torch.randn(4, generator=g, dtype=torch.float64))


def test_weighted_similarity_recovers_a_similarity_and_ignores_zero_weight_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    R, s, t = _random_rotation(g), 2.5, torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64)
    y = s * x @ R.T + t
    w = torch.rand(200, generator=g, dtype=torch.float64)
    y[:20] += 10.0  # outliers with zero weight
    w[:20] = 0
    s2, R2, t2 = weighted_similarity(x, y, w)
    assert abs(float(s2) - s) < 1e-9 and torch.allclose(R2, R, atol=1e-9) and torch.allclose(t2, t, atol=1e-9)


def test_estimate_focal_and_pnp_on_an_exact_pinhole():
    H, W, f = 24, 32, 29.0
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    depth = 2 + torch.rand(H, W, generator=g, dtype=torch.float64)
    cam = depth_to_points(depth, K)
    assert estimate_focal(cam) == pytest.approx(f, rel=1e-6)
    # the same points in a world frame: PnP finds the camera
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quaternion_to_matrix(torch.tensor([1.0, 0.05, -0.1, 0.02], dtype=torch.float64))
    c2w[:3, 3] = torch.tensor([0.2, -0.1, 0.5])
    world = transform_points(c2w, cam)
    w2c, inliers = solve_pnp_ransac(world.numpy(), K.numpy(), iters=20)
    assert inliers == H * W
    assert np.allclose(np.linalg.inv(w2c), c2w.numpy(), atol=1e-6)
    assert solve_pnp_ransac(world.numpy(), K.numpy(), mask=np.zeros((H, W), bool)) is None


def test_maximum_spanning_tree_keeps_the_best_orientation():
    scores = {(0, 1): 5.0, (1, 0): 6.0, (1, 2): 1.0, (2, 1): 0.5, (0, 2): 4.0, (2, 0): 3.0, (2, 3): 2.0, (3, 2): 7.0}
    assert maximum_spanning_tree(4, scores) == [(7.0, 3, 2), (6.0, 1, 0), (4.0, 0, 2)]


# --- against the official optimiser on the same pair predictions ---------------------------------------
@pytest.fixture(scope="module")
def golden():
    d = load_file(str(FIXTURE))
    pairs = PairPredictions([tuple(e) for e in d["edges"].tolist()], d["pts_i"].float(), d["pts_j"].float(),
                            d["conf_i"].float(), d["conf_j"].float())
    return d, pairs


def test_initialisation_matches_the_official_spanning_tree_init(golden):
    d, pairs = golden
    aligner = PointCloudAligner(pairs, OptimizerConfig())
    info = init_from_spanning_tree(aligner)
    assert info["root"] == 3 and len(info["tree"]) == 7
    with torch.no_grad():
        assert float(aligner()) == pytest.approx(float(d["official_init_loss"]), rel=1e-5)
        assert torch.allclose(aligner.cam2world(), d["official_init_cam2world"], atol=1e-5)
        assert torch.allclose(aligner.depth(), d["official_init_depth"], rtol=1e-5)
        # focal: ours from each image's best pair (the official code reuses a previous pair for some)
        assert torch.allclose(aligner.focals(), d["official_init_focals"], rtol=1e-4)


def test_optimiser_matches_the_official_global_alignment(golden):
    d, pairs = golden
    scene = align_pairs(pairs, AlignConfig())  # defaults = the official demo's: 300 its, lr 0.01, cosine
    assert scene.info["final_loss"] == pytest.approx(float(d["official_final_loss"]), rel=1e-4)
    assert torch.allclose(scene.focals, d["official_focals"], rtol=5e-4)
    assert torch.allclose(scene.cam2world, d["official_cam2world"], atol=1e-3)
    scale = d["official_pts3d"].norm(dim=-1).mean()
    assert float((scene.pts3d - d["official_pts3d"]).norm(dim=-1).max() / scale) < 3e-3
    assert float(((scene.depth - d["official_depth"]).abs() / d["official_depth"]).max()) < 3e-3
    assert scene.losses[-1] < scene.losses[0]


# --- against the synthetic world's ground truth ---------------------------------------------------------
def _world_pairs(N=8, H=24, W=32, noise=0.01, graph="complete", seed=0):
    from fin3r.data.world import intrinsics_from_fov, make_scene, render_views, sample_trajectory

    scene = make_scene(4, kind="indoor")
    cams = sample_trajectory(scene, N, seed=seed, mode="video")
    out = render_views(scene, cams, intrinsics_from_fov(W, H, fov_x_deg=60), H, W, shadows=False)
    assert bool(out["valid"].all())
    c2w, K = out["cam2world"].double(), out["K"].double()
    cam = depth_to_points(out["depth"].double(), K)
    g = torch.Generator().manual_seed(seed)
    edges = pair_graph(N, graph)
    pi, pj, ci, cj = [], [], [], []
    for i, j in edges:
        s = math.exp(0.3 * float(torch.randn(1, generator=g)))
        T_ij = invert_rigid(c2w[i]) @ c2w[j]
        pi.append(s * cam[i] * (1 + noise * torch.randn(H, W, 1, generator=g, dtype=torch.float64)))
        pj.append(s * transform_points(T_ij, cam[j] * (1 + noise * torch.randn(H, W, 1, generator=g, dtype=torch.float64))))
        ci.append(1 + torch.exp(1 + 0.5 * torch.randn(H, W, generator=g, dtype=torch.float64)))
        cj.append(1 + torch.exp(1 + 0.5 * torch.randn(H, W, generator=g, dtype=torch.float64)))
    pairs = PairPredictions(edges, torch.stack(pi).float(), torch.stack(pj).float(), torch.stack(ci).float(),
                            torch.stack(cj).float())
    return pairs, c2w, K, cam


@pytest.mark.parametrize("graph", ["complete", "logwin-2", "oneref-3"])
def test_eight_views_recovered_from_pair_predictions(graph):
    """N = 8 views from noisy (1% per point) pair predictions with random per-pair scales: cameras
    within 0.2 degrees and 2% of the trajectory length, focal within 0.5%, points within 1.5%
    (after one similarity for the whole scene)."""
    pairs, c2w, K, cam = _world_pairs(graph=graph)
    H, W = pairs.image_size
    cfg = AlignConfig(graph=graph, optimizer=OptimizerConfig(niter=200, principal_point=(float(K[0, 0, 2]),
                                                                                             float(K[0, 1, 2]))))
    scene = align_pairs(pairs, cfg).relative_to(0)
    gt = invert_rigid(c2w[0])[None] @ c2w
    assert torch.allclose(scene.cam2world[0], torch.eye(4), atol=1e-5)
    rot = rotation_angle_deg(scene.cam2world[:, :3, :3].double(), gt[:, :3, :3])
    assert float(rot.max()) < 0.2, rot
    s, R, t = umeyama_sim3(scene.cam2world[:, :3, 3], gt[:, :3, 3].float())
    centre_err = (s * scene.cam2world[:, :3, 3] @ R.T + t - gt[:, :3, 3].float()).norm(dim=-1)
    length = float(gt[:, :3, 3].norm(dim=-1).max())
    assert float(centre_err.max()) < 0.02 * length, (centre_err, length)
    assert torch.allclose(scene.focals.double(), K[:, 0, 0], rtol=5e-3)
    gt_pts = transform_points(gt, cam).float().reshape(-1, 3)
    pts = scene.pts3d.reshape(-1, 3)
    s, R, t = umeyama_sim3(pts, gt_pts)
    rel = (s * pts @ R.T + t - gt_pts).norm(dim=-1) / gt_pts.norm(dim=-1)
    assert float(rel.median()) < 0.015, float(rel.median())
    # the depth maps are the points seen from the recovered cameras
    own = transform_points(invert_rigid(scene.cam2world), scene.pts3d)[..., 2]
    assert torch.allclose(own, scene.depth, rtol=1e-4, atol=1e-5)


def test_disconnected_or_bad_predictions_are_refused():
    pairs, *_ = _world_pairs(N=4, graph="complete")
    with pytest.raises(InputError):
        PairPredictions(pairs.edges[:3], pairs.pts_i, pairs.pts_j, pairs.conf_i, pairs.conf_j)
    keep = [k for k, (i, j) in enumerate(pairs.edges) if {i, j} in ({0, 1}, {2, 3})]
    sub = PairPredictions([pairs.edges[k] for k in keep], pairs.pts_i[keep], pairs.pts_j[keep], pairs.conf_i[keep],
                          pairs.conf_j[keep])
    with pytest.raises(InputError, match="connect"):
        align_pairs(sub, AlignConfig(optimizer=OptimizerConfig(niter=1)))
    with pytest.raises(InputError):
        AlignConfig(graph="ring")


# --- through a model ------------------------------------------------------------------------------------
def test_align_views_with_a_tiny_dust3r_gives_cameras_for_any_number_of_views():
    from fin3r.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    imgs = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    pred = align_views(model, imgs, AlignConfig(optimizer=OptimizerConfig(niter=20)))
    assert pred.pts3d.shape == (1, 3, 32, 48, 3) and pred.cam2world.shape == (1, 3, 4, 4)
    assert pred.intrinsics.shape == (1, 3, 3, 3) and pred.depth.shape == (1, 3, 32, 48)
    assert torch.allclose(pred.cam2world[0, 0], torch.eye(4), atol=1e-5)
    assert bool(torch.isfinite(pred.pts3d).all()) and bool((pred.intrinsics[0, :, 0, 0] > 0).all())
    # a pair too: focal and relative pose
    pair = align_views(model, imgs[:2], AlignConfig(optimizer=OptimizerConfig(niter=20)))
    assert pair.cam2world.shape == (1, 2, 4, 4) and pair.intrinsics[0, 1, 0, 0] > 0


def test_align_pair_recovers_the_relative_camera_and_keeps_the_prediction():
    from fin3r.align import align_pair

    pairs, c2w, K, cam = _world_pairs(N=2, H=24, W=32, noise=0.0, graph="complete")
    pp = (float(K[0, 0, 2]), float(K[0, 1, 2]))
    scene = align_pair(pairs, AlignConfig(optimizer=OptimizerConfig(principal_point=pp))).relative_to(0)
    gt = invert_rigid(c2w[0]) @ c2w[1]
    assert float(rotation_angle_deg(scene.cam2world[1, :3, :3].double(), gt[:3, :3])) < 0.05
    t, t_gt = scene.cam2world[1, :3, 3].double(), gt[:3, 3]
    assert float(torch.nn.functional.cosine_similarity(t, t_gt, dim=0)) > 0.999
    assert torch.allclose(scene.focals.double(), K[:, 0, 0], rtol=1e-3)
    ref = scene.info["root"]
    k = pairs.edges.index((ref, 1 - ref))
    assert torch.allclose(scene.depth[ref], pairs.pts_i[k][..., 2])
