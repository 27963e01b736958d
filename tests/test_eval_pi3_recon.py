"""fin3r.eval.registration / pi3_recon: pi3's point-map protocol against its official code (Open3D
ICP and normals), readers on tiny trees in pi3's layouts, known answers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.errors import InputError
from fin3r.eval.pi3_recon import (
    Pi3ReconConfig,
    evaluate_pi3_pointmap,
    list_pi3_sequences,
    pi3_reconstruction_metrics,
    read_pi3_frames,
)
from fin3r.eval.registration import estimate_normals, icp_point_to_point

FIXTURE = Path(__file__).parent / "fixtures" / "eval_pi3_pointmap.safetensors"


def test_golden_numbers_from_official_pi3_and_open3d():
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    t = load_file(str(FIXTURE))
    with safetensors.safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    for c in range(2):
        pred, gt, valid = t[f"case{c}.pred"], t[f"case{c}.gt"], t[f"case{c}.valid"].bool()
        thr = float(meta[f"case{c}.threshold"])
        out = pi3_reconstruction_metrics(pred, gt, valid, thr)
        keys = json.loads(meta[f"case{c}.keys"])
        got = torch.tensor([out[k] for k in keys], dtype=torch.float64)
        assert torch.allclose(got, t[f"case{c}.values"], rtol=1e-6, atol=1e-7), (c, keys, got, t[f"case{c}.values"])
        # normals: same lines as Open3D's (up to sign)
        g = gt[valid].double()
        cos = (estimate_normals(g) * t[f"case{c}.gt_normals"]).sum(-1).abs()
        assert cos.min() > 1 - 1e-9


def test_icp_and_normals_known_answers():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 3, generator=g, dtype=torch.float64)
    c, s = np.cos(0.04), np.sin(0.04)
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]], dtype=torch.float64)
    T = icp_point_to_point(pts, pts @ R.T + torch.tensor([0.01, 0.0, 0.02], dtype=torch.float64), threshold=0.2)
    assert torch.allclose(T[:3, :3], R, atol=1e-6) and torch.allclose(T[:3, 3], torch.tensor([0.01, 0, 0.02]).double(), atol=1e-6)
    plane = torch.cat([torch.rand(200, 2, generator=g, dtype=torch.float64), torch.full((200, 1), 3.0, dtype=torch.float64)], 1)
    assert torch.allclose(estimate_normals(plane).abs(), torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(200, 3))


def test_prediction_equal_to_gt_up_to_similarity_is_perfect():
    g = torch.Generator().manual_seed(1)
    H, W = 10, 12
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    z = 2 + 0.2 * torch.sin(u / 2.0) + 0.1 * torch.rand(H, W, generator=g)
    gt = torch.stack([(u - 6) / 10 * z, (v - 5) / 10 * z, z], -1)[None].double()
    valid = torch.ones(1, H, W, dtype=torch.bool)
    pred = 0.4 * gt + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = pi3_reconstruction_metrics(pred, gt, valid, 0.1)
    assert out["acc"] < 1e-9 and out["comp"] < 1e-9 and out["nc"] == pytest.approx(1.0)


def _write_7scenes(root, n=3, H=24, W=32):
    scene = root / "7scenes/chess"
    (scene / "seq-03").mkdir(parents=True)
    (scene / "TestSplit.txt").write_text("sequence3\n")
    for i in range(n):
        stem = scene / "seq-03" / f"frame-{i:06d}"
        Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(f"{stem}.color.png")
        mm = np.full((H, W), 1500 + 100 * i, np.uint16)
        mm[0, 0] = 65535
        mm[1, 1] = 12000  # > 10 m: invalid
        Image.fromarray(mm).save(f"{stem}.depth.proj.png")
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * i
        np.savetxt(f"{stem}.pose.txt", c2w)


def test_readers_on_pi3_layouts(tmp_path):
    _write_7scenes(tmp_path)
    assert list_pi3_sequences(tmp_path, "7scenes") == ["chess/seq-03"]
    data = read_pi3_frames(tmp_path, "7scenes", "chess/seq-03", [0, 2], load_size=28)
    assert data["images"].shape == (2, 3, 28, 28) and data["points"].shape == (2, 28, 28, 3)  # round(1.5) * 14
    # depth 1.5 m (frame 0) and 1.7 m (frame 2, camera moved by 0.2 m in x)
    z = data["points"][..., 2][data["valid"]]
    assert set(np.round(z.numpy(), 4)) == {1.5, 1.7}
    # NRGBD: OpenGL poses, frames img<i>.png
    scene = tmp_path / "nrgbd/kitchen"
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(scene / f"images/img{i}.png")
        Image.fromarray(np.full((24, 32), 2000, np.uint16)).save(scene / f"depth/depth{i}.png")
    (scene / "poses.txt").write_text("\n".join(" ".join(map(str, r)) for r in np.eye(4)) * 1 + "\n"
                                     + "\n".join(" ".join(map(str, r)) for r in np.eye(4)) + "\n")
    d = read_pi3_frames(tmp_path, "nrgbd", "kitchen", None, load_size=28)
    assert torch.allclose(d["points"][..., 2][d["valid"]], torch.tensor(-2.0, dtype=torch.float64))  # GL -> CV flip
    # ETH3D: raw float32 depth, npz cameras
    scene = tmp_path / "eth3d/courtyard"
    for sub in ("images/custom_undistorted", "ground_truth_depth/custom_undistorted", "custom_undistorted_cam"):
        (scene / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((20, 28, 3), np.uint8)).save(scene / "images/custom_undistorted/DSC_0001.JPG", format="JPEG")
    depth = np.full((20, 28), 4.0, np.float32)
    depth[0, :] = np.inf
    depth.tofile(scene / "ground_truth_depth/custom_undistorted/DSC_0001.JPG")
    np.savez(scene / "custom_undistorted_cam/DSC_0001.npz", intrinsics=np.array([[20.0, 0, 14], [0, 20, 10], [0, 0, 1]]),
             extrinsics=np.eye(4))
    e = read_pi3_frames(tmp_path, "eth3d", "courtyard", [0], load_size=28)
    assert e["valid"][0, 0].sum() == 0 and torch.allclose(e["points"][..., 2][e["valid"]], torch.tensor(4.0, dtype=torch.float64))
    with pytest.raises(InputError, match="asked for"):
        read_pi3_frames(tmp_path, "eth3d", "courtyard", [5])
    with pytest.raises(InputError, match="missing folder"):
        list_pi3_sequences(tmp_path, "dtu")


def test_evaluate_pi3_pointmap_oracle(tmp_path):
    _write_7scenes(tmp_path)

    def oracle(images):  # GT up to a similarity
        return oracle.points.float() * 2.0 + 0.3

    oracle.points = read_pi3_frames(tmp_path, "7scenes", "chess/seq-03", [0, 2], load_size=28)["points"]
    res = evaluate_pi3_pointmap(oracle, tmp_path, "7scenes", config=Pi3ReconConfig(kf_every=2, load_size=28),
                                progress=False, out_dir=tmp_path / "out")
    b = res["benchmarks"]["7scenes"]
    assert b["acc"] < 1e-5 and b["comp"] < 1e-5 and b["num_reconstructions"] == 1
    assert json.loads((tmp_path / "out/pointmap.json").read_text())["protocol"] == "pi3"


def test_cli_pointmap_pi3(tmp_path, capsys):
    from fin3r.cli import main

    _write_7scenes(tmp_path)
    assert main(["eval", "pointmap", "--protocol", "pi3", "--model", "vggt_tiny", "--random-weights", "--root", str(tmp_path),
                 "--benchmark", "7scenes", "--kf-every", "1", "--input-long-side", "28", "--quiet",
                 "--set", "load_size=28", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| 7scenes | acc ↓ |" in out and "Umeyama" in out
    assert main(["eval", "pointmap", "--protocol", "pi3", "--model", "vggt_tiny", "--random-weights", "--root", str(tmp_path),
                 "--benchmark", "nope"]) == 2


# --- readers against pi3's own dataset classes (golden) -------------------------------------

READER_FIXTURE = Path(__file__).parent / "fixtures" / "eval_pi3_readers.safetensors"
SUB = (slice(None), slice(None, None, 29), slice(None, None, 31))  # the stored subsample of each map


def write_pi3_trees(root: Path) -> dict:
    """Two frames of each of pi3's layouts with random content; returns {dataset: (sequence, ids)}."""
    rng = np.random.default_rng(7)

    def rigid(i):
        a = 0.2 * i + 0.1
        T = np.eye(4)
        T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        T[:3, 3] = [0.3 * i, -0.1, 0.2]
        return T

    seq = root / "7scenes/chess/seq-03"
    seq.mkdir(parents=True)
    (root / "7scenes/chess/TestSplit.txt").write_text("sequence3\n")
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(seq / f"frame-{i:06d}.color.png")
        mm = rng.integers(500, 12000, (480, 640)).astype(np.uint16)
        mm[rng.random((480, 640)) < 0.05] = 65535
        Image.fromarray(mm).save(seq / f"frame-{i:06d}.depth.proj.png")
        np.savetxt(seq / f"frame-{i:06d}.pose.txt", rigid(i))
    scene = root / "nrgbd/kitchen"
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    poses = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(scene / f"images/img{i}.png")
        Image.fromarray(rng.integers(0, 12000, (480, 640)).astype(np.uint16)).save(scene / f"depth/depth{i}.png")
        poses.append(rigid(i + 2))
    (scene / "poses.txt").write_text("\n".join(" ".join(f"{v:.9f}" for v in row) for T in poses for row in T) + "\n")
    scan = root / "dtu/scan1"
    for sub in ("images", "depths", "binary_masks", "cams"):
        (scan / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(scan / f"images/{i:08d}.jpg")
        d = (rng.random((48, 60)) * 200 + 500).astype(np.float32)
        d[rng.random((48, 60)) < 0.05] = np.nan
        np.save(scan / f"depths/{i:08d}.npy", d)
        m = np.zeros((64, 80), np.uint8)
        m[8:60, 10:75] = 255
        m[30, 30:40] = 128
        Image.fromarray(m).save(scan / f"binary_masks/{i:08d}.png")
        K = np.array([[70.0, 0, 30], [0, 70, 24], [0, 0, 1]])
        w2c = rigid(i + 4)
        text = ("extrinsic\n" + "\n".join(" ".join(map(str, r)) for r in w2c) + "\n\nintrinsic\n"
                + "\n".join(" ".join(map(str, r)) for r in K) + "\n\n425 2.5\n")
        (scan / f"cams/{i:08d}_cam.txt").write_text(text)
    scene = root / "eth3d/courtyard"
    for sub in ("images/custom_undistorted", "ground_truth_depth/custom_undistorted", "custom_undistorted_cam"):
        (scene / sub).mkdir(parents=True)
    for i in range(2):
        name = f"DSC_{i:04d}"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
            scene / f"images/custom_undistorted/{name}.JPG", format="JPEG")
        d = (rng.random((40, 56)) * 10 + 1).astype(np.float32)
        d[rng.random((40, 56)) < 0.1] = np.inf
        d.tofile(scene / f"ground_truth_depth/custom_undistorted/{name}.JPG")
        np.savez(scene / f"custom_undistorted_cam/{name}.npz", intrinsics=np.array([[50.0, 0, 28], [0, 50, 20], [0, 0, 1]]),
                 extrinsics=rigid(i + 6))
    return {"7scenes": ("chess/seq-03", [0, 1]), "nrgbd": ("kitchen", [0, 1]), "dtu": ("scan1", [0, 1]),
            "eth3d": ("courtyard", [0, 1])}


def test_readers_match_official_pi3_datasets(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    want = load_file(str(READER_FIXTURE))
    for name, (seq, ids) in write_pi3_trees(tmp_path).items():
        d = read_pi3_frames(tmp_path, name, seq, ids)
        assert torch.equal(d["valid"][SUB], want[f"{name}.valid"].bool()), name
        assert int(d["valid"].sum()) == int(want[f"{name}.valid_count"]), name
        v = want[f"{name}.valid"].bool()
        assert torch.allclose(d["points"][SUB][v], want[f"{name}.points"][v], rtol=1e-5, atol=1e-5), name
        assert torch.allclose(d["images"][:, :, ::29, ::31], want[f"{name}.images"], atol=1e-6), name
