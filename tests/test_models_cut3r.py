"""CUT3R: parity with the official code (golden fixtures), keys of the released configs, the
recurrent state details, the official .pth reader (OmegaConf args) and bad files."""

from __future__ import annotations

import argparse
import collections
import math
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fin3r.errors import CheckpointError, InputError
from fin3r.models.cut3r.model import (
    CUT3R_224_LINEAR_4, CUT3R_512_DPT_4_64, CUT3R_TINY, CUT3R_TINY_LINEAR, Cut3r, estimate_intrinsics,
    state_positions,
)
from fin3r.models import load_model
from fin3r.models.cut3r.checkpoint import constructor_string, parse_model_string
from fin3r.models.layers.attention import Attention

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = {"dpt": CUT3R_TINY, "linear": CUT3R_TINY_LINEAR}
OUT_TOL, ENC_TOL = 5e-4, 1e-4


def golden(variant: str) -> tuple[dict, dict]:
    state = load_file(str(FIXTURES / f"cut3r_{variant}_tiny_state.safetensors"))
    outputs = load_file(str(FIXTURES / f"cut3r_{variant}_tiny_outputs.safetensors"))
    return state, outputs


def tiny_model(variant: str, **overrides) -> Cut3r:
    """The fixture's architecture with the fixture's (official-format) weights."""
    state, _ = golden(variant)
    model = Cut3r(**{**VARIANTS[variant], **overrides}).eval()
    model.load_state_dict({k: v for k, v in state.items() if ".scratch.layer_rn." not in k}, strict=True)
    return model


def max_err(ress: list[dict], outputs: dict, case: str) -> float:
    return max((res[k] - outputs[f"{case}.{s}.{k}"]).abs().max().item() for s, res in enumerate(ress) for k in res)


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (FIXTURES / f"{name}.keys.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        keys[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return keys


# --- parity with the official code -----------------------------------------------------------------
@pytest.mark.parametrize("variant", ["dpt", "linear"])
@pytest.mark.parametrize("case", ["s1", "s3"])
def test_matches_official_outputs(variant, case):
    model = tiny_model(variant)
    _, outputs = golden(variant)
    imgs = outputs[f"{case}.imgs"]
    with torch.no_grad():
        ress = model(imgs)
    assert len(ress) == imgs.shape[1]
    for s, res in enumerate(ress):
        assert set(res) == {"pts3d_in_self_view", "conf_self", "rgb", "camera_pose", "pts3d_in_other_view", "conf"}
        for key, value in res.items():
            ref = outputs[f"{case}.{s}.{key}"]
            assert value.shape == ref.shape, key
            torch.testing.assert_close(value, ref, atol=OUT_TOL, rtol=0, msg=f"{case} frame {s} {key}")
        with torch.no_grad():
            enc = model.encode(imgs[:, s])
            pre = model.encode_prenorm(imgs[:, s])
        torch.testing.assert_close(enc, outputs[f"{case}.{s}.enc_tokens"], atol=ENC_TOL, rtol=0)
        torch.testing.assert_close(pre, outputs[f"{case}.{s}.enc_tokens_prenorm"], atol=ENC_TOL, rtol=0)


@pytest.mark.parametrize("variant", ["dpt", "linear"])
def test_state_decoder_head_count_matters(variant):
    """State and image decoders have the same shapes; the wrong head count loads but is wrong."""
    cfg = VARIANTS[variant]
    model = tiny_model(variant)
    assert model.dec_blocks_state[0].attn.num_heads == cfg["state_dec_num_heads"]
    assert model.dec_blocks[0].attn.num_heads == cfg["dec_num_heads"]
    assert cfg["state_dec_num_heads"] != cfg["dec_num_heads"]
    wrong = tiny_model(variant, state_dec_num_heads=cfg["dec_num_heads"])  # loads silently
    _, outputs = golden(variant)
    with torch.no_grad():
        assert max_err(model(outputs["s3.imgs"]), outputs, "s3") < OUT_TOL
        assert max_err(wrong(outputs["s3.imgs"]), outputs, "s3") > 10 * OUT_TOL


def test_encoder_fp16_rope_rounding_is_reproduced():
    """The official encoder rounds q, k to float16 around RoPE; plain fp32 RoPE is measurably off."""
    model = tiny_model("dpt")
    _, outputs = golden("dpt")
    imgs = outputs["s3.imgs"]
    for blk in model.enc_blocks:
        plain = Attention(model.enc_embed_dim, num_heads=blk.attn.num_heads, rope=model.rope)
        plain.load_state_dict(blk.attn.state_dict())
        blk.attn = plain
    with torch.no_grad():
        enc = model.encode_prenorm(imgs[:, 0])
    assert (enc - outputs["s3.0.enc_tokens_prenorm"]).abs().max() > ENC_TOL  # ~7e-4 here


def test_pose_token_position_and_state_grid():
    assert state_positions(768)[27].tolist() == [0, 27] and state_positions(768)[28].tolist() == [1, 0]
    assert state_positions(12).tolist()[:5] == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]  # width 3 -> 4
    assert state_positions(16)[4].tolist() == [1, 0]  # width 4 stays
    assert state_positions(3, "1d").tolist() == [[0, 0], [1, 1], [2, 2]]
    model = tiny_model("dpt")
    _, outputs = golden("dpt")
    imgs = outputs["s1.imgs"][:, 0]
    feat, pos = model.encode_with_pos(imgs)
    state = model.init_state(imgs.shape[0])
    seen = {}

    def record(module, args):
        seen["pos"] = args[1]

    hook = model.dec_blocks[0].attn.register_forward_pre_hook(record)
    with torch.no_grad():
        model.decode(state, feat, pos, model.pose_token.expand(imgs.shape[0], -1, -1))
    hook.remove()
    assert seen["pos"][:, 0].tolist() == [[-1, -1]] * imgs.shape[0]
    torch.testing.assert_close(seen["pos"][:, 1:], pos)


