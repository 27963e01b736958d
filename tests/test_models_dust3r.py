"""DUSt3R/MASt3R behaviour on tiny random models, registry round trips, and key compatibility of
the full-size configs (built on the meta device) with the official key lists."""

from pathlib import Path

import pytest
import torch

from fin3r.errors import CheckpointError, InputError
from fin3r.models.base import Reconstructor
from fin3r.models.croco.dust3r import Dust3r
from fin3r.models.croco.mast3r import Mast3r
from fin3r.models import MODEL_CONFIGS, build_model, load_model, save_model

FIXTURES = Path(__file__).parent / "fixtures"


def _official_keys(name):
    rows = [line.split("\t") for line in (FIXTURES / f"{name}.keys.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    return {k: tuple(int(s) for s in shape.strip("()").split(",") if s.strip()) for k, shape in rows}


@pytest.mark.parametrize("name,keys", [
    ("dust3r_512_dpt", "dust3r_512_dpt"),
    ("dust3r_512_linear", "dust3r_512_linear"),
    ("dust3r_224_linear", "dust3r_512_linear"),
    ("mast3r_512_catmlpdpt_metric", "mast3r_512_catmlpdpt_metric"),
])
def test_full_size_keys_and_shapes_match_official(name, keys):
    model = build_model(name, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    official = _official_keys(keys)
    assert set(ours) - set(official) == set()
    assert set(official) - set(ours) == set()
    assert ours == official
    # our own state_dict: the official one without the aliases and the unused mask_token
    own = set(model.state_dict())
    assert own == {k for k in official if ".scratch.layer_rn." not in k and k != "mask_token"}


def test_encoder_parameter_count_and_lora_targets():
    model = build_model("dust3r_512_dpt", device="meta")
    assert sum(p.numel() for p in model.encoder_parameters().values()) == 303_098_880
    names = model.encoder_linear_names()
    assert names == [f"enc_blocks.{i}.attn.qkv" for i in range(24)]
    assert len(model.encoder_linear_names(["qkv", "proj", "fc1", "fc2"])) == 96


@pytest.fixture(scope="module", params=["dust3r_tiny", "dust3r_tiny_linear", "mast3r_tiny"])
def tiny(request):
    torch.manual_seed(0)
    model = build_model(request.param).eval()
    model.test_name = request.param
    return model


@pytest.mark.parametrize("hw", [(32, 48), (48, 32), (16, 16)])
def test_predict_mono_shapes_landscape_and_portrait(tiny, hw):
    img = torch.rand(2, 3, *hw)
    with torch.no_grad():
        pred = tiny.predict_mono(img)
        res1, res2 = tiny(img, img)
    assert pred.depth.shape == (2, *hw) and pred.conf.shape == (2, *hw) and pred.pts3d.shape == (2, *hw, 3)
    assert (pred.conf >= 1).all()
    assert torch.equal(pred.depth, pred.pts3d[..., 2])
    assert len(pred.depth_aux) == 1 and pred.depth_aux[0].shape == (2, *hw)
    # encode-once equals the official pair forward (which encodes the image twice)
    assert torch.allclose(pred.pts3d, res1["pts3d"], atol=1e-5)
    assert torch.allclose(pred.depth_aux[0], res2["pts3d_in_other_view"][..., 2], atol=1e-5)
    assert torch.allclose(pred.conf_aux[0], res2["conf"], atol=1e-5)


def test_portrait_is_not_a_transposed_landscape():
    torch.manual_seed(1)
    model = build_model("dust3r_tiny").eval()
    img = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        land = model.predict_mono(img).depth
        port = model.predict_mono(img.transpose(-1, -2)).depth
    assert port.shape == (1, 48, 32)
    assert not torch.allclose(port.transpose(-1, -2), land, atol=1e-3)


def test_predict_views_pairs(tiny):
    imgs = torch.rand(1, 2, 3, 32, 48)
    with torch.no_grad():
        pred = tiny.predict_views(imgs)
        res1, res2 = tiny(imgs[:, 0], imgs[:, 1])
    assert pred.pts3d.shape == (1, 2, 32, 48, 3) and pred.conf.shape == (1, 2, 32, 48)
    assert torch.equal(pred.pts3d[:, 1], res2["pts3d_in_other_view"])
    if isinstance(tiny, Mast3r):
        assert pred.desc.shape == (1, 2, 32, 48, tiny.desc_dim) and pred.desc_conf.shape == (1, 2, 32, 48)
        assert torch.allclose(pred.desc.norm(dim=-1), torch.ones(1, 2, 32, 48), atol=1e-5)
    else:
        assert pred.desc is None
    with pytest.raises(InputError, match="S = 2"):
        tiny.predict_views(torch.rand(1, 3, 3, 32, 48))


@pytest.mark.parametrize("bad", [torch.rand(1, 3, 30, 48), torch.rand(1, 3, 32, 40), torch.rand(3, 32, 48),
                                 torch.rand(1, 1, 32, 48), torch.zeros(1, 3, 32, 48, dtype=torch.uint8)])
def test_wrong_inputs_are_clear_errors(bad):
    model = build_model("dust3r_tiny_linear")
    with pytest.raises(InputError):
        model.predict_mono(bad)
    with pytest.raises(InputError):
        model.encode(bad)


def test_encode_tokens_and_prenorm(tiny):
    img = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        tokens, pre = tiny.encode(img), tiny.encode_prenorm(img)
    assert tokens.shape == (1, 6, tiny.enc_embed_dim)
    assert torch.allclose(tiny.enc_norm(pre), tokens, atol=1e-6)


def test_generic_constructor_with_official_kwargs():
    model = Dust3r(head_type="dpt", output_mode="pts3d", enc_embed_dim=32, enc_depth=1, enc_num_heads=2,
                   dec_embed_dim=16, dec_depth=10, dec_num_heads=2, dpt_layer_dims=(8, 8, 8, 8), dpt_feature_dim=8)
    assert isinstance(model, Reconstructor)
    assert model.config_dict()["dpt_last_dim"] == 4
    with pytest.raises(ValueError, match="head_type"):
        Dust3r(head_type="conv", enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=1,
               dec_num_heads=2)


def test_registry_names_and_fin3r_file_round_trip(tmp_path, tiny):
    for name in ["dust3r_224_linear", "dust3r_512_linear", "dust3r_512_dpt", "mast3r_512_catmlpdpt_metric",
                 "dust3r_tiny", "mast3r_tiny"]:
        assert name in MODEL_CONFIGS
    path = save_model(tiny, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(tiny) and not loaded.training
    img = torch.rand(1, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(loaded.predict_mono(img).depth, tiny.predict_mono(img).depth)
    # a registry name with weights from a file
    same = load_model(tiny.test_name, checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), tiny.state_dict().values()))


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="registry name"):
        load_model("dust3r_huge")
    other = save_model(build_model("dust3r_tiny_linear"), tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match=r"differs from the requested one in \['dec_depth', 'head_type'\]"):
        load_model("dust3r_tiny", checkpoint=other)
    plain = tmp_path / "plain.safetensors"  # no description: the weights must fit the requested model
    from safetensors.torch import save_file
    save_file(build_model("dust3r_tiny_linear").state_dict(), str(plain))
    with pytest.raises(CheckpointError, match="asks for 10 blocks 'dec_blocks"):
        load_model("dust3r_tiny", checkpoint=plain)


def test_bf16_autocast_keeps_heads_in_fp32_and_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = build_model("dust3r_tiny")
    img = torch.rand(1, 3, 32, 48)
    ref = model.predict_mono(img).depth.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model.predict_mono(img)
    assert pred.depth.dtype == torch.float32 and pred.conf.dtype == torch.float32
    assert torch.allclose(pred.depth, ref, rtol=0.05, atol=0.05)
    pred.depth.mean().backward()
    grad = model.enc_blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
