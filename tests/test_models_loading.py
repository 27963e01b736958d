"""The one loading service (`fin3r.models.load`): every model and adapter format through every
command, architectures from the file's own description, clear errors before allocation."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fin3r.cli import main
from fin3r.errors import CheckpointError
from fin3r.lora import apply_fin3r_lora, read_adapter
from fin3r.models import build_model, load, load_model, save_model, save_official
from fin3r.models.cut3r.model import CUT3R_TINY


def _released_lora(model, path, rank=4, seed=3):
    """A *_lora.pth as the released Fin3R code writes it (PEFT-wrapped attention of every encoder
    block: LoRA on qkv plus copies of the base weights)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in model.encoder_linear_names(["qkv"]):
        blk = name.rpartition(".qkv")[0]
        qkv, proj = model.get_submodule(f"{blk}.qkv"), model.get_submodule(f"{blk}.proj")
        pre = f"{blk}.base_model.model"
        sd[f"{pre}.qkv.base_layer.weight"] = qkv.weight.detach().clone()
        sd[f"{pre}.qkv.base_layer.bias"] = qkv.bias.detach().clone()
        sd[f"{pre}.qkv.lora_A.default.weight"] = torch.randn(rank, qkv.in_features, generator=g) * 0.3
        sd[f"{pre}.qkv.lora_B.default.weight"] = torch.randn(qkv.out_features, rank, generator=g) * 0.3
        sd[f"{pre}.proj.weight"] = proj.weight.detach().clone()
        sd[f"{pre}.proj.bias"] = proj.bias.detach().clone()
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    base = build_model("dust3r_tiny").eval()
    base_path = save_model(base, tmp / "base.safetensors")
    lora = _released_lora(base, tmp / "dust3r_tiny_lora.pth")
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp, base_path, lora, images


def test_load_applies_a_released_adapter(released):
    _, base_path, lora, _ = released
    want = load_model(base_path)
    apply_fin3r_lora(want, lora)
    got = load(base_path, adapter=lora)
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = got.predict_mono(img).depth, want.predict_mono(img).depth
        plain = load_model(base_path).predict_mono(img).depth
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_released_adapter_through_infer_diagnose_export_eval(released, tmp_path, capsys):
    _, base_path, lora, images = released
    common = ["--size", "48", "--npy", "--no-progress"]
    assert main(["infer", str(images), "--model", str(base_path), "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["infer", str(images), "--model", str(base_path), "--adapter", str(lora),
                 "--out", str(tmp_path / "adapted"), *common]) == 0
    assert "mode output" in capsys.readouterr().out
    plain, adapted = np.load(tmp_path / "plain/0_depth.npy"), np.load(tmp_path / "adapted/0_depth.npy")
    assert np.isfinite(adapted).all() and not np.allclose(plain, adapted)

    assert main(["diagnose", "--model", str(base_path), "--adapter", str(lora), "--images", str(images),
                 "--size", "32x48", "--out", str(tmp_path / "diag")]) == 0
    report = json.loads((tmp_path / "diag/feature_norms.json").read_text())
    assert "adapted" in report and any(abs(v) > 0 for v in report["relative_change"].values())

    out = tmp_path / "exported.safetensors"  # output mode: not mergeable -- refused, unless asked to re-write it
    assert main(["export", "--adapter", str(lora), "--model", str(base_path), "--out", str(out)]) == 2
    assert "cannot be merged" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--adapter", str(lora), "--model", str(base_path), "--out", str(out),
                 "--format", "adapter"]) == 0
    _, header = read_adapter(out)
    assert header["base_name"] == str(base_path) and {m["mode"] for m in header["modules"].values()} == {"output"}
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load(base_path, adapter=out).predict_mono(img).depth,
                           load(base_path, adapter=lora).predict_mono(img).depth)

    data = str(tmp_path / "data")
    assert main(["eval", "world", "--out", data, "--num-images", "2", "--num-pairs", "1", "--num-scenes", "1",
                 "--views-per-scene", "2", "--height", "32", "--width", "48"]) == 0
    args = ["eval", "monodepth", "--model", str(base_path), "--root", data, "--benchmarks", "world", "--quiet",
            "--set", "variants=[depth_scale_invariant]"]
    assert main(args + ["--out", str(tmp_path / "e0")]) == 0
    assert main(args + ["--adapter", str(lora), "--out", str(tmp_path / "e1")]) == 0
    r0 = json.loads((tmp_path / "e0/monodepth.json").read_text())["benchmarks"]["world"]
    r1 = json.loads((tmp_path / "e1/monodepth.json").read_text())["benchmarks"]["world"]
    assert r0["depth_scale_invariant"]["rel"] != r1["depth_scale_invariant"]["rel"]