# --- the Reconstructor interface -----------------------------------------------------------------
def test_predict_mono_and_views_follow_the_official_outputs():
    model = tiny_model("dpt")
    _, outputs = golden("dpt")
    imgs = outputs["s3.imgs"]
    with torch.no_grad():
        mono = model.predict_mono(imgs[:, 0])
        views = model.predict_views(imgs)
    ref = lambda s, k: outputs[f"s3.{s}.{k}"]  # noqa: E731
    torch.testing.assert_close(mono.depth, ref(0, "pts3d_in_self_view")[..., 2], atol=OUT_TOL, rtol=0)
    torch.testing.assert_close(mono.conf, ref(0, "conf_self"), atol=OUT_TOL, rtol=0)
    torch.testing.assert_close(mono.depth_aux[0], ref(0, "pts3d_in_other_view")[..., 2], atol=OUT_TOL, rtol=0)
    B, S, _, H, W = imgs.shape
    assert views.pts3d.shape == (B, S, H, W, 3) and views.conf.shape == (B, S, H, W)
    for s in range(S):
        torch.testing.assert_close(views.pts3d[:, s], ref(s, "pts3d_in_other_view"), atol=OUT_TOL, rtol=0)
        torch.testing.assert_close(views.depth[:, s], ref(s, "pts3d_in_self_view")[..., 2], atol=OUT_TOL, rtol=0)
        torch.testing.assert_close(views.extras["camera_pose"][:, s], ref(s, "camera_pose"), atol=OUT_TOL, rtol=0)
    R = views.cam2world[..., :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cam2world[..., :3, 3], views.extras["camera_pose"][..., :3])
    assert views.intrinsics.shape == (B, S, 3, 3)
    assert views.extras["pts3d_self"].shape == (B, S, H, W, 3) and views.extras["rgb"].shape == (B, S, H, W, 3)


