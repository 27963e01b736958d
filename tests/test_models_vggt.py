"""VGGT: parity with the official code (golden fixtures), official keys, loading, the interface."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fin3r.errors import CheckpointError, Fin3rError, InputError
from fin3r.geometry import quaternion_to_matrix
from fin3r.models.heads.camera import cameras_to_pose_encoding, pose_encoding_to_cameras
from fin3r.models.layers.dinov2 import DinoV2Encoder
from fin3r.models import load_model
from fin3r.models.vggt.checkpoint import read_vggt_checkpoint
from fin3r.models.vggt.model import VGGT_1B_CONFIG, VGGT_TINY_CONFIG, Vggt

FIXTURES = Path(__file__).parent / "fixtures"
KEYS_TSV = FIXTURES / "vggt_1b.keys.tsv"
CASES = ["s1_56x70", "s3_56x70", "b2s1_56x56", "s2_70x42"]
OUT_TOL, ENC_TOL = 1e-4, 1e-5


def official_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "vggt_tiny_state.safetensors"))


@pytest.fixture(scope="module")
def tiny() -> Vggt:
    model = Vggt(**VGGT_TINY_CONFIG).eval()
    model.load_official(official_state(), "fixture")
    return model


def golden(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"vggt_tiny_{case}.safetensors"))


def test_fixture_config_is_the_registry_tiny_config():
    with safe_open(str(FIXTURES / "vggt_tiny_state.safetensors"), framework="pt") as f:
        assert {"mlp_ratio": 4.0, **json.loads(f.metadata()["config"])} == VGGT_TINY_CONFIG


# --- parity with the official code ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(tiny, case):
    g = golden(case)
    with torch.no_grad():
        out = tiny(g["images"])
    for key in ("depth", "depth_conf", "world_points", "world_points_conf", "pose_enc", "pose_enc_list"):
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


def test_parity_is_sensitive_to_the_dpt_relu_quirk(tiny, monkeypatch):
    """The fixtures pin the residual-adds-ReLU(x) quirk: adding x instead moves the outputs."""
    from fin3r.models.heads import dpt_vggt

    def plain_residual(self, x):
        return self.conv2(torch.relu(self.conv1(torch.relu(x)))) + x

    monkeypatch.setattr(dpt_vggt.ResidualConvUnit, "forward", plain_residual)
    g = golden("s1_56x70")
    with torch.no_grad():
        out = tiny(g["images"])
    assert (out["depth"] - g["depth"]).abs().max().item() > 100 * OUT_TOL


def test_pos_embed_resize_is_antialiased_bicubic_with_explicit_size():
    enc = DinoV2Encoder(img_size=56, patch_size=14, embed_dim=8, depth=0, num_heads=2)
    # native grid, square input: the parameter itself
    assert enc.position_embedding(4, 4, 56, 56) is enc.pos_embed
    pe = enc.position_embedding(3, 5, 42, 70)
    grid = enc.pos_embed[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(3, 5), mode="bicubic", antialias=True)
    assert torch.equal(pe[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 15, 8))
    assert torch.equal(pe[:, 0], enc.pos_embed[:, 0])


# --- the Reconstructor interface ------------------------------------------------------------------
def test_predict_mono_is_the_depth_head_with_unprojected_points(tiny):
    g = golden("b2s1_56x56")
    img = g["images"][:, 0]
    with torch.no_grad():
        pred = tiny.predict_mono(img)
    assert pred.depth.shape == (2, 56, 56) and pred.conf.shape == (2, 56, 56)
    assert (pred.depth - g["depth"][:, 0, ..., 0]).abs().max() < OUT_TOL
    assert (pred.conf - g["depth_conf"][:, 0]).abs().max() < OUT_TOL
    assert pred.pts3d.shape == (2, 56, 56, 3)
    assert torch.allclose(pred.pts3d[..., 2], pred.depth)
    # x = (u - cx) z / fx with the intrinsics decoded from the official pose encoding
    fov_w = g["pose_enc"][:, 0, 8]
    fx = 28.0 / torch.tan(fov_w / 2)
    u = torch.arange(56.0)
    want_x = (u - 28.0)[None, None, :] * pred.depth / fx[:, None, None]
    assert torch.allclose(pred.pts3d[..., 0], want_x, atol=1e-5, rtol=1e-4)
    assert (pred.depth_aux[0] - g["world_points"][:, 0, ..., 2]).abs().max() < OUT_TOL
    assert (pred.conf_aux[0] - g["world_points_conf"][:, 0]).abs().max() < OUT_TOL


def test_predict_views_returns_world_points_and_cameras(tiny):
    g = golden("s3_56x70")
    with torch.no_grad():
        pred = tiny.predict_views(g["images"])
    assert pred.pts3d.shape == (1, 3, 56, 70, 3) and pred.conf.shape == (1, 3, 56, 70)
    assert (pred.pts3d - g["world_points"]).abs().max() < OUT_TOL
    assert (pred.conf - g["world_points_conf"]).abs().max() < OUT_TOL
    assert (pred.depth - g["depth"][..., 0]).abs().max() < OUT_TOL
    assert (pred.depth_conf - g["depth_conf"]).abs().max() < OUT_TOL
    assert pred.cam2world.shape == (1, 3, 4, 4) and pred.intrinsics.shape == (1, 3, 3, 3)
    # round trip back to the encoding (quaternion normalised and sign-fixed, w >= 0)
    enc = g["pose_enc"].clone()
    q = enc[..., 3:7] / enc[..., 3:7].norm(dim=-1, keepdim=True)
    enc[..., 3:7] = torch.where(q[..., 3:] < 0, -q, q)
    back = cameras_to_pose_encoding(pred.cam2world, pred.intrinsics, (56, 70))
    assert torch.allclose(back, enc, atol=1e-4)
    assert torch.allclose(pred.intrinsics[..., 0, 2], torch.tensor(35.0))
    assert torch.allclose(pred.intrinsics[..., 1, 2], torch.tensor(28.0))


def test_pose_encoding_convention():
    """xyzw quaternion, camera-from-world translation, FoV -> focal; a hand-checked example."""
    s = math.sqrt(0.5)
    # 90 degrees about z (x y z w), world->camera translation (1, 2, 3), fov_h 90 deg, fov_w 60 deg
    enc = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, s, s, math.pi / 2, math.pi / 3]])
    cam2world, K = pose_encoding_to_cameras(enc, (40, 60))
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(quaternion_to_matrix(torch.tensor([s, 0.0, 0.0, s])), R, atol=1e-6)
    assert torch.allclose(cam2world[0, :3, :3], R.T, atol=1e-6)
    assert torch.allclose(cam2world[0, :3, 3], -R.T @ torch.tensor([1.0, 2.0, 3.0]), atol=1e-6)
    assert torch.allclose(K[0], torch.tensor([[30.0 / math.tan(math.pi / 6), 0, 30], [0, 20.0, 20], [0, 0, 1]]),
                          atol=1e-5)


def test_image_size_must_be_a_multiple_of_14(tiny):
    with pytest.raises(InputError, match="multiple of the patch size 14"):
        tiny.predict_mono(torch.rand(1, 3, 56, 64))
    with pytest.raises(InputError):
        tiny.predict_views(torch.rand(1, 3, 56, 56))  # (B, 3, H, W) is not a set of views


def test_heads_run_in_fp32_under_autocast(tiny):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(torch.rand(1, 2, 3, 42, 56))
    assert out["depth"].dtype == torch.float32 and out["world_points"].dtype == torch.float32
    assert out["pose_enc"].dtype == torch.float32


def test_encoder_linear_names_and_lora(tiny):
    from fin3r.lora import inject_lora

    names = tiny.encoder_linear_names()
    assert names == [f"aggregator.patch_embed.blocks.{i}.attn.qkv" for i in range(2)]
    assert len(tiny.encoder_linear_names(["qkv", "proj", "fc1", "fc2"])) == 8
    model = Vggt(**VGGT_TINY_CONFIG).eval()
    model.load_official(official_state())
    img = golden("s1_56x70")["images"][:, 0]
    with torch.no_grad():
        before = model.predict_mono(img).depth
    wrapped = inject_lora(model, names, rank=2, mode="weight_row")
    assert wrapped == names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("aggregator.patch_embed.blocks.") for n in trainable)
    with torch.no_grad():
        assert torch.allclose(model.predict_mono(img).depth, before, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Vggt(**VGGT_TINY_CONFIG)
    img = torch.rand(1, 2, 3, 42, 42)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        model(img)["depth"].sum().backward()
        grads.append(model.aggregator.patch_embed.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_track_head_is_not_buildable():
    with pytest.raises(Fin3rError, match="track head is not implemented"):
        Vggt(**VGGT_TINY_CONFIG, track_head=True)


# --- official keys (full size, meta device) -------------------------------------------------------
def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


def test_full_size_keys_and_shapes_match_official():
    official = read_tsv(KEYS_TSV)
    assert len(official) == 1797
    with torch.device("meta"):
        model = Vggt(**VGGT_1B_CONFIG)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: v for k, v in official.items() if not k.startswith("track_head.")}
    assert ours == want
    assert sum(p.numel() for p in model.parameters()) == 1_190_596_120
    assert sum(p.numel() for p in model.encoder_parameters().values()) == 304_372_736
    assert len(model.encoder_linear_names()) == 24


# --- loading official files -----------------------------------------------------------------------
def with_fake_track_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "track_head.tracker.fmap_norm.weight": torch.ones(4),
            "track_head.feature_extractor.norm.bias": torch.zeros(4)}


def test_model_pt_loads_strictly_and_reports_the_dropped_track_head(tmp_path, caplog):
    path = tmp_path / "model.pt"
    torch.save(with_fake_track_head(official_state()), path)
    with caplog.at_level(logging.INFO, logger="fin3r.models.vggt.model"):
        model = load_model("vggt_tiny", checkpoint=path)
    assert sorted(model.load_report.dropped) == ["track_head.feature_extractor.norm.bias",
                                                 "track_head.tracker.fmap_norm.weight"]
    assert "dropped 2 track_head.* tensors" in model.load_report.summary()
    assert "track_head" in caplog.text
    assert not model.training
    g = golden("s1_56x70")
    with torch.no_grad():
        assert (model(g["images"])["depth"] - g["depth"]).abs().max() < OUT_TOL


def test_hf_folder_loads(tmp_path):
    folder = tmp_path / "VGGT-tiny"
    folder.mkdir()
    save_file(with_fake_track_head(official_state()), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"img_size": 56, "patch_size": 14, "embed_dim": 24}))
    model = load_model("vggt_tiny", checkpoint=folder)  # config.json: the official kwargs only
    assert model.config_dict() == {"family": "vggt", **VGGT_TINY_CONFIG}
    assert len(model.load_report.dropped) == 2
    hf_config, sd = read_vggt_checkpoint(folder)
    assert hf_config["embed_dim"] == 24 and "aggregator.camera_token" in sd


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(official_state(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model("vggt_tiny", checkpoint=path)
    st = tmp_path / "model.safetensors"
    save_file(official_state(), str(st))
    st.write_bytes(st.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model("vggt_tiny", checkpoint=st)


class NotATensor:
    """A class ``weights_only`` loading must refuse."""


def test_foreign_pickle_class_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"aggregator.camera_token": torch.zeros(1), "evil": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model("vggt_tiny", checkpoint=path)


def test_wrong_keys_and_shapes_name_the_keys(tmp_path):
    state = official_state()
    state["aggregator.camera_tokens"] = state.pop("aggregator.camera_token")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. \['aggregator\.camera_token'\]\).*"
                                              r"1 unexpected \(e\.g\. \['aggregator\.camera_tokens'\]\)"):
        load_model("vggt_tiny", checkpoint=path)
    state = official_state()
    state["depth_head.norm.weight"] = torch.ones(7)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"depth_head\.norm\.weight: file \(7,\), model \(48,\)"):
        load_model("vggt_tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model("vggt_tiny", checkpoint=tmp_path / "missing.pt")


# --- registry -------------------------------------------------------------------------------------
def test_registry_configs_and_round_trips(tmp_path):
    from fin3r.models import MODEL_CONFIGS, build_model, save_model

    assert MODEL_CONFIGS["vggt_tiny"] == {"family": "vggt", **VGGT_TINY_CONFIG}
    assert MODEL_CONFIGS["vggt_1b"] == {"family": "vggt", **VGGT_1B_CONFIG}
    assert isinstance(build_model("vggt_tiny"), Vggt)
    official = tmp_path / "model.pt"
    torch.save(with_fake_track_head(official_state()), official)
    model = load_model("vggt_tiny", checkpoint=official)
    assert len(model.load_report.dropped) == 2 and not model.training
    g = golden("s2_70x42")
    with torch.no_grad():
        want = model(g["images"])["world_points"]
    assert (want - g["world_points"]).abs().max() < OUT_TOL
    saved = save_model(model, tmp_path / "vggt_tiny.safetensors")
    again = load_model(saved)
    assert again.config_dict() == model.config_dict()
    with torch.no_grad():
        assert torch.equal(again(g["images"])["world_points"], want)


def test_heads_only_need_their_layers():
    """The aggregator keeps only the layers the heads read (the DPT layers and the last one)."""
    model = Vggt(**{**VGGT_TINY_CONFIG, "dpt_layers": [1, 1, 2, 2]}).eval()
    with torch.no_grad():
        tokens = model.aggregator(model.normalize(torch.rand(1, 2, 3, 42, 56)), keep={1, 2, 3})
        out = model(torch.rand(1, 2, 3, 42, 56))
    assert tokens[0] is None and tokens[3].shape == (1, 2, 5 + 12, 48)
    assert out["depth"].shape == (1, 2, 42, 56, 1) and out["world_points"].shape == (1, 2, 42, 56, 3)


def test_load_model_recognises_an_official_hf_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(with_fake_track_head(official_state()), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**VGGT_TINY_CONFIG, "enable_track": True}))
    model = load_model(folder)
    assert isinstance(model, Vggt) and model.config_dict() == {"family": "vggt", **VGGT_TINY_CONFIG}
    assert len(model.load_report.dropped) == 2


def test_dpt_frame_chunks_do_not_change_the_result():
    model = Vggt(**VGGT_TINY_CONFIG).eval()
    model.load_official(official_state())
    model.depth_head.frames_chunk = model.point_head.frames_chunk = 2
    g = golden("s3_56x70")
    with torch.no_grad():
        out = model(g["images"])
    assert (out["depth"] - g["depth"]).abs().max() < OUT_TOL
    assert (out["world_points"] - g["world_points"]).abs().max() < OUT_TOL
