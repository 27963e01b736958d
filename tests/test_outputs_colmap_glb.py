"""COLMAP and glTF exports of a fused scene, read back by the tools people use: pycolmap (COLMAP's
own reader: both text and binary, camera centres, points, colours, the projection convention) and
trimesh (points, colours, camera frusta)."""

import numpy as np
import pytest
import torch

from fin3r.errors import InputError
from fin3r.geometry import quaternion_to_matrix
from fin3r.outputs.colmap import camera_from_intrinsics, export_colmap, unique_image_names, world_to_camera
from fin3r.outputs.glb import srgb_to_linear, write_scene_glb
from fin3r.outputs.scene import build_scene, confidence_cut, frustum_corners

pycolmap = pytest.importorskip("pycolmap")
trimesh = pytest.importorskip("trimesh")


def consistent_scene(S=3, H=12, W=16, seed=0, **kw):
    """S views of random depth seen by random cameras; every point is the exact unprojection of its
    pixel, so projecting it back through its camera must land on the pixel."""
    rng = np.random.default_rng(seed)
    R = quaternion_to_matrix(torch.from_numpy(rng.normal(size=(S, 4)))).numpy()
    T = np.tile(np.eye(4), (S, 1, 1))
    T[:, :3, :3], T[:, :3, 3] = R, rng.normal(size=(S, 3))
    K = np.tile(np.array([[20.0, 0, 7.3], [0, 22.5, 5.9], [0, 0, 1]]), (S, 1, 1))
    K[1, 1, 1] = K[1, 0, 0]  # view 1: square pixels -> SIMPLE_PINHOLE
    v, u = np.mgrid[:H, :W].astype(np.float64)
    pts = np.empty((S, H, W, 3))
    for i in range(S):
        z = rng.uniform(1, 3, (H, W))
        cam = np.stack([(u - K[i, 0, 2]) / K[i, 0, 0] * z, (v - K[i, 1, 2]) / K[i, 1, 1] * z, z], -1)
        pts[i] = cam @ T[i, :3, :3].T + T[i, :3, 3]
    conf = 1 + rng.random((S, H, W))
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(S)]
    return build_scene(pts, conf, images, ["a.jpg", "b.jpg", "a.png"][:S], T, K, **kw), pts, T


@pytest.mark.parametrize("reader", ["read_binary", "read_text"])
def test_colmap_round_trip_through_pycolmap(tmp_path, reader):
    scene, pts, T = consistent_scene(percentile=25)
    info = export_colmap(scene, tmp_path / "col", max_points=10**6)
    rec = pycolmap.Reconstruction()
    getattr(rec, reader)(str(tmp_path / "col" / "sparse" / "0"))
    assert len(rec.images) == len(rec.cameras) == 3 and len(rec.points3D) == len(scene.points) == info["points"]
    names = unique_image_names(scene.names)
    assert names == ["a.png", "b.png", "a_1.png"]
    for i in range(3):
        image = rec.images[i + 1]  # 1-based ids
        assert image.name == names[i] and (tmp_path / "col" / "images" / names[i]).is_file()
        np.testing.assert_allclose(image.projection_center(), T[i, :3, 3], atol=1e-5)
        cam = rec.cameras[image.camera_id]
        assert cam.model.name == ("SIMPLE_PINHOLE" if i == 1 else "PINHOLE")
        assert (cam.width, cam.height) == (16, 12)
        assert cam.principal_point_x == pytest.approx(7.3 + 0.5)  # COLMAP: top-left pixel centre at 0.5
    for pid, point in rec.points3D.items():
        np.testing.assert_allclose(point.xyz, scene.points[pid - 1], atol=1e-5)
        assert (point.color == scene.colors[pid - 1]).all()
        (el,) = point.track.elements
        image = rec.images[el.image_id]
        assert el.image_id == scene.view[pid - 1] + 1
        xy = image.points2D[el.point2D_idx].xy
        np.testing.assert_allclose(xy, scene.pixel[pid - 1] + 0.5, atol=1e-9)
        # COLMAP's own projection of the point lands on its observation (pose direction, pixel convention)
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        proj = rec.cameras[image.camera_id].img_from_cam(cam_from_world * point.xyz)
        np.testing.assert_allclose(proj, xy, atol=1e-4)
        assert point.error < 1e-4


