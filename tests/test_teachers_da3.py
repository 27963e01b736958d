"""The Depth Anything 3 teacher against DA3's real package (``depth-anything-3``, installed by
scripts/install_teachers.sh): tiny random networks built with DA3's own classes and preset
machinery, saved the way DA3's API saves them, loaded by ``da3:<folder>``."""

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fin3r.cli import main
from fin3r.data.labels import read_label
from fin3r.errors import Fin3rError
from fin3r.teachers import load_teacher
from fin3r.teachers.da3 import da3_input_size

pytestmark = pytest.mark.skipif(importlib.util.find_spec("depth_anything_3") is None,
                                reason="Depth Anything 3's package is not installed (scripts/install_teachers.sh)")


def _reference(net, img, focal=None):
    """DA3's network on DA3's input size, metric scaling and sky mask by DA3's own functions."""
    from depth_anything_3.utils.alignment import apply_metric_scaling, compute_sky_mask

    B, _, H, W = img.shape
    h, w = da3_input_size(H, W, 504)
    x = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)  # enlarging here
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net(x[:, None])
    depth = out["depth"]
    if focal is not None:
        K = torch.zeros(B, 1, 3, 3)
        K[:, :, 0, 0] = K[:, :, 1, 1] = focal * w / W
        depth = apply_metric_scaling(depth, K)
    depth = F.interpolate(depth, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    sky = F.interpolate(out["sky"], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return depth, compute_sky_mask(sky) & (depth > 0)


def test_input_size_is_da3s_upper_bound_resize():
    assert da3_input_size(480, 640) == (378, 504)  # 378 = 27 * 14; 504 = 36 * 14
    assert da3_input_size(30, 40) == (378, 504)
    assert da3_input_size(1000, 1000, 518) == (518, 518)


@pytest.mark.parametrize("variant", ["mono", "metric"])
def test_da3_teacher_is_the_network(tmp_path, variant):
    from fin3r.teachers.tiny import save_tiny_da3

    net = save_tiny_da3(tmp_path / "da3", variant)
    assert json.loads((tmp_path / "da3" / "config.json").read_text()) == {"model_name": f"da3{variant}-fin3rtiny"}
    img = torch.rand(2, 3, 30, 40)
    t = load_teacher(f"da3:{tmp_path / 'da3'}")
    assert t.depth_kind == ("affine" if variant == "mono" else "scale")  # metric needs the focal
    out = t.predict(img)
    ref, ref_mask = _reference(net, img)
    assert 0.2 < float(ref_mask.float().mean()) < 1  # sky pixels exist and are not labelled
    # rtol: two runs of DA3's network on the same input already differ by up to ~5e-5 here
    # (a sky value within that round-off of DA3's 0.3 threshold may flip: allow a handful of pixels)
    both = out.mask & ref_mask
    assert (out.mask != ref_mask).sum() <= 3 and torch.allclose(out.depth[both], ref[both], rtol=2e-4)
    if variant == "metric":
        t = load_teacher(f"da3:{tmp_path / 'da3'}#focal=35")
        assert t.depth_kind == "metric"
        ref, ref_mask = _reference(net, img, focal=35.0)
        out = t.predict(img)
        both = out.mask & ref_mask
        assert torch.allclose(out.depth[both], ref[both], rtol=2e-4)


def test_da3_label_and_bad_folders(tmp_path, capsys):
    from PIL import Image

    from fin3r.teachers.tiny import save_tiny_da3

    save_tiny_da3(tmp_path / "da3", "mono")
    (tmp_path / "imgs").mkdir()
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert main(["label", "--teacher", f"da3:{tmp_path / 'da3'}", "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "l")]) == 0
    _, mask, meta = read_label(tmp_path / "l", "imgs/a")
    assert meta["depth_kind"] == "affine" and meta["da3"]["model_name"] == "da3mono-fin3rtiny" and mask.any()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_name": "da3nested-giant-large"}')
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(Fin3rError, match="nested"):
        load_teacher(f"da3:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "config.json").write_text('{"model_name": "da3-unheard-of"}')
    with pytest.raises(Fin3rError, match="unknown preset"):
        load_teacher(f"da3:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "config.json").write_text('{"model_name": "da3mono-fin3rtiny"}')
    with pytest.raises(Fin3rError, match="safetensors"):
        load_teacher(f"da3:{tmp_path / 'bad'}")
    with pytest.raises(Fin3rError, match="unknown option"):
        load_teacher(f"da3:{tmp_path / 'da3'}#focus=3")
    assert main(["label", "--teacher", f"da3:{tmp_path / 'nothing'}", "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "l2")]) != 0


@pytest.mark.skipif(importlib.util.find_spec("moge") is None, reason="MoGe's package is not installed")
def test_ensemble_of_moge_and_da3(tmp_path):
    """``ensemble:moge:...,da3:...``: DA3's affine depth is aligned (scale + shift) to MoGe-2's metric
    depth; the other order works too (affine reference); a relative-disparity member after a
    depth reference is refused."""
    from fin3r.errors import InputError
    from fin3r.teachers.tiny import save_tiny_da3, save_tiny_depth_anything, save_tiny_moge

    save_tiny_moge(tmp_path / "moge" / "model.pt", 2)
    save_tiny_da3(tmp_path / "da3", "mono")
    img = torch.rand(1, 3, 30, 40)
    t = load_teacher(f"ensemble:moge:{tmp_path / 'moge' / 'model.pt'},da3:{tmp_path / 'da3'}")
    assert t.depth_kind == "metric" and [m.name.split(":")[0] for m in t.members] == ["moge2", "da3"]
    out = t.predict(img)
    assert out.mask.any() and (out.depth[out.mask] > 0).all() and "normals" in out.extras
    conf = out.extras["confidence"]
    assert ((conf[out.mask] > 0) & (conf[out.mask] <= 1)).all() and (conf[~out.mask] == 0).all()
    assert load_teacher(f"ensemble:da3:{tmp_path / 'da3'},moge:{tmp_path / 'moge' / 'model.pt'}").depth_kind == "affine"
    save_tiny_depth_anything(tmp_path / "da2")
    with pytest.raises(InputError, match="cannot be aligned"):
        load_teacher(f"ensemble:moge:{tmp_path / 'moge' / 'model.pt'},hf:{tmp_path / 'da2'}")
