"""`fin3r infer` end to end on a tiny model file: files written, values that read back, adapters,
multi-view pairs, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.errors import InputError
from fin3r.infer import (
    list_images, prepare_image, read_depth_png16, read_ply, run_inference, target_size, write_depth_png16,
)
from fin3r.models import build_model, load_model, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(build_model("dust3r_tiny").eval(), tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(folder / "a_land.png")
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(folder / "b_port.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_target_size_and_prepare(images):
    assert target_size(60, 90, 64, 16) == ((43, 64), (32, 64))
    im = prepare_image(images / "b_port.jpg", long_side=64, multiple=16)
    assert im.img.shape == (3, 64, 32) and im.rgb.shape == (64, 32, 3)
    assert float(im.img.min()) >= 0 and float(im.img.max()) <= 1
    assert [p.name for p in list_images(images)] == ["a_land.png", "b_port.jpg"]


def test_cli_mono_writes_all_outputs(images, model_file, tmp_path):
    out = tmp_path / "out"
    rc = main(["infer", str(images), "--model", str(model_file), "--out", str(out), "--size", "64", "--npy",
               "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [e["size"] for e in summary["images"]] == [[32, 64], [64, 32]]
    model = load_model(model_file)
    for stem, hw in (("a_land", (32, 64)), ("b_port", (64, 32))):
        for suffix in ("_depth.png", "_depth_color.png", "_conf.png", "_conf.npy", "_depth.npy", ".ply"):
            assert (out / f"{stem}{suffix}").is_file(), suffix
        img = prepare_image(next(images.glob(stem + ".*")), 64, 16)
        with torch.no_grad():
            pred = model.predict_mono(img.img[None])
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.shape == hw and np.allclose(depth, pred.depth[0].numpy(), atol=1e-6)
        png = read_depth_png16(out / f"{stem}_depth.png")
        assert np.allclose(png, depth, atol=depth.max() / 65535)
        conf = np.load(out / f"{stem}_conf.npy")
        assert np.allclose(conf, pred.conf[0].numpy(), atol=1e-6)
        pts, rgb = read_ply(out / f"{stem}.ply")
        assert pts.shape == (hw[0] * hw[1], 3) and np.allclose(pts, pred.pts3d[0].reshape(-1, 3).numpy(), atol=1e-6)
        assert np.array_equal(rgb, img.rgb.reshape(-1, 3))
        with Image.open(out / f"{stem}_depth.png") as im:
            assert im.mode.startswith("I") and im.size == (hw[1], hw[0])


def test_cli_with_adapter_changes_the_prediction(images, model_file, tmp_path):
    from fin3r.lora import inject_lora, save_adapter

    model = load_model(model_file)
    inject_lora(model, model.encoder_linear_names(), rank=2, mode="weight_row")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name.lower():
                p.normal_(0, 0.2)
    save_adapter(model, tmp_path / "adapter.safetensors")
    out_plain, out_lora = tmp_path / "plain", tmp_path / "lora"
    common = ["--model", str(model_file), "--size", "64", "--npy", "--no-progress"]
    assert main(["infer", str(images / "a_land.png"), "--out", str(out_plain), *common]) == 0
    assert main(["infer", str(images / "a_land.png"), "--out", str(out_lora), "--adapter",
                 str(tmp_path / "adapter.safetensors"), *common]) == 0
    lora_depth = np.load(out_lora / "a_land_depth.npy")
    assert not np.allclose(np.load(out_plain / "a_land_depth.npy"), lora_depth, atol=1e-4)
    with torch.no_grad():
        ref = model.eval().predict_mono(prepare_image(images / "a_land.png", 64, 16).img[None]).depth[0].numpy()
    assert np.allclose(lora_depth, ref, atol=1e-5)


def test_views_pair_and_errors(images, model_file, tmp_path):
    model = load_model(model_file)
    files = list_images(images)
    summary = run_inference(model, files, tmp_path / "pair", long_side=64, views=True, progress=False)
    # a DUSt3R pair: cameras and focal lengths (DUSt3R's pair viewer), every view's own depth
    assert summary["cameras"] == "cameras.json" and (tmp_path / "pair" / "scene.ply").is_file()
    assert (tmp_path / "pair" / "a_land_depth.png").is_file() and (tmp_path / "pair" / "b_port_depth.png").is_file()
    assert summary["align"]["method"] == "pair"
    pts, _ = read_ply(tmp_path / "pair" / "scene.ply")
    assert len(pts) == 2 * 32 * 64
    # more than two views: the global alignment
    from fin3r.align import AlignConfig, OptimizerConfig

    summary = run_inference(model, files + files[:1], tmp_path / "triple", long_side=64, views=True, progress=False,
                            align=AlignConfig(optimizer=OptimizerConfig(niter=5)))
    assert summary["align"]["edges"] == 6 and len(summary["images"]) == 3
    with pytest.raises(InputError, match="at least 2"):
        run_inference(model, files[:1], tmp_path / "one", long_side=64, views=True, progress=False)
    with pytest.raises(InputError, match="no such file"):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot read"):
        prepare_image(images / "notes.txt")
    assert main(["infer", str(tmp_path / "missing"), "--model", str(model_file)]) != 0


def test_depth_png16_invalid_pixels(tmp_path):
    depth = np.array([[0.0, 1.0], [np.nan, 4.0]])
    scale = write_depth_png16(tmp_path / "d.png", depth)
    back = read_depth_png16(tmp_path / "d.png")
    assert scale == pytest.approx(4.0 / 65535)
    assert back[0, 0] == 0 and back[1, 0] == 0 and back[1, 1] == pytest.approx(4.0, rel=1e-6)


def _make_cut3r_look_forward(model, images):
    """A random CUT3R puts its points anywhere, so the focal length fitted to them
    (``estimate_intrinsics``) can be <= 0. Shift its point heads' z output forward and, if needed,
    turn their x/y by 180 degrees about the optical axis (a rigid change) so the fitted focal of
    these views is positive, as for a trained model."""
    from fin3r.infer import predict_views

    heads = [model.downstream_head.dpt_self.head[4], model.downstream_head.dpt_cross.head[4]]
    with torch.no_grad():
        for conv in heads:
            conv.bias[2] += 3.0
        focal = predict_views(model, images).intrinsics[0, :, 0, 0]
        if (focal < 0).all():
            for conv in heads:
                conv.weight[:2] *= -1
                conv.bias[:2] *= -1
        focal = predict_views(model, images).intrinsics[0, :, 0, 0]
    assert (focal > 0).all(), f"test set-up: focal {focal.tolist()}"


@pytest.mark.parametrize("name", ["vggt_tiny", "cut3r_tiny", "dust3r_tiny"])
def test_cli_views_with_cameras(name, tmp_path):
    """VGGT / CUT3R / DUSt3R (global alignment) multi-view: cameras.json holds a rigid cam2world and a pinhole K per view, and
    every view's .ply has one vertex per kept (valid, finite) pixel."""
    from fin3r.models import MODEL_CONFIGS

    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["v0.png", "v1.png", "v2.png"]
    scene = rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)  # three overlapping crops of one picture
    for i, n in enumerate(names):
        Image.fromarray(scene[:, 4 * i : 4 * i + 60]).save(folder / n)
    torch.manual_seed(0)
    model = build_model(name).eval()
    size = MODEL_CONFIGS[name]["img_size"]
    size = max(size) if isinstance(size, (list, tuple)) else size
    if name.startswith("cut3r"):
        _make_cut3r_look_forward(model, [prepare_image(folder / n, size, model.patch_size) for n in names])
    model_file = save_model(model, tmp_path / f"{name}.safetensors")
    common = ["--model", str(model_file), "--views", "--npy", "--size", str(size), "--no-progress", "--align-iters", "10"]
    out = tmp_path / "out"
    assert main(["infer", str(folder), "--out", str(out), *common]) == 0
    cameras_json = json.loads((out / "cameras.json").read_text())
    cams = cameras_json["cameras"]
    assert [c["image"] for c in cams] == names
    summary = json.loads((out / "predictions.json").read_text())
    total = 0
    for cam, entry in zip(cams, summary["images"]):
        # strict JSON: a non-finite focal of this random tiny model is written as null (read back as inf)
        T, K = np.array(cam["cam2world"]), np.array(cam["K"], dtype=float)
        K[np.isnan(K)] = np.inf
        assert T.shape == (4, 4) and K.shape == (3, 3) and np.isfinite(T).all()
        R = T[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-4) and np.linalg.det(R) == pytest.approx(1.0, abs=1e-4)
        assert np.allclose(T[3], [0, 0, 0, 1])
        assert K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1]) and K[0, 1] == 0
        h, w = entry["size"]
        assert cameras_json["size"] == [h, w]
        stem = Path(entry["image"]).stem
        pts, rgb = read_ply(out / f"{stem}.ply")
        assert np.load(out / f"{stem}_conf.npy").shape == (h, w)
        assert len(pts) == entry["points"] == h * w and rgb.shape == (h * w, 3) and np.isfinite(pts).all()
        assert (out / f"{stem}_depth.png").is_file()  # every view's depth in its own camera is known
        total += len(pts)
    assert len(read_ply(out / "scene.ply")[0]) == total
    import trimesh

    glb = trimesh.load(out / "scene.glb")  # valid glTF even where a random model's camera is not drawable
    assert len(glb.geometry["points"].vertices) == total
    if name != "vggt_tiny":  # the COLMAP model holds the same cameras (centres) as cameras.json
        import pycolmap

        rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
        assert sorted(im.name for im in rec.images.values()) == sorted(names)
        for i, cam in enumerate(cams):
            np.testing.assert_allclose(rec.images[i + 1].projection_center(), np.array(cam["cam2world"])[:3, 3],
                                       atol=1e-5)
            assert (out / "colmap" / "images" / rec.images[i + 1].name).is_file()
        assert len(rec.points3D) == summary["colmap"]["points"] == total  # below --colmap-points
    else:  # the random VGGT's focal lengths are not finite: no COLMAP model, said why
        assert summary["colmap"].startswith("not written") and not (out / "colmap").exists()
    # a confidence threshold keeps exactly the pixels at or above it
    threshold = float(np.median(np.load(out / "v1_conf.npy")))
    out_thr = tmp_path / "out_thr"
    assert main(["infer", str(folder), "--out", str(out_thr), "--conf-threshold", str(threshold), *common]) == 0
    total = 0
    for stem in ("v0", "v1", "v2"):
        conf = np.load(out_thr / f"{stem}_conf.npy")
        kept = int((conf >= threshold).sum())
        pts, rgb = read_ply(out_thr / f"{stem}.ply")
        assert len(pts) == len(rgb) == kept
        total += kept
    assert 0 < total < 3 * conf.size and len(read_ply(out_thr / "scene.ply")[0]) == total
