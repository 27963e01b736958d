"""π3: parity with the official code (golden fixtures), official keys, the interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fin3r.errors import InputError
from fin3r.geometry import invert_rigid, transform_points
from fin3r.models.pi3 import PI3_CONFIG, PI3_TINY_CONFIG, PI3X_CONFIG, PI3X_TINY_CONFIG, Pi3
from fin3r.models.pi3 import model as pi3_model
from fin3r.models.pi3.heads import nearest_rotation

FIXTURES = Path(__file__).parent / "fixtures"
KEYS_TSV = FIXTURES / "pi3.keys.tsv"
PI3X_KEYS_TSV = FIXTURES / "pi3x.keys.tsv"
CASES = ["s1_42x56", "s3_28x42", "b2s1_42x42", "b2s2_42x28"]
OUTPUTS = ("points", "local_points", "conf", "camera_poses")
OUT_TOL, ENC_TOL = 1e-4, 1e-5


def official_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "pi3_tiny_state.safetensors"))


def golden(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"pi3_tiny_{case}.safetensors"))


@pytest.fixture(scope="module")
def tiny() -> Pi3:
    model = Pi3(**PI3_TINY_CONFIG).eval()
    model.load_state_dict(official_state(), strict=True)
    return model


def test_fixture_config_is_the_tiny_config():
    with safe_open(str(FIXTURES / "pi3_tiny_state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == PI3_TINY_CONFIG


# --- parity with the official code ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(tiny, case):
    g = golden(case)
    with torch.no_grad():
        out = tiny(g["images"])
    for key in OUTPUTS:
        assert out[key].shape == g[key].shape, key
        assert out[key].dtype == torch.float32
        err = (out[key] - g[key]).abs().max().item()
        assert err < OUT_TOL, f"{case} {key}: max |diff| {err:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_encoder_tokens_match_official(tiny, case):
    g = golden(case)
    imgs = g["images"].flatten(0, 1)
    with torch.no_grad():
        tokens = tiny.encode(imgs)
        prenorm = tiny.encode_prenorm(imgs)
    assert tokens.shape == g["x_norm_patchtokens"].shape
    assert (tokens - g["x_norm_patchtokens"]).abs().max().item() < ENC_TOL
    assert (prenorm - g["x_prenorm"][:, 1 + 4 :]).abs().max().item() < ENC_TOL


def test_parity_pins_the_register_and_patch_positions(tiny, monkeypatch):
    """Patches at (y + 1, x + 1) and registers at (0, 0): patches at (y, x) move the outputs."""

    def unshifted(batch, h, w, num_special, device):
        special = torch.zeros(batch, num_special, 2, dtype=torch.long, device=device)
        return torch.cat((special, pi3_model.patch_positions(batch, h, w, device=device)), dim=1)

    monkeypatch.setattr(pi3_model, "decoder_positions", unshifted)
    g = golden("s3_28x42")
    with torch.no_grad():
        out = tiny(g["images"])
    assert (out["local_points"] - g["local_points"]).abs().max().item() > 100 * OUT_TOL


def test_frame_and_global_layers_alternate(tiny):
    """Views interact (odd layers attend across frames): view 0 alone differs from view 0 of three,
    and permuting the views permutes the outputs (no reference view)."""
    g = golden("s3_28x42")
    with torch.no_grad():
        three = tiny(g["images"])
        alone = tiny(g["images"][:, :1])
        perm = tiny(g["images"][:, [2, 0, 1]])
    assert (alone["local_points"][:, 0] - three["local_points"][:, 0]).abs().max() > 1e-3
    assert torch.allclose(perm["local_points"], three["local_points"][:, [2, 0, 1]], atol=1e-5)
    assert torch.allclose(perm["camera_poses"], three["camera_poses"][:, [2, 0, 1]], atol=1e-5)


# --- the Reconstructor interface ------------------------------------------------------------------
def test_predict_mono_is_the_local_point_map(tiny):
    g = golden("b2s1_42x42")
    with torch.no_grad():
        pred = tiny.predict_mono(g["images"][:, 0])
    assert pred.depth.shape == (2, 42, 42) and pred.conf.shape == (2, 42, 42)
    assert (pred.pts3d - g["local_points"][:, 0]).abs().max() < OUT_TOL
    assert torch.equal(pred.depth, pred.pts3d[..., 2])
    logits = g["conf"][:, 0, ..., 0]
    assert torch.allclose(pred.conf, 1 + torch.exp(logits), atol=1e-4, rtol=1e-4)
    assert (pred.conf >= 1).all()
    # the mapping is monotone in π3's own score: sigmoid(logit) = 1 - 1 / conf
    assert torch.allclose(1 - 1 / pred.conf, torch.sigmoid(logits), atol=1e-5)


def test_predict_views_is_in_view0_frame(tiny):
    g = golden("b2s2_42x28")
    with torch.no_grad():
        pred = tiny.predict_views(g["images"])
    assert pred.pts3d.shape == (2, 2, 42, 28, 3) and pred.conf.shape == (2, 2, 42, 28)
    eye = torch.eye(4).expand(2, 4, 4)
    assert torch.allclose(pred.cam2world[:, 0], eye, atol=1e-5)
    to_view0 = invert_rigid(g["camera_poses"][:, :1])
    assert (pred.pts3d - transform_points(to_view0, g["points"])).abs().max() < OUT_TOL
    # each view's points are its local points moved by its pose relative to view 0
    assert (pred.pts3d - transform_points(pred.cam2world, g["local_points"])).abs().max() < OUT_TOL
    assert (pred.depth - g["local_points"][..., 2]).abs().max() < OUT_TOL
    assert pred.intrinsics.shape == (2, 2, 3, 3)
    assert (pred.extras["camera_poses"] - g["camera_poses"]).abs().max() < OUT_TOL
    assert (pred.extras["conf_logits"] - g["conf"][..., 0]).abs().max() < OUT_TOL


def test_intrinsics_are_recovered_from_pinhole_local_points():
    from fin3r.geometry import depth_to_points
    from fin3r.models.pi3.model import intrinsics_from_local_points

    K = torch.tensor([[[30.0, 0.0, 13.5], [0.0, 28.0, 9.0], [0.0, 0.0, 1.0]]])
    depth = 1.0 + torch.rand(1, 20, 28)
    K_fit = intrinsics_from_local_points(depth_to_points(depth, K))
    assert torch.allclose(K_fit, K, atol=1e-3)


def test_nearest_rotation():
    torch.manual_seed(0)
    R = nearest_rotation(torch.randn(5, 9))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(5), atol=1e-5)
    # a rotation (any row scaling) maps to itself; a reflection to a proper rotation
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    scaled = rot * torch.tensor([[2.0], [0.5], [3.0]])
    assert torch.allclose(nearest_rotation(scaled.reshape(1, 9))[0], rot, atol=1e-6)
    flip = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    assert torch.allclose(torch.det(nearest_rotation(flip.reshape(1, 9))), torch.ones(1), atol=1e-6)


def test_image_size_must_be_a_multiple_of_14(tiny):
    with pytest.raises(InputError, match="multiple of the patch size 14"):
        tiny.predict_mono(torch.rand(1, 3, 42, 50))
    with pytest.raises(InputError):
        tiny.predict_views(torch.rand(1, 3, 42, 42))  # (B, 3, H, W) is not a set of views


def test_heads_run_in_fp32_under_autocast(tiny):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(torch.rand(1, 2, 3, 28, 42))
    assert all(out[k].dtype == torch.float32 for k in OUTPUTS)


def test_encoder_linear_names_and_lora(tiny):
    from fin3r.lora import inject_lora

    names = tiny.encoder_linear_names()
    assert names == [f"encoder.blocks.{i}.attn.qkv" for i in range(2)]
    model = Pi3(**PI3_TINY_CONFIG).eval()
    model.load_state_dict(official_state())
    img = golden("s1_42x56")["images"][:, 0]
    with torch.no_grad():
        before = model.predict_mono(img).depth
    assert inject_lora(model, names, rank=2, mode="weight_row") == names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.blocks.") for n in trainable)
    with torch.no_grad():
        assert torch.allclose(model.predict_mono(img).depth, before, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Pi3(**PI3_TINY_CONFIG)
    img = torch.rand(1, 2, 3, 28, 28)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        model(img)["local_points"].sum().backward()
        grads.append(model.encoder.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_decoder_depth_must_pair_frame_and_global_layers():
    with pytest.raises(ValueError, match="even"):
        Pi3(**{**PI3_TINY_CONFIG, "decoder_depth": 3})


# --- full size ------------------------------------------------------------------------------------
def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split("\t")
        keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


def test_full_size_keys_and_shapes_match_official():
    official = read_tsv(KEYS_TSV)
    assert len(official) == 1210
    with torch.device("meta"):
        model = Pi3(**PI3_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    assert sum(p.numel() for p in model.parameters()) == 958_696_732
    # the encoder is VGGT-1B's aggregator.patch_embed without its mask_token (1024 values)
    assert sum(p.numel() for p in model.encoder_parameters().values()) == 304_372_736 - 1024
    assert len(model.encoder_linear_names()) == 24


def test_pi3x_full_size_keys_and_shapes_match_official():
    """Pi3X with its conditioning branches off (``disable_multimodal()``)."""
    official = read_tsv(PI3X_KEYS_TSV)
    assert len(official) == 1437
    with torch.device("meta"):
        model = Pi3(**PI3X_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    assert len(model.encoder_linear_names()) == 24


def test_official_config():
    with torch.device("meta"):
        large = Pi3(**PI3_CONFIG)
        pi3x = Pi3(**PI3X_CONFIG)
    assert large.official_name == "large" and large.official_architecture
    assert large.hf_config() == {"pos_type": "rope100", "decoder_size": "large"}
    assert pi3x.official_name == "pi3x" and pi3x.hf_config() == {"ckpt": None, "use_multimodal": False}
    tiny = Pi3(**PI3_TINY_CONFIG)
    assert tiny.official_name is None and not tiny.official_architecture
    assert tiny.config_dict() == {"family": "pi3", **PI3_TINY_CONFIG}


# --- Pi3X (conditioning off) ----------------------------------------------------------------------
PI3X_CASES = ["s1_42x56", "s3_28x42", "b2s2_42x28"]


def pi3x_state() -> dict[str, torch.Tensor]:
    """The fixture's Pi3X: the tiny π3 trunk with the Pi3X heads and metric branch."""
    trunk = {k: v for k, v in official_state().items() if not k.startswith(("point_head.", "conf_head."))}
    return {**trunk, **load_file(str(FIXTURES / "pi3x_tiny_heads.safetensors"))}


