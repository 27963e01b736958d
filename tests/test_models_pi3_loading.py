"""π3 through the loading service: official formats (HF folder, .safetensors, .pth), strict keys,
official state_dict / config out, Pi3X files, and the released VGGT adapter on π3's encoder."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fin3r.errors import CheckpointError
from fin3r.lora import apply_fin3r_lora, lora_modules
from fin3r.models import load, load_model, save_hf_folder, save_model, save_official
from fin3r.models.loading import detect_family
from fin3r.models.pi3 import PI3_CONFIG, PI3X_CONFIG, Pi3
from fin3r.models.pi3.checkpoint import config_from_hf
from fin3r.models.vggt import Vggt
from test_models_loading import _released_lora  # a released *_lora.pth of any model (tests/ is on sys.path)

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-4


def official_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "pi3_tiny_state.safetensors"))


def golden(case: str = "s3_28x42") -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"pi3_tiny_{case}.safetensors"))


def assert_matches_golden(model: Pi3, case: str = "s3_28x42") -> None:
    g = golden(case)
    with torch.no_grad():
        out = model(g["images"])
    assert (out["local_points"] - g["local_points"]).abs().max() < TOL
    assert (out["camera_poses"] - g["camera_poses"]).abs().max() < TOL


def test_bare_safetensors_and_pth_state_dicts_load_strictly(tmp_path):
    sd = official_state()
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pi3.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    for name in ("model.safetensors", "pi3.pth", "wrapped.pth"):
        path = tmp_path / name
        assert detect_family(path).name == "pi3"
        model = load("pi3_tiny", checkpoint=path)
        assert isinstance(model, Pi3) and not model.training
        assert_matches_golden(model)
    # without a registry name a bare file is taken as the released pi3, which these weights do not fit
    with pytest.raises(CheckpointError, match=r"24 blocks 'encoder.blocks.\*'"):
        load(tmp_path / "model.safetensors")


def test_hf_folder_round_trip_and_official_config(tmp_path):
    model = load("pi3_tiny", checkpoint=FIXTURES / "pi3_tiny_state.safetensors")
    folder = save_hf_folder(model, tmp_path / "Pi3-tiny")
    assert json.loads((folder / "config.json").read_text()) == {"decoder_size": "large", "pos_type": "rope100"}
    assert (folder / "fin3r_config.json").is_file()  # the official kwargs cannot describe the tiny widths
    assert sorted(load_file(str(folder / "model.safetensors"))) == sorted(official_state())
    assert_matches_golden(load(folder))
    # an official folder (config.json only) describes the released architecture
    (folder / "fin3r_config.json").unlink()
    with pytest.raises(CheckpointError, match="blocks"):
        load(folder)


def test_official_config_json_is_read_and_checked():
    assert config_from_hf({"pos_type": "rope100", "decoder_size": "large"}, "c") == {"family": "pi3", **PI3_CONFIG}
    assert config_from_hf({"pos_type": "rope50"}, "c")["rope_freq"] == 50.0
    assert config_from_hf({"ckpt": None, "use_multimodal": True}, "c") == {"family": "pi3", **PI3X_CONFIG}
    with pytest.raises(CheckpointError, match="cannot run"):
        config_from_hf({"decoder_size": "small"}, "c")
    with pytest.raises(CheckpointError, match="not one of"):
        config_from_hf({"decoder_size": "huge"}, "c")
    with pytest.raises(CheckpointError, match="pos_type"):
        config_from_hf({"pos_type": "sine"}, "c")
    with pytest.raises(CheckpointError, match="unknown Pi3 argument"):
        config_from_hf({"pos_type": "rope100", "depth": 3}, "c")


def test_wrong_keys_and_shapes_are_named(tmp_path):
    sd = official_state()
    missing = dict(sd)
    missing.pop("camera_head.fc_rot.bias")
    extra = {**sd, "track_head.x": torch.zeros(1)}
    shaped = {**sd, "register_token": torch.zeros(1, 1, 5, 8)}
    for name, state, want in (("missing", missing, "camera_head.fc_rot.bias"), ("extra", extra, "track_head.x"),
                              ("shape", shaped, "register_token")):
        save_file(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(CheckpointError, match=want):
            load("pi3_tiny", checkpoint=tmp_path / f"{name}.safetensors")


def test_unreadable_and_foreign_files_are_refused(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(official_state(), good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load("pi3_tiny", checkpoint=tmp_path / "cut.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError):
        load("pi3_tiny", checkpoint=tmp_path / "evil.pth")


def test_official_state_dict_out(tmp_path):
    model = load("pi3_tiny", checkpoint=FIXTURES / "pi3_tiny_state.safetensors")
    path = save_official(model, tmp_path / "pi3_tiny.pth")
    sd = torch.load(path, weights_only=True)
    want = official_state()
    assert sorted(sd) == sorted(want) and all(torch.equal(sd[k], want[k]) for k in want)
    saved = save_model(model, tmp_path / "pi3_tiny.safetensors")
    assert_matches_golden(load_model(saved))


def test_pi3x_files_load_with_the_conditioning_dropped(tmp_path, caplog):
    trunk = {k: v for k, v in official_state().items() if not k.startswith(("point_head.", "conf_head."))}
    state = {**trunk, **load_file(str(FIXTURES / "pi3x_tiny_heads.safetensors")),
             "depth_emb": torch.zeros(1, 1, 16), "ray_embed.proj.weight": torch.zeros(16, 2, 14, 14),
             "depth_encoder.blocks.0.attn.qkv.weight": torch.zeros(48, 16),
             "pose_inject_blk.0.attn.qkv.weight": torch.zeros(48, 16)}
    torch.save(state, tmp_path / "pi3x.pth")
    with caplog.at_level(logging.INFO, logger="fin3r.models.pi3.checkpoint"):
        model = load("pi3x_tiny", checkpoint=tmp_path / "pi3x.pth")
    assert "dropped 4 tensors of Pi3X's conditioning branches" in caplog.text
    g = load_file(str(FIXTURES / "pi3x_tiny_s3_28x42.safetensors"))
    with torch.no_grad():
        assert (model(g["images"])["points"] - g["points"]).abs().max() < TOL
    # the bare file names the Pi3X architecture (its metric_token)
    with pytest.raises(CheckpointError, match="blocks"):
        load(tmp_path / "pi3x.pth")


# --- the released VGGT adapter on π3's encoder ----------------------------------------------------
def _vggt_sharing(pi3: Pi3) -> Vggt:
    """A tiny VGGT whose DINOv2 encoder is π3's (as π3 was initialised from VGGT-1B's)."""
    torch.manual_seed(1)
    vggt = Vggt(img_size=42, patch_size=14, embed_dim=16, depth=2, num_heads=2, num_register_tokens=4,
                encoder_depth=2, encoder_num_heads=2, dpt_features=8, dpt_out_channels=[4, 8, 16, 16],
                dpt_layers=[0, 1, 1, 1], camera_trunk_depth=1, camera_num_heads=2).eval()
    enc = {k[len("encoder."):]: v for k, v in pi3.state_dict().items() if k.startswith("encoder.")}
    vggt.aggregator.patch_embed.load_state_dict({**enc, "mask_token": torch.zeros(1, 16)}, strict=True)
    return vggt


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    pi3_path = save_model(load("pi3_tiny", checkpoint=FIXTURES / "pi3_tiny_state.safetensors"),
                          tmp / "pi3_tiny.safetensors")
    vggt = _vggt_sharing(load_model(pi3_path))
    vggt_path = save_official(vggt, tmp / "vggt_model.pt")
    lora = _released_lora(vggt, tmp / "vggt_lora.pth")  # PEFT keys under aggregator.patch_embed.
    return tmp, pi3_path, vggt, vggt_path, lora


def test_vggt_adapter_applies_to_pi3_with_an_unverified_warning(transfer, caplog):
    _, pi3_path, vggt, _, lora = transfer
    with caplog.at_level(logging.WARNING, logger="fin3r.models.loading"):
        model = load(pi3_path, adapter=lora)
    assert "UNVERIFIED" in caplog.text and "--adapter-base" in caplog.text
    assert sorted(lora_modules(model)) == [f"encoder.blocks.{i}.attn.qkv" for i in range(2)]
    # the adapted π3 encoder computes what the adapted VGGT encoder computes
    img = golden()["images"][:, 0]
    vggt = _vggt_sharing(load_model(pi3_path))
    apply_fin3r_lora(vggt, lora)
    with torch.no_grad():
        assert torch.allclose(model.encode(img), vggt.encode(img), atol=1e-6)
        assert not torch.allclose(model.encode(img), load_model(pi3_path).encode(img), atol=1e-3)


def test_vggt_adapter_with_the_vggt_checkpoint_is_verified_or_refused(transfer, tmp_path, caplog):
    _, pi3_path, vggt, vggt_path, lora = transfer
    from fin3r.models.loading import apply_adapter

    model = load_model(pi3_path)
    with caplog.at_level(logging.WARNING, logger="fin3r.models.loading"):
        info = apply_adapter(model, lora, adapter_base=vggt_path)
    assert "UNVERIFIED" not in caplog.text
    assert info["renamed"] == {"aggregator.patch_embed.": "encoder."}
    n_encoder = sum(1 for k in model.state_dict() if k.startswith("encoder.") and "lora_" not in k)
    assert info["encoder_check"] == {"compared": n_encoder, "skipped": ["aggregator.patch_embed.mask_token"]}
    # a VGGT whose encoder differs in one tensor (not one the adapter holds a copy of) is refused, by name
    other = {k: v.clone() for k, v in torch.load(vggt_path, weights_only=True).items()}
    other["aggregator.patch_embed.blocks.1.mlp.fc2.bias"] += 1e-3
    torch.save(other, tmp_path / "other_vggt.pt")
    fresh = load_model(pi3_path)
    with pytest.raises(CheckpointError, match="differ first at 'encoder.blocks.1.mlp.fc2.bias'"):
        apply_adapter(fresh, lora, adapter_base=tmp_path / "other_vggt.pt")
    assert not lora_modules(fresh)  # nothing applied
    # an adapter that already names the model's layers takes no --adapter-base
    with pytest.raises(CheckpointError, match="another model family"):
        apply_adapter(vggt, lora, adapter_base=vggt_path)


def test_adapter_base_through_the_commands(transfer, capsys):
    from fin3r.cli import main

    tmp, pi3_path, _, vggt_path, lora = transfer
    images = tmp / "imgs"
    images.mkdir(exist_ok=True)
    from PIL import Image

    for i in range(2):
        Image.fromarray((torch.rand(28, 42, 3) * 255).byte().numpy()).save(images / f"{i}.png")
    assert main(["diagnose", "--model", str(pi3_path), "--adapter", str(lora), "--adapter-base", str(vggt_path),
                 "--images", str(images), "--size", "28x42", "--out", str(tmp / "diag")]) == 0
    assert "relative change" in capsys.readouterr().out
    assert main(["infer", str(images), "--model", str(pi3_path), "--adapter", str(lora), "--adapter-base",
                 str(tmp / "nope.pt"), "--out", str(tmp / "inf"), "--no-progress"]) == 2
    assert "nope.pt" in capsys.readouterr().err
