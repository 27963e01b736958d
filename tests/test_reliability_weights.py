"""Model and adapter files a user hands fin3r: non-finite weights are refused (naming the first
offending tensor) at load, merge and export; odd types in a file's architecture description or
adapter header end in one clear line, never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.errors import CheckpointError
from fin3r.lora import inject_lora, lora_modules, save_adapter
from fin3r.models import build_model, load_model
from fin3r.models.loading import save_hf_folder, save_model


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DUSt3R saved as a fin3r file and a Hugging Face folder, an image, and an adapter."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(root / "img.png")
    save_model(model, root / "base.safetensors")
    save_hf_folder(model, root / "hf")
    torch.manual_seed(1)
    adapted = build_model("dust3r_tiny").eval()
    adapted.load_state_dict(model.state_dict())
    inject_lora(adapted, ["enc_blocks.0.attn.qkv"], rank=2, alpha=2.0, mode="weight_row")
    for m in lora_modules(adapted).values():
        torch.nn.init.normal_(m.lora_B, std=0.01)
    save_adapter(adapted, root / "adapter.safetensors", base_name=str(root / "base.safetensors"))
    return root


def _nan_state_dict(path, out, key_index=3):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[key_index]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(out), metadata=meta)
    return key


def test_a_base_with_a_nan_weight_is_refused_by_infer_and_load(tiny, tmp_path, capsys, caplog):
    key = _nan_state_dict(tiny / "base.safetensors", tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=f"not finite: '{key}'"):
        load_model(tmp_path / "nan.safetensors")
    code, err = run_cli(["infer", str(tiny / "img.png"), "--model", str(tmp_path / "nan.safetensors"),
                         "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and key in err and "Traceback" not in err and not (tmp_path / "o").exists()
    # the flag downgrades it to a warning
    code, err = run_cli(["infer", str(tiny / "img.png"), "--model", str(tmp_path / "nan.safetensors"),
                         "--out", str(tmp_path / "o"), "--no-progress", "--allow-nonfinite"], capsys)
    assert code == 0 and "not finite" in caplog.text


def test_an_adapter_with_nan_is_neither_loaded_merged_nor_exported(tiny, tmp_path, capsys):
    key = _nan_state_dict(tiny / "adapter.safetensors", tmp_path / "nan_adapter.safetensors", key_index=1)
    assert key.endswith("lora_B")
    model = load_model(tiny / "base.safetensors")
    with pytest.raises(CheckpointError, match=f"not finite: '{key}'"):
        from fin3r.lora import load_adapter

        load_adapter(model, tmp_path / "nan_adapter.safetensors")
    assert not lora_modules(model)  # nothing injected
    code, err = run_cli(["export", "--adapter", str(tmp_path / "nan_adapter.safetensors"), "--model",
                         str(tiny / "base.safetensors"), "--out", str(tmp_path / "merged.pth")], capsys)
    assert code == 2 and key in err and not (tmp_path / "merged.pth").exists()
    # a good adapter exports
    code, err = run_cli(["export", "--adapter", str(tiny / "adapter.safetensors"), "--model",
                         str(tiny / "base.safetensors"), "--out", str(tmp_path / "ok.safetensors")], capsys)
    assert code == 0, err


def test_merging_refuses_a_non_finite_result_and_leaves_the_model_as_it_was():
    from fin3r.lora import LoRAError, merge_and_unload, merge_lora

    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    inject_lora(model, ["enc_blocks.0.attn.qkv"], rank=2, alpha=2.0, mode=None)
    layer = lora_modules(model)["enc_blocks.0.attn.qkv"]
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
        layer.lora_A.fill_(1.0)
    before = layer.weight.detach().clone()
    with pytest.raises(LoRAError, match="enc_blocks.0.attn.qkv.*not finite"):
        merge_lora(model)
    assert not layer.merged and torch.equal(layer.weight, before)
    with pytest.raises(LoRAError, match="not finite"):
        merge_and_unload(model)
    assert lora_modules(model)  # nothing replaced


@pytest.mark.parametrize("change,match", [
    ({"rank": "x"}, "rank='x'"), ({"alpha": None}, "alpha=None"), ({"rank": 0}, "rank=0"),
    ({"alpha": float("nan")}, "alpha"), ({"dropout": 1.5}, "dropout=1.5"), ({"mode": "sideways"}, "mode='sideways'"),
    ({"rank": True}, "rank=True"),
])
def test_adapter_headers_with_odd_values_are_one_line(tiny, tmp_path, capsys, change, match):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fin3r.lora import HEADER_KEY

    with safe_open(str(tiny / "adapter.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta[HEADER_KEY])
    for name in header["modules"]:
        header["modules"][name].update(change)
    meta[HEADER_KEY] = json.dumps(header)
    save_file(tensors, str(tmp_path / "odd.safetensors"), metadata=meta)
    code, err = run_cli(["infer", str(tiny / "img.png"), "--model", str(tiny / "base.safetensors"), "--adapter",
                         str(tmp_path / "odd.safetensors"), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and match in err and "Traceback" not in err and "unexpected" not in err, err


ODD_VALUES = ["x", None, {}, 1e12, [1, 2], float("nan")]
HF_KEYS = ["enc_num_heads", "dec_num_heads", "depth_mode", "conf_mode", "head_type", "mlp_ratio", "output_mode",
           "pos_embed", "img_size", "norm_im2_in_dec"]


def test_odd_types_in_a_hugging_face_config_are_one_line(tiny, tmp_path, capsys):
    config = json.loads((tiny / "hf" / "config.json").read_text())
    failures = []
    for key in HF_KEYS:
        for value in ODD_VALUES:
            if key == "conf_mode" and value is None:
                continue  # official: no confidence head (then the weights do not fit: still one line)
            if key == "norm_im2_in_dec" and value is True:
                continue
            folder = tmp_path / "hf"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(tiny / "hf", folder)
            (folder / "config.json").write_text(json.dumps({**config, key: value}))
            code, err = run_cli(["infer", str(tiny / "img.png"), "--model", str(folder), "--out", str(tmp_path / "o"),
                                 "--no-progress"], capsys)
            if code != 2 or "Traceback" in err or "unexpected error" in err:
                failures.append(f"{key}={value!r}: exit {code}: {err.strip()[-160:]}")
    assert not failures, "\n".join(failures)


def test_odd_state_dicts_are_one_line(tiny, tmp_path, capsys):
    base = load_model(tiny / "base.safetensors").official_state_dict()
    for name, sd in {"int_key": {**base, 0: torch.zeros(1)}, "non_tensor": {**base, "x": "not a tensor"}}.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"model": sd}, path)
        code, err = run_cli(["infer", str(tiny / "img.png"), "--model", "dust3r_tiny", "--checkpoint", str(path),
                             "--out", str(tmp_path / "o"), "--no-progress"], capsys)
        assert code == 2 and "state_dict" in err and "Traceback" not in err, (name, err)