@pytest.fixture(scope="module")
def tiny_x() -> Pi3:
    model = Pi3(**PI3X_TINY_CONFIG).eval()
    model.load_state_dict(pi3x_state(), strict=True)
    return model


def test_pi3x_fixture_config():
    with safe_open(str(FIXTURES / "pi3x_tiny_heads.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == PI3X_TINY_CONFIG


@pytest.mark.parametrize("case", PI3X_CASES)
def test_pi3x_forward_matches_official(tiny_x, case):
    g = load_file(str(FIXTURES / f"pi3x_tiny_{case}.safetensors"))
    with torch.no_grad():
        out = tiny_x(g["images"])
    for key in (*OUTPUTS, "metric"):
        assert out[key].shape == g[key].shape, key
        err = (out[key] - g[key]).abs().max().item()
        assert err < OUT_TOL, f"{case} {key}: max |diff| {err:.2e}"


def test_pi3x_metric_scales_points_and_translations(tiny_x):
    g = load_file(str(FIXTURES / "pi3x_tiny_b2s2_42x28.safetensors"))
    with torch.no_grad():
        pred = tiny_x.predict_views(g["images"])
        mono = tiny_x.predict_mono(g["images"][:, 0])
    assert torch.allclose(pred.extras["metric"], g["metric"], atol=1e-6)
    assert (pred.depth - g["local_points"][..., 2]).abs().max() < OUT_TOL
    # a single view gets its own metric scale: the mono depth is the metric-scaled local z
    assert mono.depth.shape == (2, 42, 28) and (mono.depth > 0).all()
    assert torch.equal(mono.depth, mono.pts3d[..., 2])
