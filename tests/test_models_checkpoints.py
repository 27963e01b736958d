"""Official checkpoint formats: .pth ({'model', 'args': Namespace}) parsed safely, Hugging Face
folders, key policy, writing back, and clear errors on bad files."""

import argparse
import json
import math

import pytest
import torch

from fin3r.errors import CheckpointError
from fin3r.models import io as model_io
from fin3r.models import save_hf_folder
from fin3r.models.croco import checkpoint as ckpt
from fin3r.models import build_model, load_model

DUST3R_512_DPT = ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
                  "img_size=(512, 512), head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
                  "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, "
                  "dec_embed_dim=768, dec_depth=12, dec_num_heads=12)")


class NotAllowed:
    """A class the safe unpickler must refuse."""


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("dust3r_tiny").eval()


def _same_outputs(a, b):
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.predict_mono(img).pts3d, b.predict_mono(img).pts3d)


def test_parse_constructor_literals():
    name, kwargs = model_io.parse_constructor(DUST3R_512_DPT)
    assert name == "AsymmetricCroCo3DStereo"
    assert kwargs["depth_mode"] == ("exp", -math.inf, math.inf)
    assert kwargs["img_size"] == (512, 512) and kwargs["enc_depth"] == 24
    config = ckpt.model_config(ckpt.OFFICIAL_CLASSES[name], kwargs)
    assert "patch_embed_cls" not in config and config["family"] == "dust3r"
    assert build_model(config, device="meta").config_dict()["dpt_feature_dim"] == 256


@pytest.mark.parametrize("text,match", [
    ("AsymmetricCroCo3DStereo(head_type=__import__('os').system('echo pwned'))", "nested call"),
    ("AsymmetricCroCo3DStereo(enc_depth=2 + 2)", "not a literal"),
    ("AsymmetricCroCo3DStereo(**kw)", r"\*\*"),
    ("AsymmetricCroCo3DStereo(1, 2)", "positional"),
    ("os.system('x')", "must be a call"),
    ("AsymmetricCroCo3DStereo(", "syntax"),
    ("AsymmetricCroCo3DStereo(head_type=x)", "not a literal"),
])
def test_parse_constructor_rejects_code(text, match):
    with pytest.raises(CheckpointError, match=match):
        model_io.parse_constructor(text)


def test_official_pth_round_trip_with_namespace_pickle(tmp_path, tiny):
    path = ckpt.save_official_pth(tiny, tmp_path / "ckpt.pth")
    raw = torch.load(path, weights_only=False)
    assert isinstance(raw["args"], argparse.Namespace)
    assert raw["args"].model.startswith("AsymmetricCroCo3DStereo(")
    assert "mask_token" in raw["model"] and "downstream_head1.dpt.scratch.layer_rn.0.weight" in raw["model"]
    loaded = load_model(path)
    assert _same_outputs(loaded, tiny)


