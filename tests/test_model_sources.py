"""Where a base model comes from, as a user names it: a recipe's `model.name` does not override a
checkpoint's own architecture, adapters record an absolute base path, registry names without
weights are refused by the commands, the exported `.pth` is the base file plus the merged delta,
hub ids resolve from the local Hugging Face cache, and infer's preprocessing modes."""

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.config import load_config
from fin3r.errors import CheckpointError, Fin3rError
from fin3r.lora import inject_lora, lora_modules, read_adapter, save_adapter
from fin3r.models import build_model, load_model, save_hf_folder, save_official
from fin3r.train.config import TrainConfig
from fin3r.train.model import adapter_base_name, load_base_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny DUSt3R as an official .pth whose file carries more than fin3r writes: a non-zero
    mask_token, extra `args` fields, an extra top-level entry."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    path = save_official(model, folder / "tiny_official.pth")
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    obj["model"]["mask_token"] = torch.full_like(obj["model"]["mask_token"], 0.25)
    obj["args"].epochs = 100
    obj["args"].lr = 1e-4
    obj["epoch"] = 99
    torch.save(obj, path)
    return path, obj


def test_a_recipe_name_does_not_override_the_checkpoint_architecture(official, tmp_path, monkeypatch):
    path, _ = official
    recipe = ROOT / "configs" / "dust3r.yaml"  # model.name: dust3r_512_dpt (ViT-L); the file is a tiny DUSt3R
    for extra in ([], ["model.name=null"]):
        cfg = load_config(TrainConfig, recipe, [f"model.checkpoint={path}", *extra])
        model = load_base_model(cfg)
        assert model.family == "dust3r" and model.config_dict()["enc_embed_dim"] == 64
    with pytest.raises(Fin3rError, match="holds a dust3r model"):
        load_base_model(load_config(TrainConfig, None, ["model.name=mast3r_tiny", f"model.checkpoint={path}"]))
    with pytest.raises(Fin3rError, match="model.checkpoint .*or model.name"):
        load_base_model(load_config(TrainConfig, None, ["model.name=null"]))
    # a bare state_dict carries no architecture: the registry name gives it
    bare = tmp_path / "bare.pth"
    torch.save(build_model("dust3r_tiny").state_dict(), bare)
    assert load_base_model(load_config(TrainConfig, None, ["model.name=dust3r_tiny", f"model.checkpoint={bare}"]))
    # the adapter records the absolute, resolved base path: export works from any folder
    monkeypatch.chdir(path.parent)
    cfg = load_config(TrainConfig, None, ["model.name=null", f"model.checkpoint={path.name}"])
    assert adapter_base_name(cfg) == str(path.resolve())


def test_the_commands_refuse_a_registry_name_without_weights(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "a.png")
    data = str(tmp_path / "data")
    assert main(["eval", "world", "--out", data, "--num-images", "1", "--num-pairs", "1", "--num-scenes", "1",
                 "--views-per-scene", "2", "--height", "32", "--width", "48"]) == 0
    capsys.readouterr()
    runs = {"infer": ["infer", str(folder), "--model", "dust3r_tiny", "--out", str(tmp_path / "o"), "--no-progress"],
            "eval": ["eval", "monodepth", "--model", "dust3r_tiny", "--root", data, "--benchmarks", "world", "--quiet",
                     "--out", str(tmp_path / "e")],
            "diagnose": ["diagnose", "--model", "dust3r_tiny", "--images", str(folder), "--size", "32x48", "--out",
                         str(tmp_path / "d")]}
    for argv in runs.values():
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--checkpoint" in err and "--random-weights" in err and len(err.strip().splitlines()) == 1
        assert main(argv + ["--random-weights"]) == 0


def test_export_writes_the_base_file_plus_the_merged_delta(official, tmp_path, monkeypatch):
    path, original = official
    model = load_model(path)
    names = model.encoder_linear_names(["qkv"])
    inject_lora(model, names, rank=2, alpha=2.0, mode="weight_row")
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.05)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(model, adapter, base_name=str(path.resolve()))
    monkeypatch.chdir(tmp_path)  # another folder than the checkpoint's
    assert main(["export", "--adapter", str(adapter), "--checkpoint", str(path), "--out", "merged.pth"]) == 0
    with torch.serialization.safe_globals([argparse.Namespace]):
        out = torch.load(tmp_path / "merged.pth", map_location="cpu", weights_only=True)
    changed = {f"{n}.weight" for n in names}
    assert set(out) == set(original) and out["epoch"] == 99 and vars(out["args"]) == vars(original["args"])
    assert set(out["model"]) == set(original["model"])
    for k, v in original["model"].items():
        same = torch.equal(out["model"][k], v)
        assert same != (k in changed), k  # exactly the adapted weights differ; mask_token etc. kept
    assert float(out["model"]["mask_token"].mean()) == 0.25
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged.pth").predict_mono(img).depth,
                                   model.eval().predict_mono(img).depth, rtol=1e-4, atol=1e-5)
    assert read_adapter(adapter)[1]["base_name"] == str(path.resolve())
    assert main(["export", "--adapter", str(adapter), "--out", "from_header.pth"]) == 0  # base from the header


def test_hub_ids_resolve_from_the_local_cache_only(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--naver--DUSt3R_tiny_test"
    rev = "0123456789abcdef0123456789abcdef01234567"
    save_hf_folder(model, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    got = load_model("naver/DUSt3R_tiny_test")
    img = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(got.predict_mono(img).depth, model.predict_mono(img).depth)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        load_model("naver/DUSt3R_tiny_test")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "a.png")
    assert main(["infer", str(folder), "--model", "naver/DUSt3R_tiny_test", "--out", str(tmp_path / "o")]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_infer_preprocessing_modes(tmp_path):
    from fin3r.infer import prepare_image

    path = tmp_path / "land.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(path)
    tall = tmp_path / "tall.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 300, 3), dtype=np.uint8)).save(tall)
    # VGGT crop: width 518, height round(300 * 518 / 500 / 14) * 14 = 308; a tall image is cropped to 518
    assert prepare_image(path, 518, 14, mode="crop").img.shape == (3, 308, 518)
    assert prepare_image(tall, 518, 14, mode="crop").img.shape == (3, 518, 518)
    # VGGT pad: long side 518, the other side 308, padded white (1.0) to 518 x 518, centred
    padded = prepare_image(path, 518, 14, mode="pad")
    assert padded.img.shape == (3, 518, 518) and padded.crop == (0, -105)
    assert bool((padded.img[:, :105] == 1).all()) and bool((padded.img[:, -105:] == 1).all())
    # DUSt3R 224: short side 224, centre square
    square = prepare_image(path, 224, 16, mode="square")
    assert square.img.shape == (3, 224, 224) and square.resized_size == (224, 373) and square.crop == (74, 0)
    with pytest.raises(Exception, match="multiple of the patch"):
        prepare_image(path, 500, 14, mode="crop")
