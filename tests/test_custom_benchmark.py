"""`fin3r data moge-benchmark` (a MoGe-layout monodepth benchmark from images + depth maps),
`benchmark.json` checking, and `fin3r data world-images` for the oracle teacher."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.data.world import WorldMonoDataset
from fin3r.errors import InputError
from fin3r.eval.moge_layout import list_instances, load_instance
from fin3r.eval.monodepth import MonodepthConfig, evaluate_monodepth, read_benchmark_json


def _shots(tmp_path, n=3, H=24, W=32, png_mm=False):
    """World renders saved as a user's folder: shots/<i>.png, depths/<i>.npy (metres) or 16-bit mm."""
    ds = WorldMonoDataset(n, H, W, seed=3, split="test")
    (tmp_path / "shots").mkdir()
    (tmp_path / "depths").mkdir()
    truth = {}
    for i in range(n):
        s = ds[i]
        Image.fromarray((s["img"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(tmp_path / "shots" / f"v{i}.png")
        depth = torch.where(s["valid"], s["depth"], torch.zeros_like(s["depth"])).numpy()
        if png_mm:
            Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(tmp_path / "depths" / f"v{i}_depth.png")
        else:
            np.save(tmp_path / "depths" / f"v{i}.npy", depth)
        truth[f"v{i}"] = (depth, s["K"].numpy())
    np.savetxt(tmp_path / "K.txt", ds[0]["K"].numpy())
    return truth


def test_a_benchmark_from_depth_maps_reads_back_exactly_and_scores_an_oracle_perfectly(tmp_path, capsys):
    truth = _shots(tmp_path)
    (tmp_path / "shots" / "orphan.png").write_bytes((tmp_path / "shots" / "v0.png").read_bytes())  # no depth map
    out = tmp_path / "bench" / "Mine"
    assert main(["data", "moge-benchmark", "--images", str(tmp_path / "shots"), "--depths", str(tmp_path / "depths"),
                 "--intrinsics", str(tmp_path / "K.txt"), "--metric", "--out", str(out)]) == 0
    assert "skipped orphan.png" in capsys.readouterr().out
    assert list_instances(out) == ["v0", "v1", "v2"]
    spec = read_benchmark_json(out / "benchmark.json")
    assert spec["width"] == 32 and spec["height"] == 24 and spec["depth_unit"] == 1.0
    # at its own size the evaluation view is the image itself: depth back within MoGe's 16-bit coding
    inst = load_instance(out, "v1", 32, 24, depth_unit=1.0)
    depth, K = truth["v1"]
    valid = depth > 0
    assert np.array_equal(inst.mask.numpy(), valid)
    assert np.allclose(inst.depth.numpy()[valid], depth[valid], rtol=2e-4)
    table = {float(load_instance(out, n, 32, 24, 1.0).image.sum()): load_instance(out, n, 32, 24, 1.0).depth
             for n in ("v0", "v1", "v2")}

    def oracle(image):
        d = table[float(image.sum())]
        return {"depth_scale_invariant": 2.5 * d + (d == 0).float(), "depth_metric": d + (d == 0).float()}

    res = evaluate_monodepth(oracle, tmp_path / "bench", ["Mine"], progress=False,
                             config=MonodepthConfig(variants=["depth_metric", "depth_scale_invariant"]))
    s = res["benchmarks"]["Mine"]
    assert s["num_images"] == 3 and s["depth_metric"]["rel"] < 1e-6 and s["depth_scale_invariant"]["rel"] < 1e-6


def test_png_depths_with_a_scale_and_a_relative_benchmark(tmp_path, capsys):
    truth = _shots(tmp_path, n=2, png_mm=True)
    args = ["data", "moge-benchmark", "--images", str(tmp_path / "shots"), "--depths", str(tmp_path / "depths"),
            "--fov-x", "60", "--relative", "--out", str(tmp_path / "b" / "Rel")]
    assert main(args) == 2  # a 16-bit PNG without a scale is refused, every image: nothing usable
    assert "--depth-scale" in capsys.readouterr().err
    assert main(args + ["--depth-scale", "0.001"]) == 0
    assert read_benchmark_json(tmp_path / "b" / "Rel" / "benchmark.json")["depth_unit"] is None
    inst = load_instance(tmp_path / "b" / "Rel", "v0", 32, 24)
    depth = truth["v0"][0]
    assert not inst.is_metric and np.allclose(inst.depth.numpy()[depth > 0], depth[depth > 0], atol=6e-4)


def test_benchmark_json_is_checked(tmp_path):
    path = tmp_path / "benchmark.json"
    for data, message in (({"width": 8}, "missing 'height'"), ({"width": 8, "height": 6, "unit": 1}, "unknown key"),
                          ({"width": 8, "height": -6}, "positive integer"),
                          ({"width": 8, "height": 6, "depth_unit": "m"}, "positive number"), ([1, 2], "JSON object")):
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=message):
            read_benchmark_json(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        read_benchmark_json(path)
    path.write_text(json.dumps({"width": 8, "height": 6, "depth_unit": None, "source": "x"}))
    assert read_benchmark_json(path)["depth_unit"] is None


def test_world_images_for_the_oracle_teacher(tmp_path):
    assert main(["data", "world-images", "--out", str(tmp_path / "w"), "--num", "2", "--height", "24", "--width",
                 "32"]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["world_000000.png", "world_000001.png"]
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "w"), "--out", str(tmp_path / "l")]) == 0
    assert json.loads((tmp_path / "l" / "label_report_0of1.json").read_text())["labelled"] == 2