def test_real_training_style_checkpoint(tmp_path, tiny):
    """As written by the official training (croco save_model): 'module.' prefixes, extra entries,
    ManyAR_PatchEmbed and landscape_only in the constructor string."""
    sd = {f"module.{k}": v for k, v in tiny.official_state_dict().items()}
    kwargs = ckpt.official_kwargs(tiny)
    ctor = ("AsymmetricCroCo3DStereo(patch_embed_cls='ManyAR_PatchEmbed', landscape_only=True, freeze='none', "
            + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")")
    torch.save({"model": sd, "args": argparse.Namespace(model=ctor, lr=1e-4), "epoch": 3,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "train.pth")
    assert _same_outputs(load_model(tmp_path / "train.pth"), tiny)


def test_hf_folder_round_trip(tmp_path, tiny):
    folder = save_hf_folder(tiny, tmp_path / "hf")
    from safetensors.torch import load_file
    keys = set(load_file(str(folder / "model.safetensors")))
    assert not any(".scratch.layer_rn." in k for k in keys) and "mask_token" in keys
    config = json.loads((folder / "config.json").read_text())
    assert config["head_type"] == "dpt"
    assert _same_outputs(load_model(folder), tiny)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


def test_mast3r_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("mast3r_tiny").eval()
    for path in (ckpt.save_official_pth(model, tmp_path / "m.pth"), save_hf_folder(model, tmp_path / "hf")):
        loaded = load_model(path)
        assert type(loaded).__name__ == "Mast3r" and loaded.head_hidden_dim_factor == 0.25
        assert _same_outputs(loaded, model)


def test_key_policy():
    t = torch.zeros(1)
    sd = {"module.mask_token": t, "module.a.dpt.scratch.layer_rn.0.weight": t,
          "module.b.dpt.scratch.layer_rn.1.weight": t, "module.b.dpt.scratch.layer2_rn.weight": t,
          "module.dec_blocks.0.norm1.weight": t}
    out = ckpt.to_fin3r_keys(sd)
    assert set(out) == {"a.dpt.scratch.layer1_rn.weight", "b.dpt.scratch.layer2_rn.weight",
                        "dec_blocks.0.norm1.weight", "dec_blocks2.0.norm1.weight"}


def test_plain_state_dict_needs_a_registry_name(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="no architecture"):
        load_model(tmp_path / "plain.pth")
    assert _same_outputs(load_model("dust3r_tiny", checkpoint=tmp_path / "plain.pth"), tiny)


def test_truncated_file(tmp_path, tiny):
    path = ckpt.save_official_pth(tiny, tmp_path / "ckpt.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(path)
    st = tmp_path / "t.safetensors"
    from fin3r.models import save_model
    save_model(tiny, st)
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(st)


def test_foreign_pickle_class_is_refused(tmp_path, tiny):
    torch.save({"model": tiny.state_dict(), "args": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="NotAllowed"):
        load_model(tmp_path / "evil.pth")


@pytest.mark.parametrize("ctor,match", [
    ("AsymmetricCroCo3DStereo(head_type=eval('1'))", "nested call"),
    ("UnknownNet(head_type='dpt')", "unknown model class"),
    ("AsymmetricCroCo3DStereo(head_type='dpt', warp_drive=True)", "unknown AsymmetricCroCo3DStereo argument"),
])
def test_bad_constructor_strings_in_files(tmp_path, tiny, ctor, match):
    torch.save({"model": tiny.official_state_dict(), "args": argparse.Namespace(model=ctor)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "x.pth")


def test_shape_mismatch_is_clear(tmp_path, tiny):
    sd = dict(tiny.official_state_dict())
    sd["enc_norm.weight"] = torch.zeros(3)
    torch.save({"model": sd, "args": argparse.Namespace(model=ckpt.constructor_string(tiny))}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="enc_norm.weight"):
        load_model(tmp_path / "x.pth")


def test_a_registry_name_must_agree_with_the_file(tmp_path, tiny):
    path = ckpt.save_official_pth(tiny, tmp_path / "d.pth")
    assert _same_outputs(load_model("dust3r_tiny", checkpoint=path), tiny)
    with pytest.raises(CheckpointError, match="holds a dust3r model, not the requested mast3r"):
        load_model("mast3r_tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match="differs from the requested one in .*dec_depth"):
        load_model("dust3r_tiny_linear", checkpoint=path)


# --- Hugging Face export: config.json is what the official `from_pretrained` passes to its constructor ---
#: parameters of the official constructors (data, read from the upstream sources):
#: facebookresearch/vggt vggt/models/vggt.py `VGGT.__init__` (released code, PyTorchModelHubMixin)
VGGT_OFFICIAL_PARAMS = ("img_size", "patch_size", "embed_dim", "enable_camera", "enable_point", "enable_depth",
                        "enable_track")
#: naver/dust3r@4c24a6e dust3r/model.py `AsymmetricCroCo3DStereo.__init__` (+ **croco_kwargs)
DUST3R_OFFICIAL_PARAMS = ("output_mode", "head_type", "depth_mode", "conf_mode", "freeze", "landscape_only",
                          "patch_embed_cls")
#: naver/croco@d7de070 models/croco.py `CroCoNet.__init__` (receives **croco_kwargs; unknown names: TypeError)
CROCO_OFFICIAL_PARAMS = ("img_size", "patch_size", "mask_ratio", "enc_embed_dim", "enc_depth", "enc_num_heads",
                         "dec_embed_dim", "dec_depth", "dec_num_heads", "mlp_ratio", "norm_layer", "norm_im2_in_dec",
                         "pos_embed")
#: naver/mast3r@f5209af mast3r/model.py `AsymmetricMASt3R.__init__` (+ **kwargs to AsymmetricCroCo3DStereo)
MAST3R_OFFICIAL_PARAMS = ("desc_mode", "two_confs", "desc_conf_mode")


def _official_hub_class(params, var_kwargs):
    """A stand-in with the official constructor's parameter names, loaded through the real
    `PyTorchModelHubMixin.from_pretrained`: it records the kwargs it receives."""
    hub = pytest.importorskip("huggingface_hub")

    class Official(torch.nn.Module, hub.PyTorchModelHubMixin):
        def __init__(self, **kwargs):
            super().__init__()
            self.received = kwargs

    import inspect

    p = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in params]
    if var_kwargs:
        p.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    Official.__init__.__signature__ = inspect.Signature([inspect.Parameter("self", 0)] + p)
    Official._hub_mixin_init_parameters = dict(inspect.signature(Official.__init__).parameters)
    return Official


def test_vggt_hf_export_is_the_official_layout(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = build_model("vggt_tiny").eval()
    folder = save_hf_folder(model, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert sorted(config) == sorted(VGGT_OFFICIAL_PARAMS)
    assert config == {"img_size": 56, "patch_size": 14, "embed_dim": 24, "enable_camera": True,
                      "enable_point": True, "enable_depth": True, "enable_track": False}
    keys = set(load_file(str(folder / "model.safetensors")))
    assert keys == set(model.official_state_dict()) and not any(k.startswith("track_head.") for k in keys)
    official = _official_hub_class(VGGT_OFFICIAL_PARAMS, var_kwargs=False).from_pretrained(str(folder))
    assert official.received == config
    # the tiny architecture is not expressible in the official kwargs: fin3r's config rides beside it
    assert json.loads((folder / model_io.FIN3R_CONFIG_FILE).read_text()) == model.config_dict()
    loaded = load_model(folder)
    assert loaded.config_dict() == model.config_dict()
    img = torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(img)["world_points"], model(img)["world_points"])
    # the official form alone (no sidecar) with a registry name; and an older fin3r-written config.json
    (folder / model_io.FIN3R_CONFIG_FILE).unlink()
    assert load_model("vggt_tiny", checkpoint=folder).config_dict() == model.config_dict()
    (folder / "config.json").write_text(json.dumps({k: v for k, v in model.config_dict().items() if k != "family"}))
    assert load_model(folder).config_dict() == model.config_dict()
    (folder / "config.json").write_text(json.dumps({**config, "enable_point": False}))
    with pytest.raises(CheckpointError, match="point"):
        load_model(folder)


def test_vggt_1b_hf_config_needs_no_sidecar():
    model = build_model("vggt_1b", device="meta")
    assert model.official_architecture and not build_model("vggt_tiny", device="meta").official_architecture
    assert model.hf_config() == {"img_size": 518, "patch_size": 14, "embed_dim": 1024, "enable_camera": True,
                                 "enable_point": True, "enable_depth": True, "enable_track": False}


@pytest.mark.parametrize("name", ["dust3r_tiny", "mast3r_tiny"])
def test_croco_hf_config_holds_official_kwargs_only(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    folder = save_hf_folder(model, tmp_path / "hf")
    text = (folder / "config.json").read_text()
    config = json.loads(text)  # `inf` written as Python's json (and PyTorchModelHubMixin) writes it
    assert '"depth_mode": [\n    "exp",\n    -Infinity,\n    Infinity\n  ]' in text
    assert config["depth_mode"] == ["exp", -math.inf, math.inf]
    outer = DUST3R_OFFICIAL_PARAMS + (MAST3R_OFFICIAL_PARAMS if name.startswith("mast3r") else ())
    assert set(config) <= set(outer + CROCO_OFFICIAL_PARAMS) and not set(config) & ckpt.FIN3R_ONLY_ARGS
    assert not (folder / model_io.FIN3R_CONFIG_FILE).exists()
    received = _official_hub_class(outer, var_kwargs=True).from_pretrained(str(folder)).received
    assert {k: v for k, v in received.items() if k in config} == config
    croco_kwargs = {k: v for k, v in received.items() if k not in outer}
    assert set(croco_kwargs) <= set(CROCO_OFFICIAL_PARAMS)  # CroCoNet(**croco_kwargs) takes them all
    assert _same_outputs(load_model(folder), model)  # DPT / MLP widths come back from the weight shapes
