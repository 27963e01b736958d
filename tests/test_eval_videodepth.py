"""fin3r.eval.video_layouts / videodepth: readers on tiny trees in the real formats, per-sequence
alignment (known answers), the model paths, the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.errors import InputError
from fin3r.eval.cut3r_depth import Cut3rDepthSettings
from fin3r.eval.video_layouts import list_video_sequences, read_png_depth, read_sintel_dpt, read_video_gt, write_sintel_dpt
from fin3r.eval.videodepth import VideoDepthConfig, evaluate_videodepth, score_sequence, sequence_depth


def _gt_sequence(seed, T=3, H=12, W=16):
    g = np.random.default_rng(seed)
    return (g.random((T, H, W)) * 20 + 1).astype(np.float32)


def _write_tree(root, T=3, H=12, W=16):
    """CUT3R's data/ layouts: Sintel (.dpt), Bonn (uint16 / 5000), KITTI (uint16 / 256, sparse)."""
    gts = {}
    for i, seq in enumerate(("alley_2", "cave_4")):
        d = _gt_sequence(i, T, H, W)
        gts[("sintel", seq)] = d
        for t in range(T):
            for sub, ext in (("final", "png"), ("depth", "dpt")):
                (root / f"sintel/training/{sub}/{seq}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(root / f"sintel/training/final/{seq}/frame_{t + 1:04d}.png")
            write_sintel_dpt(root / f"sintel/training/depth/{seq}/frame_{t + 1:04d}.dpt", d[t])
    for seq in ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous"):
        base = root / f"bonn/rgbd_bonn_dataset/rgbd_bonn_{seq}"
        (base / "rgb_110").mkdir(parents=True)
        (base / "depth_110").mkdir(parents=True)
        raw = np.round(_gt_sequence(len(seq), T, H, W) / 4 * 5000).astype(np.uint16)
        raw[:, 0, 0] = 0
        gts[("bonn", seq)] = raw
        for t in range(T):
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(base / f"rgb_110/{t:06d}.png")
            Image.fromarray(raw[t]).save(base / f"depth_110/{t:06d}.png")
    base = root / "kitti/depth_selection/val_selection_cropped"
    for seq in ("2011_09_26_drive_0002_sync_02",):
        (base / f"image_gathered/{seq}").mkdir(parents=True)
        (base / f"groundtruth_depth_gathered/{seq}").mkdir(parents=True)
        raw = np.round(_gt_sequence(9, T, H, W) * 256).astype(np.uint16)
        raw[:, ::2] = 0  # sparse
        gts[("kitti", seq)] = raw
        for t in range(T):
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(base / f"image_gathered/{seq}/{t:010d}.png")
            Image.fromarray(raw[t]).save(base / f"groundtruth_depth_gathered/{seq}/{t:010d}.png")
    return gts


def test_readers_on_the_real_layouts(tmp_path):
    gts = _write_tree(tmp_path)
    sintel = list_video_sequences(tmp_path, "sintel")
    assert [s.name for s in sintel] == ["alley_2", "cave_4"] and len(sintel[0].images) == 3
    gt = read_video_gt(sintel[1])
    assert gt.dtype == np.float32 and np.array_equal(gt, gts[("sintel", "cave_4")])
    bonn = list_video_sequences(tmp_path, "bonn")
    assert [s.name for s in bonn][:2] == ["balloon2", "crowd2"]
    b = read_video_gt(bonn[0])
    raw = gts[("bonn", "balloon2")]
    assert b.dtype == np.float64 and b[0, 0, 0] == -1.0 and b[0, 1, 1] == raw[0, 1, 1] / 5000.0
    k = read_video_gt(list_video_sequences(tmp_path, "kitti")[0])
    assert (k[:, ::2] == -1).all() and k[0, 1, 1] == gts[("kitti", "2011_09_26_drive_0002_sync_02")][0, 1, 1] / 256.0
    with pytest.raises(InputError, match="alley_2.*sintel14|missing|no frames"):
        list_video_sequences(tmp_path, "sintel", "sintel14")  # the 14 are not all there
    (tmp_path / "bad.dpt").write_bytes(b"\0" * 20)
    with pytest.raises(InputError, match="not a Sintel .dpt"):
        read_sintel_dpt(tmp_path / "bad.dpt")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d8.png")
    with pytest.raises(InputError, match="16-bit"):
        read_png_depth(tmp_path / "d8.png", 256.0)
    (tmp_path / "sintel/training/depth/cave_4/frame_0003.dpt").unlink()
    with pytest.raises(InputError, match="3 images but 2 depth maps"):
        list_video_sequences(tmp_path, "sintel")


def test_per_sequence_alignment_known_answers():
    gt = torch.from_numpy(_gt_sequence(0, T=4)).double()
    s = Cut3rDepthSettings()
    one_scale = gt.float() * 0.37  # off by one known scale for the whole sequence
    res = score_sequence(one_scale, gt, ["scale", "median", "scale&shift"], s, per_frame=True, lad_iters=100)
    for a in ("scale", "median", "scale&shift"):
        assert res[a]["rel"] < 1e-5 and res[a]["delta1"] == 1.0, a
    drift = gt.float() * torch.tensor([0.5, 1.0, 2.0, 4.0])[:, None, None]  # a different scale per frame
    res = score_sequence(drift, gt, ["scale", "median"], s, per_frame=True)
    for a in ("scale", "median"):
        assert res[f"{a}_per_frame"]["rel"] < 1e-6  # per-frame alignment forgives the drift...
        assert res[a]["rel"] > 0.2  # ...per-sequence alignment does not
    assert res["scale"]["valid_pixels"] == gt.numel()


def test_evaluate_videodepth_oracle_and_cli(tmp_path, capsys):
    _write_tree(tmp_path)

    def oracle(images):  # the GT of the (first) sequence, off by one scale
        return oracle.gt * 3.7

    for name in ("sintel", "bonn", "kitti"):
        oracle.gt = torch.from_numpy(read_video_gt(list_video_sequences(tmp_path, name)[0])).float().clamp_min(0)
        aligns = ["scale", "scale&shift"] if name == "kitti" else ["scale"]
        cfg = VideoDepthConfig(datasets=[name], alignments=aligns, per_frame=name == "bonn", max_sequences=1,
                               lad_iters=100)
        res = evaluate_videodepth(oracle, tmp_path, config=cfg, progress=False, out_dir=tmp_path / "out")
        assert res["benchmarks"][name]["scale"]["rel"] < 1e-5
        if name == "kitti":
            assert res["benchmarks"][name]["scale&shift"]["rel"] < 1e-3  # Adam's LAD: approximate
        if name == "bonn":
            assert res["benchmarks"][name]["scale_per_frame"]["rel"] < 1e-5
        assert res["depth_source"] == "callable" and "weighted by valid pixels" in res["aggregation"]["sequences"]
    saved = json.loads((tmp_path / "out/videodepth.json").read_text())
    assert saved["task"] == "videodepth" and saved["records"]["kitti"][0]["frames"] == 3

    from fin3r.cli import main

    assert main(["eval", "videodepth", "--model", "vggt_tiny", "--random-weights", "--root", str(tmp_path), "--datasets", "bonn",
                 "--max-sequences", "1", "--input-long-side", "28", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| vggt_tiny | bonn | scale |" in out and "multi-view" in out
    assert main(["eval", "videodepth", "--model", "vggt_tiny", "--random-weights", "--root", str(tmp_path), "--datasets", "nope"]) == 2


def test_sequence_depth_paths():
    from fin3r.models import load_model

    imgs = torch.rand(3, 3, 24, 32)
    torch.manual_seed(0)
    dust3r = load_model("dust3r_tiny")
    d, src = sequence_depth(dust3r, imgs, long_side=64)
    assert src == "mono per frame" and d.shape[0] == 3
    cut3r = load_model("cut3r_tiny")
    d, src = sequence_depth(cut3r, imgs, window=2, long_side=64)
    assert src == "multi-view" and d.shape[0] == 3 and torch.isfinite(d).all()


def test_cut3r_monocular_protocol_on_nyu_and_video_layouts(tmp_path, capsys):
    from fin3r.cli import main

    _write_tree(tmp_path)
    nyu = tmp_path / "nyu-v2/val"
    (nyu / "nyu_images").mkdir(parents=True)
    (nyu / "nyu_depths").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(nyu / f"nyu_images/{i:05d}.png")
        np.save(nyu / f"nyu_depths/{i:05d}.npy", _gt_sequence(i, T=1)[0])
    with pytest.raises(InputError, match="single images"):
        evaluate_videodepth(lambda x: x[:, 0], tmp_path, ["nyu"], progress=False)

    def oracle(images):  # each frame off by its own scale: CUT3R's per-frame median removes it
        return oracle.gt * torch.tensor([2.0, 5.0])[:, None, None]

    from fin3r.eval.video_layouts import read_video_gt

    oracle.gt = torch.from_numpy(read_video_gt(list_video_sequences(tmp_path, "nyu")[0]))
    res = evaluate_videodepth(oracle, tmp_path, ["nyu"], config=VideoDepthConfig(mono=True, alignments=["median"]),
                              progress=False)
    assert res["alignments"] == ["median_per_frame"] and res["benchmarks"]["nyu"]["median_per_frame"]["rel"] < 1e-6
    assert "frames" in res["aggregation"]
    assert main(["eval", "videodepth", "--mono", "--model", "dust3r_tiny", "--random-weights", "--root", str(tmp_path), "--max-sequences",
                 "1", "--input-long-side", "32", "--quiet", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "| dust3r_tiny | nyu | median_per_frame |" in out and "monocular protocol" in out


VIDEO_FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "eval_cut3r_video.safetensors"
ALIGN_KEYS = ("rel", "sq_rel", "rmse", "log_rmse", "delta0", "delta1", "delta2", "delta3")


def test_end_to_end_against_cut3r_eval_scripts(tmp_path):
    """CUT3R's eval_depth.py (video) and eval_metrics.py (mono) on the same tiny trees and the same
    low-resolution predictions: readers, pairing, bicubic upsampling, alignment, aggregation."""
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    want = load_file(str(VIDEO_FIXTURE))
    with safetensors.safe_open(str(VIDEO_FIXTURE), "pt") as f:
        meta = f.metadata()
    _write_tree(tmp_path)
    for name in ("sintel", "bonn", "kitti"):
        seqs = [s.name for s in list_video_sequences(tmp_path, name)]
        video = ["scale", "metric"] + (["scale&shift"] if name == "kitti" else [])  # Adam: 1000 steps, one data set
        for mono, aligns in ((False, video), (True, ["median"])):
            queue = [want[f"{name}.{s}.pred"] for s in seqs]
            res = evaluate_videodepth(lambda images: queue.pop(0), tmp_path, [name], progress=False,
                                      config=VideoDepthConfig(alignments=aligns, mono=mono))
            for a in aligns:
                key = f"mono.{name}" if mono else f"video.{name}.{a}"
                got = res["benchmarks"][name][f"{a}_per_frame" if mono else a]
                assert json.loads(meta[f"{key}.keys"])[:8] == ["Abs Rel", "Sq Rel", "RMSE", "Log RMSE", "δ < 1.",
                                                               "δ < 1.25", "δ < 1.25^2", "δ < 1.25^3"]
                vals = torch.tensor([got[k] for k in ALIGN_KEYS], dtype=torch.float64)
                tol = 1e-5 if a == "scale&shift" else 1e-7
                assert torch.allclose(vals, want[f"{key}.values"][:8], rtol=tol, atol=tol), (name, a, vals)
