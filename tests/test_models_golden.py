"""Parity with the official DUSt3R/MASt3R code: golden fixtures produced by running naver's code on
tiny random configs (see tests/fixtures/README.md). Our model is built from the fixture's
constructor string alone (parsed, widths inferred from weight shapes), loads the official
state_dict (with its alias keys and mask_token) and must match in fp32."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fin3r.models.croco.checkpoint import OFFICIAL_CLASSES, model_config, parse_constructor, to_fin3r_keys
from fin3r.models import build_model
from fin3r.models.io import load_state_dict_strict

FIXTURES = Path(__file__).parent / "fixtures"
OUT_TOL = 1e-4
ENC_TOL = 1e-5


def _load(name):
    with safe_open(str(FIXTURES / f"{name}_golden.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state_dict = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    cls_name, kwargs = parse_constructor(meta["args_model"])
    config = model_config(OFFICIAL_CLASSES[cls_name], kwargs, state_dict)
    model = build_model(config).eval()
    load_state_dict_strict(model, to_fin3r_keys(state_dict), name)
    cases = sorted({k.split(".")[0] for k in tensors if not k.startswith("model.")})
    return model, tensors, cases


def _close(ours, ref, tol, what):
    err = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} (ref max {scale:.3g})"


@pytest.mark.parametrize("name", ["dust3r_dpt", "dust3r_linear", "mast3r_catmlpdpt"])
def test_pair_forward_matches_official(name):
    model, t, cases = _load(name)
    assert {"land", "port"} <= set(cases)
    for case in cases:
        img1, img2 = t[f"{case}.img1"], t[f"{case}.img2"]
        with torch.no_grad():
            res1, res2 = model(img1, img2)
            enc = model.encode(img1)
        _close(enc, t[f"{case}.enc1"], ENC_TOL, f"{name}/{case} encoder tokens")
        _close(res1["pts3d"], t[f"{case}.pts3d_1"], OUT_TOL, f"{name}/{case} pts3d view 1")
        _close(res1["conf"], t[f"{case}.conf_1"], OUT_TOL, f"{name}/{case} conf view 1")
        _close(res2["pts3d_in_other_view"], t[f"{case}.pts3d_2"], OUT_TOL, f"{name}/{case} pts3d view 2")
        _close(res2["conf"], t[f"{case}.conf_2"], OUT_TOL, f"{name}/{case} conf view 2")
        if f"{case}.desc_1" in t:
            for key in ("desc_1", "desc_conf_1", "desc_2", "desc_conf_2"):
                out = (res1 if key.endswith("1") else res2)[key[:-2]]
                _close(out, t[f"{case}.{key}"], OUT_TOL, f"{name}/{case} {key}")


@pytest.mark.parametrize("name", ["dust3r_dpt", "dust3r_linear"])
def test_predict_mono_matches_official_pair_of_the_same_image(name):
    model, t, _ = _load(name)
    img = t["mono.img1"]
    assert torch.equal(img, t["mono.img2"])
    with torch.no_grad():
        pred = model.predict_mono(img)
    _close(pred.depth, t["mono.pts3d_1"][..., 2], OUT_TOL, "depth")
    _close(pred.pts3d, t["mono.pts3d_1"], OUT_TOL, "pts3d")
    _close(pred.conf, t["mono.conf_1"], OUT_TOL, "conf")
    _close(pred.depth_aux[0], t["mono.pts3d_2"][..., 2], OUT_TOL, "depth_aux")
    _close(pred.conf_aux[0], t["mono.conf_2"], OUT_TOL, "conf_aux")


def test_golden_check_can_fail():
    """A small perturbation of one encoder input column (1e-2) is caught by the parity check."""
    model, t, _ = _load("dust3r_dpt")
    with torch.no_grad():
        model.enc_blocks[0].attn.qkv.weight[:, 0] += 1e-2
        res1, _ = model(t["land.img1"], t["land.img2"])
    with pytest.raises(AssertionError):
        _close(res1["pts3d"], t["land.pts3d_1"], OUT_TOL, "perturbed")


def test_official_state_dict_round_trips_to_the_fixture_keys():
    model, t, _ = _load("mast3r_catmlpdpt")
    official = {k[len("model."):] for k in t if k.startswith("model.")}
    assert set(model.official_state_dict()) == official
