"""The demo's pieces (world slices, blurred supervision, pairs, paired statistics, evaluation) and a
very small end-to-end run of ``fin3r demo`` (tiny base, a few scenes, a few steps)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fin3r.demo import (
    DemoConfig,
    DemoWorldConfig,
    FinetuneConfig,
    WorldViews,
    blur_depth,
    edge_mask,
    evaluate_world,
    pair_batch,
    paired_difference,
    render_world_views,
    run_demo,
    sample_pairs,
    variant_train_config,
)
from fin3r.geometry import depth_to_points, relative_pose, transform_points
from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction

H, W = 16, 24


@pytest.fixture(scope="module")
def world() -> WorldViews:
    return render_world_views(3, 3, H, W, seed=0, split="test")


def test_render_is_deterministic_and_in_contract(world):
    again = render_world_views(3, 3, H, W, seed=0, split="test")
    assert torch.equal(world.img, again.img) and torch.equal(world.depth, again.depth)
    assert world.img.shape == (3, 3, 3, H, W) and world.img.dtype == torch.uint8
    assert world.depth.shape == world.valid.shape == (3, 3, H, W)
    assert world.valid.all() and (world.depth > 0).all()  # indoor rooms: every pixel hits
    other = render_world_views(3, 3, H, W, seed=0, split="train")
    assert not torch.equal(world.img, other.img)  # disjoint splits


def test_blur_depth():
    depth = torch.rand(2, 16, 16) + 1
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    assert torch.equal(blur_depth(depth, valid, 1), depth)
    const = torch.full((1, 16, 16), 3.0)
    assert torch.allclose(blur_depth(const, valid[:1], 8), const)
    step = torch.ones(1, 16, 16)
    step[..., 8:] = 2.0
    low = blur_depth(step, valid[:1], 8)
    assert low[0, 0, 0] == pytest.approx(1.0) and low[0, 0, -1] == pytest.approx(2.0)
    assert 1.0 < low[0, 0, 8] < 2.0  # the edge is smeared: the detail a coarse model lacks
    holes = valid[:1].clone()
    holes[..., :4] = False
    assert (blur_depth(step, holes, 8)[~holes] == 0).all()
    edges = edge_mask(step, valid[:1], 8)
    assert edges[0, :, 7:9].all() and not edges[0, :, :3].any()


def test_pair_batch_points_are_consistent(world):
    scene = torch.tensor([0, 1, 2])
    a, b = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 2])
    batch = pair_batch(world, scene, a, b)
    assert batch["img"].shape == (3, 2, 3, H, W) and batch["pts3d"].shape == (3, 2, H, W, 3)
    own0 = depth_to_points(world.depth[scene, a], world.K[scene, a])
    assert torch.allclose(batch["pts3d"][:, 0], own0, atol=1e-5)  # view 0 in its own frame
    # view 1's points, taken to the world with its pose, equal view-0-frame points taken to the world
    own1 = depth_to_points(world.depth[scene, b], world.K[scene, b])
    world_1 = transform_points(world.cam2world[scene, b], own1)
    world_via0 = transform_points(world.cam2world[scene, a], batch["pts3d"][:, 1])
    assert torch.allclose(world_1, world_via0, atol=1e-4)
    assert torch.allclose(batch["pts3d"][2, 0], batch["pts3d"][2, 1])  # a self-pair


def test_sample_pairs():
    gen = torch.Generator().manual_seed(0)
    scene, a, b = sample_pairs(gen, 5, 4, 2000, self_frac=0.25)
    same = (a == b).float().mean().item()
    assert 0.2 < same < 0.3 and scene.max() < 5 and b.max() < 4


def test_paired_difference():
    before = torch.tensor([1.0, 2.0, 3.0, 4.0])
    after = before - torch.tensor([0.1, 0.3, 0.1, 0.3])
    p = paired_difference(after, before)
    assert p["diff"] == pytest.approx(-0.2)
    assert p["se"] == pytest.approx(torch.tensor([0.1, 0.3, 0.1, 0.3]).std().item() / 2)
    assert p["rel"] == pytest.approx(-0.2 / 2.5) and p["n"] == 4
    nan = paired_difference(torch.tensor([1.0, math.nan]), torch.tensor([2.0, 2.0]))
    assert nan["n"] == 1 and nan["diff"] == pytest.approx(-1.0)


class _GroundTruthModel(Reconstructor):
    """A stand-in that looks its inputs up in a rendered world and answers with the truth (depth
    times ``scale``), to check that :func:`evaluate_world` scores a perfect model as perfect."""

    family = "dust3r"
    patch_size = 8

    def __init__(self, views: WorldViews, scale: float = 2.0, noise: float = 0.0):
        super().__init__()
        self.views, self.scale, self.noise = views, scale, noise
        self.flat = views.img.flatten(0, 1).float() / 255.0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def _find(self, img):
        d = (img[:, None] - self.flat[None]).abs().flatten(2).amax(-1)
        idx = d.argmin(1)
        return idx // self.views.num_views, idx % self.views.num_views

    def _depth(self, img):
        n, v = self._find(img)
        d = self.views.depth[n, v] * self.scale
        if self.noise:
            d = d * (1 + self.noise * torch.randn(d.shape, generator=torch.Generator().manual_seed(0)))
        return d, n, v

    def predict_mono(self, img):
        d, n, v = self._depth(img)
        pts = depth_to_points(d, self.views.K[n, v])
        return MonoPrediction(depth=d, conf=torch.ones_like(d), pts3d=pts)

    def predict_views(self, imgs):
        d0, n, a = self._depth(imgs[:, 0])
        d1, _, b = self._depth(imgs[:, 1])
        rel = relative_pose(self.views.cam2world[n, a], self.views.cam2world[n, b])
        p0 = depth_to_points(d0, self.views.K[n, a])
        p1 = transform_points(rel, depth_to_points(d1 / self.scale, self.views.K[n, b])) * self.scale
        return ViewsPrediction(pts3d=torch.stack([p0, p1], 1), conf=torch.ones_like(torch.stack([d0, d1], 1)))

    def encode(self, img):
        return torch.ones(img.shape[0], 6, 4)

    def encode_prenorm(self, img):
        return 3 * torch.ones(img.shape[0], 6, 4)


def test_evaluate_world_scores_the_truth_as_perfect(world):
    ev = WorldViews(world.img[:, :2], world.depth[:, :2], world.valid[:, :2], world.K[:, :2], world.cam2world[:, :2])
    res = evaluate_world(_GroundTruthModel(ev), ev, edge_pool=4)
    s = res["summary"]
    assert s["abs_rel"] < 1e-5 and s["edge_abs_rel"] < 1e-5 and s["delta1"] == 1.0
    assert s["mv_err"] < 1e-5 and s["auc5"] > 0.95
    assert s["norm_post"] == pytest.approx(2.0) and s["norm_pre"] == pytest.approx(6.0)
    assert res["per_scene"]["abs_rel"].shape == (3,) and res["n_views"] == 6
    noisy = evaluate_world(_GroundTruthModel(ev, noise=0.1), ev, edge_pool=4)["summary"]
    assert 0.03 < noisy["abs_rel"] < 0.15 and noisy["delta1"] < 1.0  # the metrics can fail


def test_variant_configs_have_equal_steps():
    cfg = DemoConfig(finetune=FinetuneConfig(steps=10, batch_size=4, mono_fraction=0.5))
    per_step = {}
    for name in ("fin3r", "replay_only", "naive_lora", "renorm_output_replay"):
        tc = variant_train_config(cfg, name, "unused")
        per_step[name] = (tc.data.mono_per_epoch // 4, tc.data.replay_per_epoch // 4, tc.lora.mode)
        assert sum(per_step[name][:2]) == 10 and tc.max_steps == 10
    assert per_step["fin3r"] == (5, 5, "weight_row")
    assert per_step["replay_only"] == (0, 10, "weight_row")
    assert per_step["naive_lora"] == (10, 0, None)
    assert per_step["renorm_output_replay"][2] == "output"


def test_run_demo_tiny_end_to_end(tmp_path):
    from fin3r.models import build_model, save_model

    torch.manual_seed(0)
    base = build_model({"family": "dust3r", "head_type": "linear", "enc_embed_dim": 32, "enc_depth": 2,
                        "enc_num_heads": 2, "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2,
                        "patch_size": 8, "img_size": [16, 24]})
    path = tmp_path / "base.safetensors"
    save_model(base, path)
    path.with_suffix(".json").write_text(json.dumps({"recipe": {"pool": 8, "seed": 0}, "params": 1}))
    cfg = DemoConfig(
        base=str(path), out_dir=str(tmp_path / "demo"), threads=1, jobs=1, progress=False, figure_views=2,
        world=DemoWorldConfig(height=H, width=W, label_scenes=3, label_views=2, replay_scenes=3, replay_views=2,
                              replay_pairs=8, eval_scenes=4),
        finetune=FinetuneConfig(steps=4, batch_size=2, warmup_steps=1),
    )
    report = run_demo(cfg, echo=lambda line: None)
    for name in ("base", "fin3r", "replay_only"):
        assert all(math.isfinite(v) for v in report["models"][name].values()), name
    assert report["training"]["fin3r"]["steps"] == 4 and report["training"]["replay_only"]["steps"] == 4
    vc = report["vs_control"]["fin3r"]["edge_abs_rel"]
    assert vc["n"] == 4 and math.isfinite(vc["diff"])
    for f in ("report.json", "report.md", "figure.png", "view.html"):
        assert (tmp_path / "demo" / f).is_file()
    page = (tmp_path / "demo" / "view.html").read_text()  # the before/after viewer of the figure's pairs
    data = json.loads(page.split('id="fin3r-data">', 1)[1].split("</script>", 1)[0])
    assert data["labels"] == ["base", "Fin3R", "control (replay only)", "ground truth"] and len(data["scenes"]) == 2
    assert len(data["scenes"][0]["models"]["ground truth"]["frusta"]) == 2
    assert "oracle" in (tmp_path / "demo" / "report.md").read_text().lower()
    loaded = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert loaded["teacher"] == "oracle" and "acceptance" in loaded
