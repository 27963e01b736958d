"""The MoGe teacher against MoGe's real package (``dlr-moge``, installed by scripts/install_moge.sh).

Tiny random MoGe-1 and MoGe-2 models are built with MoGe's own classes (``moge.model.v1/v2
.MoGeModel``) on a tiny DINOv2 backbone built with MoGe's own ``DinoVisionTransformer`` (registered
in MoGe's backbone table under a test name: the table only holds the full-size ViTs, and
``pretrained=False`` builds without any download), saved in MoGe's checkpoint format, labelled
through ``fin3r label``, and compared with ``MoGeModel.infer`` on the same image.
"""

import functools
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.data.label_channels import NORMAL_CODE_ERROR, channel_path, read_label_normals
from fin3r.data.labels import label_paths, log_depth_error_bound, read_label
from fin3r.errors import Fin3rError
from fin3r.teachers import load_teacher

pytestmark = pytest.mark.skipif(importlib.util.find_spec("moge") is None,
                                reason="MoGe's package is not installed (scripts/install_moge.sh)")

TINY_BACKBONE = "fin3r_test_dinov2_tiny14"


@pytest.fixture
def tiny_backbone(monkeypatch):
    """Register a 2-block, 32-wide DINOv2 (MoGe's own class) as a backbone name MoGe resolves."""
    from moge.model.dinov2.hub import backbones
    from moge.model.dinov2.layers import MemEffAttention, NestedTensorBlock
    from moge.model.dinov2.models.vision_transformer import DinoVisionTransformer

    def build(pretrained=False, **kwargs):
        assert not pretrained
        return DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                                     init_values=1.0, block_chunks=0,
                                     block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention), **kwargs)

    monkeypatch.setattr(backbones, TINY_BACKBONE, build, raising=False)
    return TINY_BACKBONE


def moge1_config():
    return {"encoder": TINY_BACKBONE, "intermediate_layers": 2, "dim_proj": 16, "dim_upsample": [16, 8, 8],
            "res_block_norm": "layer_norm", "last_conv_channels": 8, "num_tokens_range": [12, 30],
            "remap_output": "exp"}


def moge2_config(normals=True, metric=True):
    def stack(dim_out):  # a 5-level ConvStack head on the neck's features (16, 16, 8, 8, 8 channels)
        return {"dim_in": [None] * 5, "dim_res_blocks": [16, 16, 8, 8, 8], "dim_out": [None] * 4 + [dim_out],
                "resamplers": ["bilinear"] * 4, "res_block_hidden_norm": "layer_norm"}

    config = {
        "encoder": {"backbone": TINY_BACKBONE, "intermediate_layers": [0, 1], "dim_out": 16},
        "neck": {"dim_in": [18, 2, 2, 2, 2], "dim_res_blocks": [16, 16, 8, 8, 8], "dim_out": [None] * 5,
                 "resamplers": ["bilinear"] * 4, "res_block_hidden_norm": "layer_norm"},
        "points_head": stack(3), "mask_head": stack(1),
        "remap_output": "exp", "num_tokens_range": [12, 30],
    }
    if normals:
        config["normal_head"] = stack(3)
    if metric:
        config["scale_head"] = {"dims": [32, 16, 1]}
    return config


