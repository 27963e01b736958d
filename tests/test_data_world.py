"""The synthetic world: determinism, exact geometry, camera conventions, datasets."""

import math

import numpy as np
import pytest
import torch

from fin3r.data import world
from fin3r.data.views import check_view
from fin3r.data.world import (
    WorldMonoDataset,
    WorldViewsDataset,
    intrinsics_from_fov,
    look_at,
    make_scene,
    render_from_key,
    render_view,
    render_views,
    sample_trajectory,
    scene_seed_for,
)


def _unproject(depth, K, cam2world):
    """World points (H, W, 3) of a planar depth map."""
    H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    cam = (pix @ torch.linalg.inv(K.double()).T) * depth.double()[..., None]
    return cam @ cam2world[:3, :3].double().T + cam2world[:3, 3].double()


def _scene_sdf(scene, p):
    """Unsigned distance (N,) from world points (N, 3) to the nearest surface of the scene."""
    p = p.double()
    dists = []
    if scene.shell_lo is not None:
        lo, hi = torch.tensor(scene.shell_lo).double(), torch.tensor(scene.shell_hi).double()
        dists.append(torch.cat([p - lo, hi - p], -1).abs().min(-1).values)
    if scene.ground_mat >= 0:
        dists.append(p[:, 2].abs())
    for c, h, yaw in zip(scene.box_center, scene.box_half, scene.box_yaw):
        cs, sn = math.cos(yaw), math.sin(yaw)
        q = p - torch.tensor(c).double()
        ql = torch.stack([cs * q[:, 0] + sn * q[:, 1], -sn * q[:, 0] + cs * q[:, 1], q[:, 2]], -1)
        dq = ql.abs() - torch.tensor(h).double()
        outside = dq.clamp_min(0).norm(dim=-1)
        inside = dq.max(-1).values.clamp_max(0)
        dists.append((outside + inside).abs())
    for c, r in zip(scene.sphere_center, scene.sphere_radius):
        dists.append(((p - torch.tensor(c).double()).norm(dim=-1) - float(r)).abs())
    for b, r, h in zip(scene.cyl_base, scene.cyl_radius, scene.cyl_height):
        q = p - torch.tensor(b).double()
        dr = q[:, :2].norm(dim=-1) - float(r)
        dz = torch.maximum(-q[:, 2], q[:, 2] - float(h))
        d2 = torch.stack([dr, dz], -1)
        dists.append((d2.clamp_min(0).norm(dim=-1) + d2.max(-1).values.clamp_max(0)).abs())
    return torch.stack(dists).min(0).values


@pytest.mark.parametrize("seed", [0, 4, 11])
def test_depth_is_exact_hits_lie_on_surfaces(seed):
    scene = make_scene(seed)
    K = intrinsics_from_fov(48, 36, 65.0)
    cam = sample_trajectory(scene, 1, seed=3)[0]
    out = render_view(scene, cam, K, 36, 48)
    valid = out["valid"]
    assert valid.any()
    pts = _unproject(out["depth"], K, cam)[valid]
    dist = _scene_sdf(scene, pts)
    # float32 ray casting: errors are round-off, far below a pixel footprint
    assert dist.max().item() < 2e-3 * max(1.0, out["depth"].max().item())
    assert (out["depth"][~valid] == 0).all()


def test_kinds_and_invalid_sky():
    indoor, outdoor = make_scene(1, kind="indoor"), make_scene(1, kind="outdoor")
    assert indoor.kind == "indoor" and outdoor.kind == "outdoor"
    K = intrinsics_from_fov(32, 24)
    # a camera looking up into the open sky: all invalid, zero depth
    up = look_at(torch.tensor([0.0, 0.0, 50.0]), torch.tensor([0.0, 0.01, 100.0]), up=torch.tensor([0.0, 1.0, 0.0]))
    sky = render_view(outdoor, up, K, 24, 32)
    assert not sky["valid"].any() and (sky["depth"] == 0).all()
    assert (sky["img"] >= 0).all() and (sky["img"] <= 1).all()
    room = render_view(indoor, sample_trajectory(indoor, 1)[0], K, 24, 32)
    assert room["valid"].all()  # a closed room: every ray hits something


def test_deterministic_and_seed_dependent():
    K = intrinsics_from_fov(40, 30)
    a = render_views(make_scene(5), sample_trajectory(make_scene(5), 2, seed=1), K, 30, 40)
    world.make_scene.cache_clear()
    b = render_views(make_scene(5), sample_trajectory(make_scene(5), 2, seed=1), K, 30, 40)
    for k in ("img", "depth", "normals"):
        assert torch.equal(a[k], b[k])
    c = render_views(make_scene(6), sample_trajectory(make_scene(6), 2, seed=1), K, 30, 40)
    assert not torch.equal(a["depth"], c["depth"])