def test_estimate_intrinsics_recovers_a_pinhole_camera():
    H, W, f = 24, 40, 31.5
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    depth = 2 + torch.rand(2, H, W, dtype=torch.float64)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    pts = torch.stack(((u - cx) / f * depth, (v - cy) / f * depth, depth), dim=-1)
    pts[0, :3] *= -1  # points behind the camera are ignored
    K = estimate_intrinsics(pts, conf=torch.rand(2, H, W, dtype=torch.float64) + 1)
    expected = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(K, expected.expand(2, 3, 3))


def test_input_checks():
    model = Cut3r(**CUT3R_TINY).eval()
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        model.predict_mono(torch.rand(1, 3, 32, 40))
    with pytest.raises(InputError):
        model.predict_views(torch.rand(1, 3, 32, 32))


def test_encoder_linear_names_and_lora_identity():
    from fin3r.lora import inject_lora

    model = tiny_model("linear")
    names = model.encoder_linear_names()
    assert names == [f"enc_blocks.{i}.attn.qkv" for i in range(CUT3R_TINY_LINEAR["enc_depth"])]
    _, outputs = golden("linear")
    imgs = outputs["s1.imgs"]
    inject_lora(model, names, rank=2)
    with torch.no_grad():
        assert max_err(model(imgs), outputs, "s1") < OUT_TOL


# --- keys of the released models ------------------------------------------------------------------
@pytest.mark.parametrize("name,config", [("cut3r_512_dpt_4_64", CUT3R_512_DPT_4_64),
                                         ("cut3r_224_linear_4", CUT3R_224_LINEAR_4)])
def test_full_size_keys_and_shapes_match_official(name, config):
    with torch.device("meta"):
        model = Cut3r(**config)
    ours = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    assert ours == read_keys(name)
    names = model.encoder_linear_names()
    assert names == [f"enc_blocks.{i}.attn.qkv" for i in range(24)]
    assert not any("ray_map" in n for n in model.encoder_linear_names(["qkv", "proj", "fc1", "fc2"]))
    assert sum(p.numel() for p in model.encoder_parameters().values()) == 303_098_880
    if name == "cut3r_512_dpt_4_64":
        assert sum(p.numel() for p in model.parameters()) == 793_307_858


def test_official_state_dict_has_aliases_of_the_same_tensors():
    model = tiny_model("dpt")
    state, _ = golden("dpt")
    sd = model.official_state_dict()
    assert set(sd) == set(state)
    for name in ("dpt_self", "dpt_cross", "dpt_rgb"):
        for i in range(4):
            alias = sd[f"downstream_head.{name}.scratch.layer_rn.{i}.weight"]
            assert alias is sd[f"downstream_head.{name}.scratch.layer{i + 1}_rn.weight"]