def save_moge(path, version, config, seed=0):
    """A random MoGe model of MoGe's own class, saved as MoGe's ``model.pt``."""
    if version == 2:
        from moge.model.v2 import MoGeModel
    else:
        from moge.model.v1 import MoGeModel
    torch.manual_seed(seed)
    model = MoGeModel(**config).eval()
    # random heads put the whole mask on one side of its threshold: shift the mask logit so about
    # 70% of a calibration image is labelled (the comparison then covers both kinds of pixel)
    mask_conv = model.head.output_block[1][-1] if version == 1 else model.mask_head.output_blocks[-1]
    threshold = model.mask_threshold if version == 1 else 0.0
    with torch.no_grad():
        calib = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(seed))
        raw = model.forward(calib, num_tokens=20)["mask"]
        raw = raw if version == 1 else torch.logit(raw.clamp(1e-6, 1 - 1e-6))
        mask_conv.bias += threshold - torch.quantile(raw.flatten(), 0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": config, "model": model.state_dict()}, path)
    return MoGeModel.from_pretrained(path).eval()  # MoGe's own loader: the reference


def image_file(path, h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1) + rng.integers(0, 40, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1).float()[None] / 255.0


@pytest.mark.parametrize("version", [1, 2])
def test_moge_label_is_moge_infer_up_to_quantisation(tmp_path, tiny_backbone, version):
    config = moge1_config() if version == 1 else moge2_config()
    ckpt = tmp_path / "moge" / "model.pt"
    reference = save_moge(ckpt, version, config)
    x = image_file(tmp_path / "imgs" / "a.png")
    ref = reference.infer(x, resolution_level=9, apply_mask=True, force_projection=True, use_fp16=False)
    assert ref["mask"].float().mean() > 0.3  # the comparison covers real labelled pixels

    out = tmp_path / "labels"
    assert main(["label", "--teacher", f"moge:{ckpt}", "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    depth, mask, meta = read_label(out, "imgs/a")
    assert meta["depth_kind"] == ("scale" if version == 1 else "metric")
    assert meta["teacher"] == f"moge{version}:moge/model.pt" and meta["moge"]["model_version"] == version
    assert meta["moge"]["apply_mask"] and meta["moge"]["force_projection"] and meta["moge"]["resolution_level"] == 9
    ref_mask = ref["mask"][0].numpy()
    ref_depth = ref["depth"][0].numpy()
    np.testing.assert_array_equal(mask, ref_mask)
    # the only difference is the 16-bit log quantisation of the label
    bound = log_depth_error_bound(meta["near"], meta["far"])
    rel = np.abs(depth[mask] / ref_depth[ref_mask] - 1)
    assert rel.max() <= bound, (rel.max(), bound)
    np.testing.assert_allclose(np.array(meta["intrinsics"]), ref["intrinsics"][0].numpy(), rtol=1e-6)
    normals = read_label_normals(label_paths(out, "imgs/a")["mask"], meta)
    if version == 2:
        assert normals is not None and channel_path(label_paths(out, "imgs/a")["mask"], "normal").is_file()
        np.testing.assert_allclose(normals[mask], ref["normal"][0].numpy()[ref_mask], atol=NORMAL_CODE_ERROR + 1e-6)
        assert (normals[~mask] == 0).all()
    else:
        assert normals is None  # an entry without the optional channel reads as before


def test_moge2_metric_scale_and_options(tiny_backbone, tmp_path):
    """MoGe-2 with a scale head is metric; without one (and without normals) it is up to scale;
    spec options reach ``infer``."""
    ckpt = tmp_path / "m" / "model.pt"
    model = save_moge(ckpt, 2, moge2_config(normals=False, metric=False), seed=1)
    t = load_teacher(f"moge:{ckpt}#resolution_level=0,mask=0")
    assert t.depth_kind == "scale" and not t.has_normals
    x = torch.rand(1, 3, 28, 28)
    out = t.predict(x)
    ref = model.infer(x, resolution_level=0, apply_mask=False, force_projection=True, use_fp16=False)
    assert "normals" not in out.extras
    ok = torch.isfinite(ref["depth"]) & (ref["depth"] > 0)
    assert torch.equal(out.mask, ok) and torch.allclose(out.depth[ok], ref["depth"][ok])
    t_tokens = load_teacher(f"moge:{ckpt}#num_tokens=16,fp16=0")
    assert t_tokens.infer_kwargs["num_tokens"] == 16 and not t_tokens.infer_kwargs["use_fp16"]
    ref16 = model.infer(x, num_tokens=16, use_fp16=False)
    assert torch.allclose(t_tokens.predict(x).depth[ref16["mask"]], ref16["depth"][ref16["mask"]])


def test_moge_bad_checkpoints_are_one_line_errors(tiny_backbone, tmp_path):
    config = moge1_config()
    ckpt = tmp_path / "model.pt"
    save_moge(ckpt, 1, config)
    state = torch.load(ckpt, weights_only=True)["model"]
    cases = {
        "missing.pt": None,
        "notdict.pt": [1, 2],
        "nokeys.pt": {"weights": state},
        "extra.pt": {"model_config": config, "model": {**state, "extra.weight": torch.zeros(1)}},
        "lacking.pt": {"model_config": config, "model": dict(list(state.items())[1:])},
        "badconfig.pt": {"model_config": {**config, "encoder": "no_such_backbone"}, "model": state},
    }
    for name, payload in cases.items():
        if payload is not None:
            torch.save(payload, tmp_path / name)
        with pytest.raises(Fin3rError, match=name.replace(".", r"\.")):
            load_teacher(f"moge:{tmp_path / name}")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(Fin3rError, match="garbage"):
        load_teacher(f"moge:{tmp_path / 'garbage.pt'}")
    with pytest.raises(Fin3rError, match="resolution_level"):
        load_teacher(f"moge:{ckpt}#resolution_level=12")
    with pytest.raises(Fin3rError, match="unknown option"):
        load_teacher(f"moge:{ckpt}#tokens=3")
    assert main(["label", "--teacher", f"moge:{tmp_path / 'nokeys.pt'}", "--images", str(tmp_path), "--out",
                 str(tmp_path / "o")]) != 0


def test_sidecar_records_channels(tiny_backbone, tmp_path):
    ckpt = tmp_path / "m" / "model.pt"
    save_moge(ckpt, 2, moge2_config())
    image_file(tmp_path / "imgs" / "b.png", 28, 28)
    assert main(["label", "--teacher", f"moge:{ckpt}", "--images", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "l")]) == 0
    meta = json.loads(label_paths(tmp_path / "l", "imgs/b")["json"].read_text())
    assert meta["normal_file"] == "b.normal.png"
