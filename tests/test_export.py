"""fin3r.export: merged weight-mode adapters load as official checkpoints with plain torch (no fin3r),
compute what the adapted model computes; output-mode adapters are written, not merged."""

import subprocess
import sys

import pytest
import torch

from fin3r.cli import main
from fin3r.lora import inject_lora, lora_modules, read_adapter, save_adapter
from fin3r.models import build_model, load_model, save_model

PLAIN_TORCH_LOAD = r"""
import argparse, sys
sys.modules['fin3r'] = None  # any reference to fin3r in the file would fail to import
import torch
path, fmt = sys.argv[1], sys.argv[2]
if fmt == 'pth':
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location='cpu', weights_only=True)
    sd, ctor = obj['model'], obj['args'].model
else:
    from safetensors.torch import load_file
    sd, ctor = load_file(path), ''
print(ctor)
for k in sorted(sd):
    print(k, tuple(sd[k].shape))
"""


def _adapted(tmp_path, mode):
    torch.manual_seed(0)
    base = build_model("dust3r_tiny").eval()
    base_path = save_model(base, tmp_path / "base.safetensors")
    model = load_model(base_path)
    inject_lora(model, model.encoder_linear_names(["qkv", "proj"]), rank=4, alpha=4.0, mode=mode)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.05)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(model, adapter, base_name=str(base_path))
    return base, model.eval(), adapter


def _plain_torch_keys(path, fmt):
    out = subprocess.run([sys.executable, "-c", PLAIN_TORCH_LOAD, str(path), fmt], capture_output=True, text=True,
                         check=True)
    lines = out.stdout.splitlines()
    return lines[0], lines[1:]


@pytest.mark.parametrize("mode", ["weight_row", None])
def test_merged_export_is_official_and_computes_the_adapted_model(tmp_path, mode, capsys):
    base, adapted, adapter = _adapted(tmp_path, mode)
    out = tmp_path / "merged.pth"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert "merged" in capsys.readouterr().out
    ctor, keys = _plain_torch_keys(out, "pth")
    assert ctor.startswith("AsymmetricCroCo3DStereo(") and "head_type='dpt'" in ctor
    expected = sorted(f"{k} {tuple(v.shape)}" for k, v in base.official_state_dict().items())
    assert keys == expected  # same keys and shapes as the base's official file: no LoRA tensors
    merged = load_model(out)
    img = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        want, got, plain = adapted.predict_mono(img), merged.predict_mono(img), base.predict_mono(img)
    torch.testing.assert_close(got.depth, want.depth, rtol=1e-4, atol=1e-5)
    assert (plain.depth - want.depth).abs().max() > 1e-4  # the adapter did change the model


def test_safetensors_export_loads_without_fin3r(tmp_path):
    base, adapted, adapter = _adapted(tmp_path, "weight_row")
    out = tmp_path / "merged.safetensors"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    _, keys = _plain_torch_keys(out, "safetensors")
    assert keys == sorted(f"{k} {tuple(v.shape)}" for k, v in base.official_state_dict().items())


def test_output_mode_refuses_a_merged_export_and_writes_the_adapter_only_when_asked(tmp_path, capsys):
    base, adapted, adapter = _adapted(tmp_path, "output")
    for out in (tmp_path / "exported.pth", tmp_path / "exported.safetensors"):
        assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "cannot be merged" in err and "weight_row" in err and len(err.strip().splitlines()) == 1
        assert not out.exists() and not out.with_suffix(".safetensors").exists()
    written = tmp_path / "exported.safetensors"
    assert main(["export", "--adapter", str(adapter), "--out", str(written), "--format", "adapter"]) == 0
    tensors, header = read_adapter(written)
    _, original = read_adapter(adapter)
    assert header["base_hash"] == original["base_hash"] and header["mode"] == "output"
    assert set(tensors) == {k for k in read_adapter(adapter)[0]}


def test_export_refuses_a_different_base(tmp_path):
    _, _, adapter = _adapted(tmp_path, "weight_row")
    torch.manual_seed(1)
    other = save_model(build_model("dust3r_tiny"), tmp_path / "other.safetensors")
    with pytest.raises(Exception, match="(?i)hash|base"):
        from fin3r.export import export_adapter

        export_adapter(adapter, tmp_path / "x.pth", model=str(other))


@pytest.mark.parametrize("name,ctor", [("vggt_tiny", None), ("cut3r_tiny", "ARCroco3DStereo")])
def test_other_families_export_their_official_layout(tmp_path, name, ctor):
    import argparse

    torch.manual_seed(0)
    base = build_model(name).eval()
    base_path = save_model(base, tmp_path / "base.safetensors")
    model = load_model(base_path)
    inject_lora(model, model.encoder_linear_names(["qkv"]), rank=4, alpha=4.0, mode="weight_row")
    save_adapter(model, tmp_path / "a.safetensors", base_name=str(base_path))
    out = tmp_path / "merged.pth"
    assert main(["export", "--adapter", str(tmp_path / "a.safetensors"), "--out", str(out)]) == 0
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(out, map_location="cpu", weights_only=True)
    if ctor is None:  # VGGT: a plain state_dict, as VGGT().load_state_dict takes
        sd = obj
    else:
        sd = obj["model"]
        assert ctor in str(obj["args"].model)
    assert sorted(sd) == sorted(base.official_state_dict())


def test_recipes_default_to_the_mergeable_re_norm():
    """The real-model recipes train adapters `fin3r export` can merge (zero inference overhead)."""
    from pathlib import Path

    from fin3r.config import load_config
    from fin3r.train.config import LoraConfig, TrainConfig

    assert LoraConfig().mode == "weight_row"
    for name in ("dust3r", "mast3r", "cut3r", "vggt"):
        cfg = load_config(TrainConfig, Path(__file__).parents[1] / "configs" / f"{name}.yaml", [])
        assert cfg.lora.mode == "weight_row", name