def test_a_non_released_cut3r_loads_from_the_file_alone(tmp_path):
    """Depth 4 encoder, DPT head on a 4-block decoder (the official pts3d+pose DPT head takes
    decoder depths <= 9), other widths: loads from the official .pth alone, equal to an explicit build."""
    config = {**CUT3R_TINY, "enc_depth": 4, "dec_depth": 4, "enc_embed_dim": 24, "enc_num_heads": 3,
              "state_size": 10, "dpt_layer_dims": [4, 8, 12, 16], "dpt_feature_dim": 12, "dpt_last_dim": 6}
    torch.manual_seed(0)
    explicit = build_model({"family": "cut3r", **config}).eval()
    path = save_official(explicit, tmp_path / "my_cut3r.pth")
    loaded = load_model(path)
    assert loaded.config_dict() == explicit.config_dict()
    imgs = torch.rand(1, 2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_views(imgs).pts3d, explicit.predict_views(imgs).pts3d,
                                   atol=0, rtol=0)


def test_an_unknown_hugging_face_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"encoder.layer.0.weight": torch.zeros(8, 8)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no known family recognised.*looked for.*config.json.*dust3r"):
        load_model(folder)
    # naming an unknown family is as clear
    (folder / "config.json").write_text(json.dumps({"family": "bert"}))
    with pytest.raises(CheckpointError, match="unknown model family 'bert'"):
        load_model(folder)


def _no_build(monkeypatch):
    """Fail the test if a model is allocated (the check must come first)."""
    import fin3r.models.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from a description that does not fit the file")

    monkeypatch.setattr(fin3r.models.loading, "_build_with_weights", refuse)
    monkeypatch.setattr(fin3r.models.loading, "build_model", refuse)


@pytest.mark.parametrize("change,match", [
    ({"enc_depth": 60_000}, "asks for 60000 blocks 'enc_blocks"),
    ({"enc_depth": 200_000}, "enc_depth=200000 is not a positive integer"),
    ({"dec_embed_dim": 1 << 20}, "not a positive integer up to|dec_embed_dim=1048576 does not match"),
    ({"enc_depth": -3}, "non-negative|positive integer"),
])
def test_an_absurd_args_model_is_refused_before_allocation(tmp_path, monkeypatch, change, match):
    from fin3r.models.croco.checkpoint import official_kwargs

    torch.manual_seed(0)
    tiny = build_model("dust3r_tiny_linear").eval()
    kwargs = {**official_kwargs(tiny), **change}
    ctor = "AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    path = tmp_path / "absurd.pth"
    torch.save({"model": tiny.official_state_dict(), "args": argparse.Namespace(model=ctor)}, path)
    _no_build(monkeypatch)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_absurd_or_deep_descriptions_in_other_places(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny = build_model("dust3r_tiny_linear").eval()
    # a fin3r file whose metadata asks for a huge model
    config = {**tiny.config_dict(), "dec_depth": 100_000}
    path = tmp_path / "huge.safetensors"
    save_file(dict(tiny.state_dict()), str(path), metadata={"format": "fin3r", "config": json.dumps(config)})
    _no_build(monkeypatch)
    with pytest.raises(CheckpointError, match="dec_depth=100000 is not a positive integer"):
        load_model(path)
    # deep nesting: never a RecursionError
    deep = "AsymmetricCroCo3DStereo(img_size=" + "(" * 5000 + ")" * 5000 + ")"
    path = tmp_path / "deep.pth"
    torch.save({"model": tiny.official_state_dict(), "args": argparse.Namespace(model=deep)}, path)
    with pytest.raises(CheckpointError, match="nested|syntax"):
        load_model(path)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"family": "dust3r", "img_size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="nested too deeply|characters"):
        load_model(folder)