# --- official .pth files ----------------------------------------------------------------------------
def _fake_omegaconf(monkeypatch) -> types.SimpleNamespace:
    """Stand-ins with the OmegaConf class names whose pickles look like the real ones
    (``__dict__`` state with ``_metadata``, ``_parent``, ``_content`` / ``_val``)."""
    classes, modules = {}, {"omegaconf": types.ModuleType("omegaconf")}
    monkeypatch.setitem(sys.modules, "omegaconf", modules["omegaconf"])
    for module, name in [("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
                         ("omegaconf.nodes", "AnyNode"), ("omegaconf.base", "Metadata"),
                         ("omegaconf.base", "ContainerMetadata")]:
        if module not in modules:
            modules[module] = types.ModuleType(module)
            monkeypatch.setitem(sys.modules, module, modules[module])
        classes[name] = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(modules[module], name, classes[name])
    ns = types.SimpleNamespace(**classes)

    def meta(cls, key=None):
        m = cls()
        m.__dict__.update(ref_type=typing.Any, object_type=dict, optional=True, key=key, flags={},
                          flags_root=False, resolver_cache=collections.defaultdict(dict))
        return m

    def make(value, parent=None, key=None):
        if isinstance(value, dict):
            node = ns.DictConfig()
            node.__dict__.update(_metadata=meta(ns.ContainerMetadata, key), _parent=parent)
            node._content = {k: make(v, node, k) for k, v in value.items()}
        elif isinstance(value, list):
            node = ns.ListConfig()
            node.__dict__.update(_metadata=meta(ns.ContainerMetadata, key), _parent=parent)
            node._content = [make(v, node, i) for i, v in enumerate(value)]
        else:
            node = ns.AnyNode()
            node.__dict__.update(_metadata=meta(ns.Metadata, key), _parent=parent, _val=value)
        return node

    ns.make = make
    return ns


def write_official_pth(path: Path, state_dict: dict, args, prefix: str = "") -> Path:
    torch.save({"model": {prefix + k: v for k, v in state_dict.items()}, "args": args, "epoch": 7,
                "best_so_far": 0.5}, path)
    return path


def tiny_model_string(config: dict, **extra) -> str:
    text = constructor_string(config)
    extras = "".join(f"{k}={v!r}, " for k, v in extra.items())
    return text.replace("ARCroco3DStereoConfig(", "ARCroco3DStereoConfig(" + extras)


def test_official_pth_with_omegaconf_args_loads(tmp_path, monkeypatch):
    fake = _fake_omegaconf(monkeypatch)
    state, outputs = golden("dpt")
    args = fake.make({"model": tiny_model_string(CUT3R_TINY, freeze="encoder", patch_embed_cls="ManyAR_PatchEmbed"),
                      "output_dir": "${save_dir}/run", "save_dir": "ckpt", "lr": 1e-4,
                      "data": {"sizes": [512, 384], "none": None}})
    path = write_official_pth(tmp_path / "cut3r.pth", state, args, prefix="module.")
    model = load_model(path)
    assert model.config_dict()["state_dec_num_heads"] == CUT3R_TINY["state_dec_num_heads"]
    with torch.no_grad():
        assert max_err(model(outputs["s3.imgs"]), outputs, "s3") < OUT_TOL


def test_official_pth_with_namespace_or_without_args(tmp_path):
    import numpy as np

    state, outputs = golden("linear")
    extra = tmp_path / "numpy_scalars.pth"  # training files: best_so_far may be a numpy float
    torch.save({"model": state, "args": argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR)),
                "best_so_far": np.float64(0.25), "epoch": np.int64(3)}, extra)
    assert load_model(extra).config_dict()["dec_embed_dim"] == CUT3R_TINY_LINEAR["dec_embed_dim"]
    args = argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR))
    path = write_official_pth(tmp_path / "ns.pth", state, args)
    model = load_model(path)
    with torch.no_grad():
        assert max_err(model(outputs["s1.imgs"]), outputs, "s1") < OUT_TOL
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    model = load_model({"family": "cut3r", **CUT3R_TINY_LINEAR}, checkpoint=plain)
    with torch.no_grad():
        assert max_err(model(outputs["s1.imgs"]), outputs, "s1") < OUT_TOL
    with pytest.raises(CheckpointError, match="the description asks for"):  # no args: the released 224 model
        load_model(plain)


def test_model_string_is_parsed_never_evaluated():
    kwargs = parse_model_string(constructor_string(CUT3R_512_DPT_4_64))
    assert kwargs["state_size"] == 768 and kwargs["depth_mode"] == ("exp", -math.inf, math.inf)
    for bad in ["ARCroco3DStereo(ARCroco3DStereoConfig(state_size=__import__('os').getpid()))",
                "__import__('os').system('true')", "ARCroco3DStereo(state_size=1)",
                "ARCroco3DStereo(Other(state_size=1))", "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=1)"]:
        with pytest.raises(CheckpointError):
            parse_model_string(bad)


