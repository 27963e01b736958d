"""MoGe layout reader / evaluation view, monocular evaluation loop, world export, reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fin3r.errors import InputError
from fin3r.eval.monodepth import MonodepthConfig, evaluate_monodepth
from fin3r.eval.moge_layout import load_instance, read_moge_depth, write_instance, write_moge_depth
from fin3r.eval.report import compare_results, monodepth_table

LOADER_FIXTURE = Path(__file__).parent / "fixtures" / "eval_moge_loader.safetensors"


def _bench(root: Path, n=3, H=24, W=32, K=None, empty=()):
    """A MoGe-layout benchmark 'toy' with n instances; depth = a slanted plane (metres)."""
    folder = root / "toy"
    K = np.array([[0.9, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]]) if K is None else K
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        depth = (2 + i + np.linspace(0, 1, W)[None] * np.ones((H, 1))).astype(np.float32)
        depth[rng.random((H, W)) < 0.1] = np.nan
        if i in empty:
            depth[:] = np.nan
        write_instance(folder / f"scene/{i:03d}", rng.integers(0, 255, (H, W, 3)), depth, K)
        names.append(f"scene/{i:03d}")
    (folder / ".index.txt").write_text("\n".join(names) + "\n")
    (folder / "benchmark.json").write_text(json.dumps({"width": W, "height": H, "depth_unit": 1.0}))
    return folder


def test_depth_png_round_trip_with_unknown_and_far(tmp_path):
    d = np.linspace(0.5, 80, 200, dtype=np.float32).reshape(10, 20)
    d[0, 0], d[0, 1] = np.nan, np.inf
    write_moge_depth(tmp_path / "d.png", d)
    r = read_moge_depth(tmp_path / "d.png")
    assert np.isnan(r[0, 0]) and np.isinf(r[0, 1])
    ok = np.isfinite(d)
    assert np.max(np.abs(r[ok] / d[ok] - 1)) < 2e-4  # log quantisation step (far/near)^(1/65533)
    from PIL import Image

    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I") and float(im.info["near"]) == pytest.approx(float(d[ok].min()))


def test_loader_matches_official_moge_view():
    from safetensors import safe_open
    from safetensors.torch import load_file

    want = load_file(str(LOADER_FIXTURE))
    with safe_open(str(LOADER_FIXTURE), "pt") as f:
        meta = f.metadata()
    import tempfile

    for case in range(2):
        m = json.loads(meta[f"case{case}"])
        rng = np.random.default_rng(case)
        H, W = m["H"], m["W"]
        depth = (rng.random((H, W)) * 5 + 1).astype(np.float32)
        depth[rng.random((H, W)) < 0.2] = np.nan
        depth[:3] = np.inf
        depth[5, 5] = 5000.0  # dropped by the far-depth rule
        with tempfile.TemporaryDirectory() as tmp:
            write_instance(Path(tmp) / "i", np.zeros((H, W, 3)), depth, np.array(m["K"]))
            inst = load_instance(tmp, "i", m["width"], m["height"], depth_unit=1.0)
        mask = want[f"case{case}.mask"].bool()
        assert torch.equal(inst.mask, mask)
        assert torch.allclose(inst.depth[mask], want[f"case{case}.depth"][mask], rtol=1e-5)
        assert torch.allclose(inst.intrinsics, want[f"case{case}.intrinsics"])


def test_loader_is_identity_for_a_centred_view_at_the_benchmark_size(tmp_path):
    folder = _bench(tmp_path, n=1)
    inst = load_instance(folder, "scene/000", 32, 24, depth_unit=2.0)
    raw = read_moge_depth(folder / "scene/000/depth.png")
    assert torch.equal(inst.mask, torch.from_numpy(np.isfinite(raw)))
    assert torch.allclose(inst.depth[inst.mask], 2 * torch.from_numpy(raw)[inst.mask], rtol=1e-5)
    assert inst.is_metric and inst.points.shape == (24, 32, 3)
    assert torch.allclose(inst.points[..., 2], inst.depth)


def test_missing_files_name_path_and_benchmark(tmp_path):
    folder = _bench(tmp_path, n=2)
    (folder / "scene/001/depth.png").unlink()
    with pytest.raises(InputError, match=r"benchmark toy: missing file .*scene/001/depth.png"):
        evaluate_monodepth(lambda img: {}, tmp_path, ["toy"], progress=False)
    with pytest.raises(InputError, match="unknown benchmark 'nope'"):
        evaluate_monodepth(lambda img: {}, tmp_path, ["nope"], progress=False)
    (folder / ".index.txt").unlink()
    with pytest.raises(InputError, match=r"benchmark toy: missing split file"):
        evaluate_monodepth(lambda img: {}, tmp_path, ["toy"], progress=False)


class _Oracle:
    """Predicts 3 x the GT depth of the instance whose image it is given (and counts calls)."""

    def __init__(self, folder, names, H, W):
        self.table = {}
        for n in names:
            inst = load_instance(folder, n, W, H, depth_unit=1.0)
            self.table[inst.image.sum().item()] = inst.depth.clone()
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        depth = self.table[image.sum().item()]
        return {"depth_scale_invariant": 3 * depth + (depth == 0).float()}


def test_oracle_scores_perfectly_empty_instances_are_excluded_and_resume(tmp_path):
    folder = _bench(tmp_path, n=3, empty=(1,))
    oracle = _Oracle(folder, ["scene/000", "scene/002"], 24, 32)
    out = tmp_path / "out"
    res = evaluate_monodepth(oracle, tmp_path, ["toy"], out_dir=out, progress=False, model_tag="oracle")
    s = res["benchmarks"]["toy"]
    assert s["num_images"] == 2 and s["num_excluded"] == 1 and res["excluded"]["toy"] == ["scene/001"]
    assert s["depth_scale_invariant"]["rel"] < 1e-6 and s["depth_scale_invariant"]["delta1"] == 1.0
    assert s["depth_affine_invariant"]["rel"] < 1e-6 and s["depth_median"]["rel"] < 1e-6
    assert res["mean"]["depth_scale_invariant"]["rel"] == s["depth_scale_invariant"]["rel"]
    assert [r["name"] for r in res["records"]["toy"]] == ["scene/000", "scene/002"]
    assert res["records"]["toy"][0]["valid_pixels"] > 0
    csv_lines = (out / "monodepth" / "toy.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "depth_scale_invariant.rel" in csv_lines[0]
    assert "Excluded instances" in (out / "monodepth.md").read_text()
    assert json.loads((out / "monodepth.json").read_text())["benchmarks"]["toy"]["num_excluded"] == 1
    calls = oracle.calls
    again = evaluate_monodepth(oracle, tmp_path, ["toy"], out_dir=out, progress=False, model_tag="oracle")
    assert oracle.calls == calls and again["benchmarks"] == res["benchmarks"]  # resumed, not re-run
    evaluate_monodepth(oracle, tmp_path, ["toy"], out_dir=out, progress=False, model_tag="oracle",
                       config=MonodepthConfig(variants=["depth_scale_invariant"]))
    assert oracle.calls == calls + 2  # different settings: evaluated again
    evaluate_monodepth(oracle, tmp_path, ["toy"], out_dir=out, progress=False)
    assert oracle.calls == calls + 4  # no model tag: never resumed


def test_world_export_and_a_tiny_model_end_to_end(tmp_path):
    from fin3r.eval.world_benchmarks import export_world_benchmarks
    from fin3r.models import build_model

    torch.manual_seed(0)
    export_world_benchmarks(tmp_path / "data", num_images=2, height=32, width=48, tasks=("monodepth",))
    spec = json.loads((tmp_path / "data/world/benchmark.json").read_text())
    assert spec["width"] == 48 and spec["depth_unit"] == 1.0
    assert (tmp_path / "data/world/0000/edge.png").is_file()
    model = build_model("dust3r_tiny").eval()
    cfg = MonodepthConfig(benchmarks=["world"], variants=["depth_scale_invariant", "depth_median"])
    res = evaluate_monodepth(model, tmp_path / "data", out_dir=tmp_path / "out", config=cfg,
                             model_tag="dust3r_tiny", progress=False)
    s = res["benchmarks"]["world"]["depth_scale_invariant"]
    assert 0 < s["rel"] < 10 and 0 <= s["delta1"] <= 1 and "rel_edge" in s
    table = monodepth_table(res)
    assert "| dust3r_tiny |" in table and "world Rel↓" in table
    tuned = json.loads(json.dumps({k: res[k] for k in ("task", "model", "benchmarks", "mean")}))
    tuned["model"] = "tuned"
    tuned["benchmarks"]["world"]["depth_scale_invariant"]["rel"] -= 0.01
    cmp = compare_results(res, tuned, keys=["depth_scale_invariant.rel"])
    assert "| world | depth_scale_invariant.rel ↓ |" in cmp and "-1.00 | yes |" in cmp


def test_segmented_sharp_benchmark_reports_local_points_and_boundary(tmp_path):
    from fin3r.eval.moge_layout import write_moge_segmentation

    folder = _bench(tmp_path, n=1, H=48, W=64)
    ids = np.zeros((48, 64), np.uint16)
    ids[:, 32:] = 7
    ids[:4, :4] = 9  # too small (MoGe keeps segments of >= min_area pixels)
    write_moge_segmentation(folder / "scene/000/segmentation.png", ids, {"wall": 7, "sky": 0, "cup": 9})
    spec = json.loads((folder / "benchmark.json").read_text())
    spec.update(include_segmentation=True, has_sharp_boundary=True)
    (folder / "benchmark.json").write_text(json.dumps(spec))
    inst = load_instance(folder, "scene/000", 64, 48, 1.0, include_segmentation=True)
    assert inst.segment_ids == [7] and set(torch.unique(inst.segmentation).tolist()) <= {0, 7, 9}

    def oracle(image):  # perfect up to scale
        return {"depth_scale_invariant": inst.depth * 3, "points_scale_invariant": inst.points * 3}

    res = evaluate_monodepth(oracle, tmp_path, ["toy"], config=MonodepthConfig(points=True), progress=False)
    b = res["benchmarks"]["toy"]
    assert b["local_points"]["rel"] < 1e-5 and b["local_points"]["delta1"] == 1.0
    assert b["boundary"]["radius1_f1"] == 0.0  # a plane has no occlusion boundary: MoGe's F1 is 0
    assert res["aggregation"]["images"].startswith("mean over images")


def test_paper_table_rows_differences_and_task_mismatch():
    from fin3r.eval.paper_table import paper_table

    def rel(model, a, b):
        return {"task": "relpose", "model": model, "solver": "pnp", "translation_sign": "signed",
                "benchmarks": {"scannet1500": {"auc@5": a, "auc@10": b, "auc@20": 0.7}}}

    rows = [rel("base", 0.3161, 0.5377), rel("fin3r", 0.3373, 0.5567), rel("ctrl", 0.30, 0.50)]
    md = paper_table(rows)
    assert "| fin3r | 33.73 (+2.12) | 55.67 (+1.90) | 70.00 (+0.00) |" in md
    assert "| base | 31.61 | 53.77 | 70.00 |" in md and "solver `pnp`" in md
    tex = paper_table(rows, "latex")
    assert r"ctrl & 30.00 (-1.61) & 50.00 (-3.77) & 70.00 (+0.00) \\" in tex
    with pytest.raises(ValueError, match="different tasks"):
        paper_table([rows[0], {"task": "monodepth", "benchmarks": {}}])


def test_fov_from_a_model_that_predicts_intrinsics(tmp_path):
    from fin3r.models import load_model

    _bench(tmp_path, n=1, H=28, W=42)
    torch.manual_seed(0)
    vggt = load_model("vggt_tiny")
    cfg = MonodepthConfig(fov=True, variants=["depth_scale_invariant", "fov_x"], input_long_side=28)
    res = evaluate_monodepth(vggt, tmp_path, ["toy"], config=cfg, progress=False)
    fov = res["benchmarks"]["toy"]["fov_x"]
    assert fov["mae"] == pytest.approx(abs(fov["deviation"])) and np.isfinite(fov["mae"])
    res = evaluate_monodepth(vggt, tmp_path, ["toy"], config=MonodepthConfig(input_long_side=28), progress=False)
    assert "fov_x" not in res["benchmarks"]["toy"]  # opt-in (a second forward)


def test_paper_table_paired_differences_from_records():
    from fin3r.eval.paper_table import paired_difference, paper_table

    def res(model, rels):
        recs = [{"name": f"i{k}", "valid_pixels": 10, "depth_scale_invariant": {"rel": v, "delta1": 0.9}}
                for k, v in enumerate(rels)]
        mean = sum(rels) / len(rels)
        return {"task": "monodepth", "model": model, "config": {"table_variant": "depth_scale_invariant"},
                "benchmarks": {"b": {"depth_scale_invariant": {"rel": mean, "delta1": 0.9}}}, "records": {"b": recs}}

    base, tuned = res("base", [0.10, 0.20, 0.30]), res("tuned", [0.08, 0.19, 0.27])
    d, se, n = paired_difference(base, tuned, "b", "depth_scale_invariant", "rel")
    diffs = [-0.02, -0.01, -0.03]
    assert n == 3 and d == pytest.approx(-0.02) and se == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3))
    md = paper_table([base, tuned])
    assert f"({100 * d:+.2f} ± {100 * se:.2f})" in md and "standard error of the paired" in md
    assert r"$\pm$" in paper_table([base, tuned], "latex")
    assert paired_difference(base, tuned, "b", "depth_median", "rel") is None  # pixel-weighted: not a plain mean