def test_colmap_subsample_conventions_and_errors(tmp_path):
    scene, _, _ = consistent_scene()
    info = export_colmap(scene, tmp_path / "col", max_points=100, camera_model="PINHOLE")
    rec = pycolmap.Reconstruction(str(tmp_path / "col" / "sparse" / "0"))
    assert info["points"] == len(rec.points3D) == 100
    assert {c.model.name for c in rec.cameras.values()} == {"PINHOLE"}
    assert "world frame is the camera frame of the first image" in (tmp_path / "col" / "README.md").read_text()
    q, t = world_to_camera(np.eye(4))
    assert np.allclose(q, [1, 0, 0, 0]) and np.allclose(t, 0)
    with pytest.raises(InputError, match="focal"):
        camera_from_intrinsics(1, np.diag([0.0, 1.0, 1.0]), (4, 4))
    pair = build_scene(np.ones((2, 4, 4, 3)), np.ones((2, 4, 4)), [np.zeros((4, 4, 3), np.uint8)] * 2, ["x", "y"])
    assert pair.cameras[1] is None and pair.depths[1] is None
    with pytest.raises(InputError, match="camera for every view"):
        export_colmap(pair, tmp_path / "pair")


def test_confidence_filter():
    conf = np.arange(1, 101, dtype=np.float32).reshape(1, 10, 10)
    assert confidence_cut(conf, 0.0, 0.0) == 0.0 and confidence_cut(conf, 50.5, 0.0) == 50.5
    assert confidence_cut(conf, 10.0, 30.0) == pytest.approx(np.percentile(conf, 30))
    scene = build_scene(np.ones((1, 10, 10, 3)), conf, [np.zeros((10, 10, 3), np.uint8)], ["x"], percentile=30)
    assert len(scene.points) == int((conf >= np.percentile(conf, 30)).sum()) == 70
    with pytest.raises(InputError):
        confidence_cut(conf, 0.0, 100.0)


def test_glb_read_by_trimesh(tmp_path):
    scene, _, T = consistent_scene()
    write_scene_glb(tmp_path / "s.glb", scene)
    loaded = trimesh.load(tmp_path / "s.glb")
    cloud = loaded.geometry["points"]
    flip = np.array([1.0, -1.0, -1.0])  # OpenCV -> glTF axes
    np.testing.assert_allclose(cloud.vertices, scene.points * flip, atol=1e-5)
    np.testing.assert_allclose(cloud.colors[:, :3], srgb_to_linear(scene.colors) * 255, atol=1.0)
    frusta = [g for name, g in loaded.geometry.items() if name.startswith("camera")]
    assert len(frusta) == 3
    for i, cam in enumerate(scene.cameras):
        path = loaded.geometry[f"camera {i}: {cam.name}"]
        corners = frustum_corners(cam, 1.0)
        assert np.isclose(path.vertices, T[i, :3, 3] * flip, atol=1e-5).all(axis=1).any()  # the apex
        # corner rays through the image's edge pixels
        uv = (corners[1:] - T[i, :3, 3]) @ T[i, :3, :3]
        uv = uv[:, :2] / uv[:, 2:] * np.diag(cam.K)[:2] + cam.K[:2, 2]
        np.testing.assert_allclose(uv, [[-0.5, -0.5], [15.5, -0.5], [15.5, 11.5], [-0.5, 11.5]], atol=1e-6)
    # nothing to draw: still a valid, empty glTF
    from fin3r.outputs.glb import glb_bytes

    (tmp_path / "empty.glb").write_bytes(glb_bytes(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), []))
    assert len(trimesh.load(tmp_path / "empty.glb").geometry) == 0
