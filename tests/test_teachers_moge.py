"""The MoGe teacher against MoGe's real package (``dlr-moge``, installed by scripts/install_teachers.sh).

Tiny random MoGe-1 and MoGe-2 models are built with MoGe's own classes (``moge.model.v1/v2
.MoGeModel``) on a tiny DINOv2 built with MoGe's own ``DinoVisionTransformer`` (``fin3r.teachers
.tiny``; ``pretrained=False``: no download), saved in MoGe's checkpoint format, labelled through
``fin3r label``, and compared with ``MoGeModel.infer`` of the same file loaded by MoGe's own
``from_pretrained``, on the same image.
"""

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
from fin3r.teachers.tiny import register_tiny_moge_backbone, save_tiny_moge, tiny_moge_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("moge") is None,
                                reason="MoGe's package is not installed (scripts/install_teachers.sh)")

@pytest.fixture
def tiny_backbone():
    """MoGe's table of backbones lists only the full-size ViTs: add the tiny one (MoGe's own class)."""
    return register_tiny_moge_backbone()


def save_moge(path, version, config, seed=0):
    """A random MoGe model of MoGe's own class saved as MoGe's ``model.pt``, and the reference:
    that file loaded back by MoGe's own ``from_pretrained``."""
    save_tiny_moge(path, version, config, seed)
    from moge.model.v1 import MoGeModel as MoGe1
    from moge.model.v2 import MoGeModel as MoGe2

    return (MoGe2 if version == 2 else MoGe1).from_pretrained(path).eval()


def image_file(path, h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1) + rng.integers(0, 40, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1).float()[None] / 255.0


@pytest.mark.parametrize("version", [1, 2])
def test_moge_label_is_moge_infer_up_to_quantisation(tmp_path, tiny_backbone, version):
    config = tiny_moge_config(1) if version == 1 else tiny_moge_config(2)
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
    model = save_moge(ckpt, 2, tiny_moge_config(2, normals=False, metric=False), seed=1)
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
    config = tiny_moge_config(1)
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
    save_moge(ckpt, 2, tiny_moge_config(2))
    image_file(tmp_path / "imgs" / "b.png", 28, 28)
    assert main(["label", "--teacher", f"moge:{ckpt}", "--images", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "l")]) == 0
    meta = json.loads(label_paths(tmp_path / "l", "imgs/b")["json"].read_text())
    assert meta["normal_file"] == "b.normal.png"


def test_label_batched_torchrun_ranks_and_bf16(tiny_backbone, tmp_path, monkeypatch):
    """Batches of same-size images give the labels of one-by-one labelling; under torchrun each
    rank labels its own shard (no shared state); bf16 stays close to fp32."""
    ckpt = tmp_path / "m" / "model.pt"
    save_tiny_moge(ckpt, 2, tiny_moge_config(2))
    for k, (h, w) in enumerate([(28, 28), (28, 28), (30, 40), (28, 28), (30, 40)]):
        image_file(tmp_path / "imgs" / f"i{k}.png", h, w, seed=k)
    args = ["label", "--teacher", f"moge:{ckpt}", "--images", str(tmp_path / "imgs")]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--out", str(tmp_path / "batched"), "--batch-size", "3"]) == 0
    for k in range(5):
        d1, m1, _ = read_label(tmp_path / "one", f"imgs/i{k}")
        d3, m3, _ = read_label(tmp_path / "batched", f"imgs/i{k}")
        np.testing.assert_array_equal(m1, m3)
        np.testing.assert_allclose(d1, d3, rtol=1e-4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args + ["--out", str(tmp_path / "ranked")]) == 0
    done = sorted(p.name for p in (tmp_path / "ranked" / "imgs").glob("*.json"))
    assert done == ["i1.json", "i3.json"] and (tmp_path / "ranked" / "label_report_1of2.json").is_file()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(args + ["--out", str(tmp_path / "fp16"), "--precision", "fp16"]) == 0  # MoGe's use_fp16
    d1, m1, _ = read_label(tmp_path / "one", "imgs/i0")
    dh, mh, meta = read_label(tmp_path / "fp16", "imgs/i0")
    assert meta["precision"] == "fp16" and meta["moge"]["use_fp16"]
    both = m1 & mh
    assert both.mean() > 0.5 and np.median(np.abs(dh[both] / d1[both] - 1)) < 0.05
    assert main(args + ["--out", str(tmp_path / "bf16"), "--precision", "bf16"]) != 0  # refused, one line
