"""Adapters where people share them: `fin3r export --format peft` loads with PEFT itself onto the
model (same module names as the official code) and gives fin3r's outputs (plain LoRA exactly; the
re-normalised weight modes as DoRA, exactly; the output mode differs, as its README says), reads
back into fin3r exactly, PEFT's own folders read too; `--format hf` writes a Hub-ready folder with a
model card (metadata block, inherited licence, recipe, before/after table)."""

import json
import warnings

import pytest
import torch
import yaml

from fin3r.cli import main
from fin3r.lora import inject_lora, lora_modules, save_adapter
from fin3r.models import build_model, load_model, save_model
from fin3r.lora.peft import load_peft_folder, read_peft_folder

peft = pytest.importorskip("peft")
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def adapted(tmp_path, mode):
    torch.manual_seed(0)
    base_path = save_model(build_model("dust3r_tiny").eval(), tmp_path / "base.safetensors")
    model = load_model(base_path)
    inject_lora(model, model.encoder_linear_names(["qkv", "proj"]), rank=4, alpha=8.0, mode=mode)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.2)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(model, adapter, base_name=str(base_path), step=12, epochs=3,
                 train_config={"optim": {"lr": 0.002, "epochs": 3}, "distill": {"weight": 1.0}})
    return base_path, model.eval(), adapter


def depth(model):
    with torch.no_grad():
        return model.predict_mono(X).depth


@pytest.mark.parametrize("mode", [None, "weight_row", "weight_fro", "output"])
def test_peft_export_loads_in_peft_and_back_in_fin3r(tmp_path, mode):
    base_path, model, adapter = adapted(tmp_path, mode)
    out = tmp_path / "peft"
    assert main(["export", "--adapter", str(adapter), "--format", "peft", "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["use_dora"] == (mode in ("weight_row", "weight_fro"))
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("base_model.model.") for k in keys)
    assert any(k.endswith(".attn.qkv.lora_A.weight") for k in keys)
    ref = depth(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.PeftModel.from_pretrained(load_model(base_path), str(out)).eval()
    got = depth(peft_model.base_model.model)
    if mode == "output":  # PEFT cannot re-normalise q, k, v per token: a different model, and it says so
        assert not torch.allclose(got, ref, atol=1e-4)
        assert "What PEFT alone does not apply" in (out / "README.md").read_text()
    else:
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    back = load_model(base_path)
    header = load_peft_folder(back, out)  # the fin3r header rides along: exact mode, slices, base check
    assert header["mode"] == mode
    torch.testing.assert_close(depth(back.eval()), ref, atol=1e-6, rtol=1e-6)
    if mode in (None, "output"):  # `--adapter FOLDER` wherever a model is loaded (the loading service)
        import numpy as np
        from PIL import Image

        Image.fromarray((X[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "x.png")
        args = ["infer", str(tmp_path / "x.png"), "--model", str(base_path), "--size", "64", "--npy", "--no-progress"]
        assert main([*args, "--adapter", str(out), "--out", str(tmp_path / "a")]) == 0
        assert main([*args, "--adapter", str(adapter), "--out", str(tmp_path / "b")]) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "a" / "x_depth.npy"), np.load(tmp_path / "b" / "x_depth.npy"))


def test_reads_a_folder_peft_itself_wrote(tmp_path):
    torch.manual_seed(0)
    base_path = save_model(build_model("dust3r_tiny").eval(), tmp_path / "base.safetensors")
    model = load_model(base_path)
    targets = model.encoder_linear_names(["qkv"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=6, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    pm.save_pretrained(str(tmp_path / "theirs"))
    ref = depth(pm.eval().base_model.model)
    tensors, header = read_peft_folder(tmp_path / "theirs")
    assert header["base_hashes"] is None and sorted(header["targets"]) == sorted(targets)
    assert all(c["alpha"] == 6.0 and c["rank"] == 2 for c in header["modules"].values())
    ours = load_model(base_path)
    load_peft_folder(ours, tmp_path / "theirs")
    torch.testing.assert_close(depth(ours.eval()), ref, atol=1e-6, rtol=1e-6)


def card_meta(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_hub_folder_with_model_card(tmp_path, capsys):
    _, model, adapter = adapted(tmp_path, "weight_row")
    results = []
    for name, rel in (("base", 0.20), ("fin3r", 0.18)):
        path = tmp_path / f"{name}.json"
        bench = {"depth_scale_invariant": {"rel": rel, "delta1": 0.9}}
        path.write_text(json.dumps({"task": "monodepth", "model": name, "benchmarks": {"world": bench},
                                    "mean": bench}))
        results.append(str(path))
    out = tmp_path / "hub"
    assert main(["export", "--adapter", str(adapter), "--format", "hf", "--out", str(out), "--eval", *results,
                 "--base-model-id", "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    readme = (out / "README.md").read_text()
    meta = card_meta(readme)
    assert meta["license"] == "cc-by-nc-sa-4.0"  # inherited from the DUSt3R family's weights
    assert meta["base_model"] == "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"
    assert meta["base_model_relation"] == "finetune" and "fin3r" in meta["tags"] and "dust3r" in meta["tags"]
    assert "## Training recipe" in readme and "lr=0.002" in readme and "rank 4" in readme
    assert "## Measured before / after" in readme and "| 20.00 | 18.00 | -2.00 | yes |" in readme
    merged = load_model(out)
    torch.testing.assert_close(depth(merged.eval()), depth(model), atol=1e-5, rtol=1e-5)
    # an output-mode adapter cannot merge: the Hub folder holds the PEFT adapter and a peft card
    (tmp_path / "o").mkdir()
    _, _, adapter_out = adapted(tmp_path / "o", "output")
    assert main(["export", "--adapter", str(adapter_out), "--format", "hf", "--out", str(tmp_path / "hub_o"),
                 "--license", "apache-2.0"]) == 0
    readme = (tmp_path / "hub_o" / "README.md").read_text()
    meta = card_meta(readme)
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0" and "base_model" not in meta
    assert (tmp_path / "hub_o" / "adapter_config.json").is_file()
    assert main(["export", "--adapter", str(adapter), "--format", "hf", "--out", str(tmp_path / "bad"), "--eval",
                 str(tmp_path / "nope.json"), results[1]]) == 2
    assert not (tmp_path / "bad").exists()  # nothing written for a bad --eval
