"""fin3r.diagnose: encoder token-norm statistics of base vs adapted model, JSON + histogram PNGs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.diagnose import encoder_feature_norms, load_images
from fin3r.lora import inject_lora, lora_modules, save_adapter
from fin3r.models import build_model, save_model


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    base = build_model("dust3r_tiny").eval()
    base_path = save_model(base, tmp_path / "base.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / f"{i}.png")
    inject_lora(base, base.encoder_linear_names(["qkv"]), rank=4, alpha=4.0, mode="weight_row")
    with torch.no_grad():
        for m in lora_modules(base).values():
            m.lora_B.normal_(0, 0.2)
    adapter = save_adapter(base, tmp_path / "adapter.safetensors", base_name=str(base_path))
    assert adapter["mode"] == "weight_row"
    return tmp_path, base_path, images


def test_encoder_feature_norms_are_mean_token_norms():
    torch.manual_seed(0)
    model = build_model("dust3r_tiny").eval()
    img = torch.rand(3, 3, 32, 48)
    norms = encoder_feature_norms(model, img, batch_size=2)
    with torch.no_grad():
        post = model.encode(img).norm(dim=-1).mean()
        pre = model.encode_prenorm(img).norm(dim=-1).mean()
    assert norms["feat_norm"] == pytest.approx(float(post), rel=1e-5)
    assert norms["feat_norm_prenorm"] == pytest.approx(float(pre), rel=1e-5)
    assert abs(norms["feat_norm"] - norms["feat_norm_prenorm"]) > 1e-3


def test_load_images_resizes_and_crops(setup):
    _, _, images = setup
    x = load_images(images, 32, 48)
    assert x.shape == (3, 3, 32, 48) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_diagnose_cli_base_vs_adapted(setup, capsys):
    tmp_path, base_path, images = setup
    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", str(base_path), "--adapter", str(tmp_path / "adapter.safetensors"),
               "--images", str(images), "--size", "32x48", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "feature_norms.json").read_text())
    assert set(report) >= {"base", "adapted", "relative_change", "plot_backend"}
    assert report["base"]["post"]["tokens"] == 3 * 2 * 3  # 3 images of 2x3 patches
    assert abs(report["relative_change"]["pre"]) > 1e-4  # the adapter moved the residual stream
    for place in ("post", "pre"):
        png = Image.open(out / f"feature_norms_{place}.png")
        assert png.size[0] > 100 and len(np.unique(np.asarray(png.convert("L")))) > 2  # something was drawn
    assert "relative change" in capsys.readouterr().out


def test_diagnose_without_adapter_and_bad_folder(setup, capsys):
    tmp_path, base_path, images = setup
    assert main(["diagnose", "--model", str(base_path), "--images", str(images), "--size", "32x48",
                 "--out", str(tmp_path / "d2")]) == 0
    report = json.loads((tmp_path / "d2" / "feature_norms.json").read_text())
    assert "adapted" not in report and "relative_change" not in report
    assert main(["diagnose", "--model", str(base_path), "--images", str(tmp_path / "nope")]) == 2
    assert "image folder not found" in capsys.readouterr().err
