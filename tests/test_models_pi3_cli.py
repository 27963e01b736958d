"""π3 through fin3r's commands on pi3_tiny (golden-fixture weights): infer, eval, diagnose, export
(a merged weight_row adapter in the official layout) and train (distillation + π3's replay)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fin3r.cli import main
from fin3r.config import load_config
from fin3r.lora import inject_lora, save_adapter
from fin3r.models import load, load_model, save_model
from fin3r.train import TrainConfig, train

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pi3cli")
    model = load("pi3_tiny", checkpoint=FIXTURES / "pi3_tiny_state.safetensors")
    model_path = save_model(model, tmp / "pi3_tiny.safetensors")
    images = tmp / "imgs"
    images.mkdir()
    scene = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    for i in range(3):  # three overlapping crops of one picture
        Image.fromarray(scene[:, 4 * i : 4 * i + 60]).save(images / f"v{i}.png")
    return tmp, model_path, images


def test_infer_mono_and_views(setup):
    tmp, model_path, images = setup
    common = ["--model", str(model_path), "--size", "42", "--npy", "--no-progress"]
    assert main(["infer", str(images), "--out", str(tmp / "mono"), *common]) == 0
    depth = np.load(tmp / "mono" / "v0_depth.npy")
    assert depth.shape == (28, 42) and np.isfinite(depth).all() and (depth > 0).all()
    assert main(["infer", str(images), "--out", str(tmp / "views"), "--views", *common]) == 0
    cams = json.loads((tmp / "views" / "cameras.json").read_text())["cameras"]
    assert len(cams) == 3 and np.allclose(cams[0]["cam2world"], np.eye(4), atol=1e-5)
    for cam in cams:
        R = np.array(cam["cam2world"])[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-4)
        assert np.array(cam["K"]).shape == (3, 3)


def test_eval_monodepth_relpose_mvdepth(setup, capsys):
    tmp, model_path, _ = setup
    data = str(tmp / "world")
    assert main(["eval", "world", "--out", data, "--num-images", "2", "--num-pairs", "1", "--num-scenes", "1",
                 "--views-per-scene", "2", "--height", "28", "--width", "42"]) == 0
    common = ["--model", str(model_path), "--root", data, "--quiet", "--input-long-side", "42"]
    assert main(["eval", "monodepth", *common, "--benchmarks", "world", "--out", str(tmp / "e_mono"),
                 "--set", "variants=[depth_scale_invariant]"]) == 0
    res = json.loads((tmp / "e_mono" / "monodepth.json").read_text())
    assert np.isfinite(res["benchmarks"]["world"]["depth_scale_invariant"]["rel"])
    assert main(["eval", "relpose", *common, "--benchmark", "world_pairs", "--set", "solver=cameras",
                 "--out", str(tmp / "e_pose")]) == 0
    assert main(["eval", "mvdepth", *common, "--benchmark", "world_scenes", "--out", str(tmp / "e_mv")]) == 0


def test_diagnose(setup, capsys):
    tmp, model_path, images = setup
    assert main(["diagnose", "--model", str(model_path), "--images", str(images), "--size", "28x42",
                 "--out", str(tmp / "diag")]) == 0
    report = json.loads((tmp / "diag" / "feature_norms.json").read_text())
    assert "base" in report


def test_export_merges_a_weight_row_adapter_into_the_official_layout(setup):
    tmp, model_path, images = setup
    model = load_model(model_path)
    inject_lora(model, model.encoder_linear_names(), rank=4, alpha=4.0, mode="weight_row")
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_(0, 0.3)
    save_adapter(model, tmp / "adapter.safetensors", base_name=str(model_path))
    img = load_file(str(FIXTURES / "pi3_tiny_s3_28x42.safetensors"))["images"]
    with torch.no_grad():
        want = model(img)["local_points"]
    out = tmp / "merged.pth"
    assert main(["export", "--adapter", str(tmp / "adapter.safetensors"), "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)  # a plain state_dict, as Pi3().load_state_dict takes
    assert sorted(sd) == sorted(load_file(str(FIXTURES / "pi3_tiny_state.safetensors")))
    merged = load("pi3_tiny", checkpoint=out)
    with torch.no_grad():
        assert torch.allclose(merged(img)["local_points"], want, atol=1e-5)
    assert main(["export", "--adapter", str(tmp / "adapter.safetensors"), "--format", "hf",
                 "--out", str(tmp / "merged_hf")]) == 0
    assert json.loads((tmp / "merged_hf" / "config.json").read_text())["decoder_size"] == "large"


def test_train_distills_and_replays(tmp_path):
    cfg = load_config(TrainConfig, None, [
        "model.name=pi3_tiny", f"out_dir={tmp_path}", "data.height=28", "data.width=42", "data.num_views=3",
        "data.world_mono_scenes=8", "data.world_replay_scenes=4", "data.mono_per_epoch=4", "data.replay_per_epoch=4",
        "data.batch_size=4", "data.heldout_images=2", "optim.epochs=1", "optim.warmup_epochs=0.5", "lora.targets=[qkv]",
        "lora.mode=weight_row", "distill.min_valid=20", "progress=false", "tensorboard=false", "log_every=1"])
    result = train(cfg)
    record = result.history[-1]
    assert result.steps == 2 and result.skipped_steps == 0
    assert record["loss_mono"] != 0.0 and record["loss_replay"] != 0.0
    adapter = load_file(str(result.adapter_path))
    assert adapter and all(k.startswith("encoder.blocks.") for k in adapter)


def test_recipe_is_the_papers_setting():
    """configs/pi3.yaml: mergeable re-normalised LoRA (weight_row), r = 8, alpha 8, on the 24 encoder qkv."""
    from fin3r.models import build_model

    config = load_config(TrainConfig, Path(__file__).parent.parent / "configs" / "pi3.yaml")
    assert config.model.name == "pi3"
    assert (config.lora.targets, config.lora.rank, config.lora.alpha, config.lora.mode) == (["qkv"], 8, 8.0,
                                                                                          "weight_row")
    assert config.data.height % 14 == 0 and config.data.width % 14 == 0
    names = build_model("pi3", device="meta").encoder_linear_names(config.lora.targets)
    assert names == [f"encoder.blocks.{i}.attn.qkv" for i in range(24)]