def test_bad_files(tmp_path, monkeypatch):
    state, _ = golden("linear")
    good = write_official_pth(tmp_path / "good.pth", state,
                              argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR)))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pth")

    class Foreign:  # a class that would run code when unpickled
        def __reduce__(self):
            return (print, ("unpickled!",))

    foreign = tmp_path / "foreign.pth"
    torch.save({"model": state, "args": Foreign()}, foreign)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model(foreign)
    _fake_omegaconf(monkeypatch)  # a class under an OmegaConf module name that is not allowed
    evil_cls = type("Evil", (), {"__module__": "omegaconf.dictconfig", "__qualname__": "Evil"})
    sys.modules["omegaconf.dictconfig"].Evil = evil_cls
    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "args": evil_cls()}, evil)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model(evil)
    # a description that does not fit the tensors (refused before allocation), and one that
    # contradicts the request
    other = write_official_pth(tmp_path / "other.pth", state,
                               argparse.Namespace(model=tiny_model_string({**CUT3R_TINY_LINEAR, "state_size": 13})))
    with pytest.raises(CheckpointError, match="state_size=13 does not match the weights"):
        load_model(other)
    with pytest.raises(CheckpointError, match="differs from the requested"):
        load_model({"family": "cut3r", **CUT3R_224_LINEAR_4}, checkpoint=good)
    # weights that do not fit: a missing key, a wrong shape
    missing = write_official_pth(tmp_path / "missing_key.pth", {k: v for k, v in state.items() if k != "pose_token"},
                                 argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR)))
    with pytest.raises(CheckpointError, match="1 missing.*pose_token"):
        load_model(missing)
    reshaped = write_official_pth(tmp_path / "shape.pth", {**state, "pose_token": torch.zeros(1, 1, 3)},
                                  argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR)))
    with pytest.raises(CheckpointError, match="other shapes.*pose_token"):
        load_model(reshaped)


# --- the registry -----------------------------------------------------------------------------------
def test_registry_builds_saves_and_loads(tmp_path, monkeypatch):
    from fin3r.models import MODEL_CONFIGS, build_model, save_model, save_official

    assert {"cut3r_512_dpt_4_64", "cut3r_224_linear_4", "cut3r_tiny"} <= set(MODEL_CONFIGS)
    model = build_model("cut3r_tiny_linear").eval()
    imgs = torch.rand(1, 2, 3, 32, 48)
    with torch.no_grad():
        ref = model.predict_views(imgs).pts3d
    for path in (save_model(model, tmp_path / "m.safetensors"), save_official(model, tmp_path / "m.pth")):
        loaded = load_model(path)
        assert isinstance(loaded, Cut3r) and loaded.config_dict() == model.config_dict()
        with torch.no_grad():
            torch.testing.assert_close(loaded.predict_views(imgs).pts3d, ref, atol=0, rtol=0)
    fake = _fake_omegaconf(monkeypatch)
    state, outputs = golden("dpt")
    path = write_official_pth(tmp_path / "o.pth", state, fake.make({"model": tiny_model_string(CUT3R_TINY)}))
    for loaded in (load_model(path), load_model("cut3r_tiny", checkpoint=path)):
        with torch.no_grad():
            assert max_err(loaded(outputs["s1.imgs"]), outputs, "s1") < OUT_TOL
    with pytest.raises(CheckpointError, match="differs from the requested"):
        load_model("cut3r_tiny_linear", checkpoint=path)


def test_streaming_steps_equal_the_sequence_forward():
    model = tiny_model("linear")
    _, outputs = golden("linear")
    imgs = outputs["s3.imgs"]
    with torch.no_grad():
        ress = model(imgs)
        state = model.init_state(imgs.shape[0])
        for s in range(imgs.shape[1]):
            feat, pos = model.encode_with_pos(imgs[:, s])
            res, state = model.step(state, feat, pos, tuple(imgs.shape[-2:]))
            for key, value in res.items():
                torch.testing.assert_close(value, ress[s][key], atol=1e-5, rtol=0)
    assert state.frames == imgs.shape[1]


def test_load_model_refuses_a_truncated_cut3r_file(tmp_path):
    state, _ = golden("linear")
    good = write_official_pth(tmp_path / "good.pth", state,
                              argparse.Namespace(model=tiny_model_string(CUT3R_TINY_LINEAR)))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    with pytest.raises(CheckpointError):
        load_model(truncated)