def test_opencv_camera_convention_and_normals():
    scene = make_scene(2, kind="indoor")
    K = intrinsics_from_fov(40, 30)
    eye, target = torch.tensor([0.0, 0.0, 1.2]), torch.tensor([1.0, 0.0, 1.2])
    cam = look_at(eye, target)
    # x right, y down, z forward: forward = +x world, right = -y world, down = -z world
    assert torch.allclose(cam[:3, 2], torch.tensor([1.0, 0, 0]), atol=1e-6)
    assert torch.allclose(cam[:3, 0], torch.tensor([0.0, -1, 0]), atol=1e-6)
    assert torch.allclose(cam[:3, 1], torch.tensor([0.0, 0, -1]), atol=1e-6)
    out = render_view(scene, cam, K, 30, 40)
    n, valid = out["normals"], out["valid"]
    assert torch.allclose(n[valid].norm(dim=-1), torch.ones(int(valid.sum())), atol=1e-4)
    v, u = torch.meshgrid(torch.arange(30.0), torch.arange(40.0), indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T
    assert ((n * rays).sum(-1)[valid] <= 1e-6).all()  # normals face the camera
    # the bottom image row sees the floor: normal = world +z = camera -y
    floor = out["normals"][-1]
    assert torch.allclose(floor[out["object_id"][-1] == int(scene.shell_mat[4])],
                          torch.tensor([0.0, -1.0, 0.0]), atol=1e-5)


def test_views_overlap_and_reproject():
    scene = make_scene(3)
    K = intrinsics_from_fov(64, 48)
    cams = sample_trajectory(scene, 2, seed=0)
    out = render_views(scene, cams, K, 48, 64)
    pts = _unproject(out["depth"][1], K, cams[1])[out["valid"][1]]
    w2c0 = torch.linalg.inv(cams[0].double())
    pc = pts @ w2c0[:3, :3].T + w2c0[:3, 3]
    uvw = pc @ K.double().T
    u, v = (uvw[:, 0] / uvw[:, 2]).round().long(), (uvw[:, 1] / uvw[:, 2]).round().long()
    inside = (pc[:, 2] > 0) & (u >= 0) & (u < 64) & (v >= 0) & (v < 48)
    assert inside.float().mean() > 0.5  # views overlap
    d0 = out["depth"][0][v[inside], u[inside]].double()
    rel = ((d0 - pc[inside, 2]).abs() / pc[inside, 2])
    assert rel.median() < 0.02  # consistent geometry (nearest-pixel rounding only)


def test_crop_equals_render_with_cropped_intrinsics():
    from fin3r.data.views import crop_view, make_view, resize_view

    scene = make_scene(7)
    cam = sample_trajectory(scene, 1, seed=2)[0]
    K = intrinsics_from_fov(63, 45)
    full = render_view(scene, cam, K, 45, 63)
    view = make_view(full["img"], full["depth"], K, cam)
    crop = crop_view(view, 5, 7, 20, 30)
    direct = render_view(scene, cam, crop["K"], 20, 30)
    assert torch.allclose(crop["depth"], direct["depth"], rtol=1e-5, atol=1e-5)
    # downscale by 3: output pixel centres fall on input pixel centres, nearest is exact
    small = resize_view(view, 15, 21)
    direct = render_view(scene, cam, small["K"], 15, 21)
    assert torch.allclose(small["depth"], direct["depth"], rtol=1e-5, atol=1e-5)


def test_split_seeds_disjoint():
    train = {scene_seed_for(s, i, "train") for s in range(3) for i in range(200)}
    test = {scene_seed_for(s, i, "test") for s in range(3) for i in range(200)}
    assert not train & test
    with pytest.raises(ValueError):
        scene_seed_for(0, 0, "val")


def test_mono_dataset_contract_and_key():
    ds = WorldMonoDataset(6, 24, 32, seed=1, split="train", views_per_scene=3, cache_size=2)
    assert len(ds) == 6
    s = ds[4]
    check_view(s)
    assert s["source"] == "world" and s["depth_kind"] == "metric"
    assert s["img"].shape == (3, 24, 32) and s["depth"].dtype == torch.float32
    again = render_from_key(s["key"])
    assert torch.allclose(again["depth"], s["depth"], atol=1e-4)
    assert torch.equal(ds[0]["img"], ds[0]["img"])
    test_ds = WorldMonoDataset(6, 24, 32, seed=1, split="test", views_per_scene=3)
    assert test_ds[0]["scene_seed"] != ds[0]["scene_seed"]
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["img"].shape == (2, 3, 24, 32) and batch["source"] == ["world", "world"]


def test_views_dataset_contract():
    ds = WorldViewsDataset(3, 4, 24, 32, seed=0, mode="video")
    s = ds[1]
    check_view(s, num_views=4)
    assert s["cam2world"].shape == (4, 4, 4)
    # video mode: consecutive cameras move monotonically along the path
    eyes = s["cam2world"][:, :3, 3]
    steps = (eyes[1:] - eyes[:-1]).norm(dim=-1)
    assert (steps > 0).all()
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["img"].shape == (2, 4, 3, 24, 32)
