"""Hypersim and TartanAir readers on small files written in their real layouts.

The fixtures are views of fin3r's synthetic world written in each data set's raw conventions
(Euclidean distance + OpenGL projection/orientation + HDR for Hypersim; NED quaternion poses,
fixed intrinsics and .npy depth for TartanAir), so the readers must recover the exact planar
depth, intrinsics and OpenCV poses the world rendered.
"""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.data.hypersim import HypersimViews, tonemap
from fin3r.data.sequences import BadFrame, sample_frame_ids
from fin3r.data.tartanair import TARTANAIR_K, TartanAirViews
from fin3r.data.views import check_view
from fin3r.data.world import make_scene, render_views, sample_trajectory
from fin3r.geometry import matrix_to_quaternion

h5py = pytest.importorskip("h5py")

H, W, N = 24, 32, 6


def _world(K):
    scene = make_scene(21, kind="indoor")
    cams = sample_trajectory(scene, N, seed=0, mode="video")
    return render_views(scene, cams, K, H, W, shadows=False)


def _h5(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=array)


def _write_hypersim(root, out, K, meters_per_unit=0.5):
    scene, cam = "ai_001_002", "cam_00"
    M = np.zeros((4, 4))
    M[0, 0], M[0, 2] = 2 * K[0, 0] / W, 1 - 2 * (K[0, 2] + 0.5) / W
    M[1, 1], M[1, 2] = 2 * K[1, 1] / H, 2 * (K[1, 2] + 0.5) / H - 1
    M[2, 2], M[2, 3], M[3, 2] = -1.0, -0.2, -1.0
    cols = ["scene_name", "settings_output_img_height", "settings_output_img_width"] + \
        [f"M_proj_{i}{j}" for i in range(4) for j in range(4)]
    with open(root / "metadata_camera_parameters.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow([scene, H, W] + [M[i, j] for i in range(4) for j in range(4)])
    detail = root / scene / "_detail"
    detail.mkdir(parents=True)
    (detail / "metadata_scene.csv").write_text(f"parameter_name,parameter_value\nmeters_per_asset_unit,{meters_per_unit}\n")
    c2w = out["cam2world"].double().numpy()
    _h5(detail / cam / "camera_keyframe_positions.hdf5", c2w[:, :3, 3] / meters_per_unit)
    _h5(detail / cam / "camera_keyframe_orientations.hdf5", c2w[:, :3, :3] @ np.diag([1.0, -1.0, -1.0]))
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    for i in range(N):
        depth = out["depth"][i].double().numpy()
        dist = np.where(depth > 0, depth * np.linalg.norm(rays, axis=-1) / rays[..., 2], np.nan)
        hdr = (out["img"][i].double().numpy() ** 2.2) * 3.0
        img_dir = root / scene / "images"
        _h5(img_dir / f"scene_{cam}_final_hdf5" / f"frame.{i:04d}.color.hdf5", hdr.astype(np.float16))
        _h5(img_dir / f"scene_{cam}_geometry_hdf5" / f"frame.{i:04d}.depth_meters.hdf5", dist.astype(np.float32))
        _h5(img_dir / f"scene_{cam}_geometry_hdf5" / f"frame.{i:04d}.render_entity_id.hdf5",
            np.where(depth > 0, 1, -1).astype(np.int32))


def _write_tartanair(root, out):
    traj = root / "abandonedfactory" / "Easy" / "P001"
    (traj / "image_left").mkdir(parents=True)
    (traj / "depth_left").mkdir()
    P = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    lines = []
    for i in range(N):
        c2w = out["cam2world"][i].double()
        R_ned = c2w[:3, :3] @ torch.from_numpy(P).T
        wxyz = matrix_to_quaternion(R_ned).numpy()
        t = c2w[:3, 3].numpy()
        lines.append(" ".join(f"{x:.9f}" for x in [*t, wxyz[1], wxyz[2], wxyz[3], wxyz[0]]))
        Image.fromarray((out["img"][i].numpy() * 255 + 0.5).astype(np.uint8)).save(traj / "image_left" / f"{i:06d}_left.png")
        depth = out["depth"][i].numpy().copy()
        depth[depth == 0] = 1e4  # sky
        np.save(traj / "depth_left" / f"{i:06d}_left_depth.npy", depth.astype(np.float32))
    (traj / "pose_left.txt").write_text("\n".join(lines) + "\n")
    return traj


def test_hypersim_recovers_planar_depth_K_pose_and_tonemaps(tmp_path):
    K = np.array([[30.0, 0.0, 15.2], [0.0, 30.0, 11.9], [0.0, 0.0, 1.0]])
    out = _world(torch.from_numpy(K).float())
    _write_hypersim(tmp_path, out, K)
    ds = HypersimViews(tmp_path, 3, H, W, max_interval=2, video_prob=1.0, fix_interval_prob=1.0)
    assert len(ds) == N
    s = ds[0]
    check_view(s, num_views=3)
    assert s["source"] == "hypersim" and s["depth_kind"] == "metric"
    frames = s["frames"].tolist()
    assert frames[0] == 0 and len(set(np.diff(frames))) == 1
    for k, f in enumerate(frames):
        assert torch.allclose(s["K"][k], torch.from_numpy(K).float(), atol=1e-4)
        assert torch.allclose(s["cam2world"][k], out["cam2world"][f], atol=1e-5)
        assert torch.allclose(s["depth"][k], out["depth"][f], rtol=1e-5, atol=1e-5)
        assert torch.equal(s["valid"][k], out["valid"][f])
    # tone map: Hypersim's operator (P90 brightness to 0.8 after gamma)
    img = s["img"][0].permute(1, 2, 0).numpy()
    b = 0.3 * img[..., 0] ** 2.2 + 0.59 * img[..., 1] ** 2.2 + 0.11 * img[..., 2] ** 2.2
    assert abs(np.percentile(b, 90) ** (1 / 2.2) - 0.8) < 0.02


def test_hypersim_bad_frames_skipped_and_reported(tmp_path):
    K = np.array([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])
    out = _world(torch.from_numpy(K).float())
    _write_hypersim(tmp_path, out, K)
    geo = tmp_path / "ai_001_002" / "images" / "scene_cam_00_geometry_hdf5"
    (geo / "frame.0005.depth_meters.hdf5").unlink()  # missing depth: left out at construction
    _h5(geo / "frame.0001.depth_meters.hdf5", np.ones((H, W - 1), np.float32))  # wrong size
    ds = HypersimViews(tmp_path, 2, 16, 16, max_interval=1, video_prob=1.0)
    assert len(ds) == 5 and len(ds.missing) == 1
    s = ds[0]  # frames 0,1 -> frame 1 is bad: the next sample is served
    assert 1 not in s["frames"].tolist() and "does not match" in ds.errors[0][1] and "frame.0001" in ds.errors[0][1]
    ds.strict = True
    with pytest.raises(BadFrame):
        ds[0]


def test_tartanair_ned_poses_intrinsics_and_sky(tmp_path):
    K = torch.from_numpy(TARTANAIR_K * np.array([[W / 640], [H / 480], [1.0]])).float()
    out = _world(K)
    out["depth"][0, :3, :] = 0  # some "sky" rows in frame 0
    _write_tartanair(tmp_path, out)
    ds = TartanAirViews(tmp_path, 4, H, W, seed=1)
    assert len(ds) == N
    for index in range(len(ds)):
        s = ds[index]
        check_view(s, num_views=4)
        for k, f in enumerate(s["frames"].tolist()):
            assert torch.allclose(s["cam2world"][k], out["cam2world"][f], atol=1e-5)
            assert torch.allclose(s["K"][k], K)
            valid = out["depth"][f] > 0
            assert torch.equal(s["valid"][k], valid)
            assert torch.allclose(s["depth"][k][valid], out["depth"][f][valid])
    assert s["source"] == "tartanair"
    # a resized sample keeps K consistent with the depth
    small = TartanAirViews(tmp_path, 2, 12, 12)[0]
    assert small["img"].shape == (2, 3, 12, 12) and small["K"][0, 0, 0] == pytest.approx(16 * 12 / 24, rel=1e-5)


def test_tartanair_corrupt_image_and_bad_depth(tmp_path):
    K = torch.from_numpy(TARTANAIR_K * np.array([[W / 640], [H / 480], [1.0]])).float()
    traj = _write_tartanair(tmp_path, _world(K))
    (traj / "image_left" / "000002_left.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = TartanAirViews(tmp_path, 2, H, W, max_interval=1, video_prob=1.0)
    s = ds[2]
    assert 2 not in s["frames"].tolist()
    assert any("000002_left.png" in e for _, e in ds.errors)


def test_frame_interval_sampling():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, v = int(rng.integers(4, 40)), int(rng.integers(2, 5))
        start = int(rng.integers(0, n))
        ids = sample_frame_ids(n, v, start, rng, max_interval=5, video_prob=0.5, fix_interval_prob=0.5)
        assert len(ids) == v and len(set(ids)) == v and all(0 <= i < n for i in ids)
        assert max(ids) - min(ids) <= 5 * (v - 1)
    video = sample_frame_ids(30, 4, 3, np.random.default_rng(1), max_interval=4, video_prob=1.0, fix_interval_prob=1.0)
    assert video[0] == 3 and len(set(np.diff(video))) == 1
    assert json.dumps(video)
