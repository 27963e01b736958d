"""The before/after viewer: the page `fin3r view` and `fin3r infer --view` write, its data, and a
real headless browser (Debian's chromium; skipped, with the reason, where none is installed) that
renders it with WebGL: the canvas is not blank and differs between the base and the adapted model."""

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.models import build_model, load_model, save_model
from fin3r.outputs.viewer import depth_pictures

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny DUSt3R file, a random weight_row adapter for it, and two overlapping images."""
    from fin3r.lora import inject_lora, save_adapter

    root = tmp_path_factory.mktemp("view")
    torch.manual_seed(0)
    model_file = save_model(build_model("dust3r_tiny").eval(), root / "tiny.safetensors")
    model = load_model(model_file)
    inject_lora(model, model.encoder_linear_names(), rank=2, mode="weight_row")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.3)
    save_adapter(model, root / "run" / "adapter.safetensors", base_name=str(model_file))
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    (root / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(scene[:, 8 * i: 8 * i + 64]).save(root / "imgs" / f"v{i}.png")
    return root


def page_data(page) -> dict:
    text = page.read_text()
    m = re.search(r'<script type="application/json" id="fin3r-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


def test_view_command_writes_a_self_contained_page(run, tmp_path):
    page = tmp_path / "view.html"
    assert main(["view", str(run / "run"), "--images", str(run / "imgs"), "--views", "--size", "64",
                 "--out", str(page), "--no-open"]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    data = page_data(page)
    assert data["labels"] == ["base", "Fin3R"] and len(data["scenes"]) == 1
    scene = data["scenes"][0]
    assert [v["name"] for v in scene["views"]] == ["v0.png", "v1.png"]
    base, tuned = scene["models"]["base"], scene["models"]["Fin3R"]
    pos_b = np.frombuffer(base64.b64decode(base["pos"]), "<f4").reshape(-1, 3)
    pos_t = np.frombuffer(base64.b64decode(tuned["pos"]), "<f4").reshape(-1, 3)
    assert len(pos_b) == base["n"] == 2 * 64 * 48 and np.isfinite(pos_b).all()
    assert not np.allclose(pos_b, pos_t, atol=1e-4)  # the adapter changes the points
    assert len(base["frusta"]) == 2  # a DUSt3R pair: both cameras (the pair viewer of fin3r.align)
    # mono: one scene per image; `fin3r view RUN` re-opens a folder's page; infer --view writes one too
    assert main(["view", str(run / "run" / "adapter.safetensors"), "--images", str(run / "imgs"), "--size", "64",
                 "--out", str(run / "run" / "view.html"), "--no-open"]) == 0
    assert len(page_data(run / "run" / "view.html")["scenes"]) == 2
    assert main(["view", str(run / "run"), "--no-open"]) == 0
    out = tmp_path / "infer"
    assert main(["infer", str(run / "imgs"), "--model", str(run / "tiny.safetensors"), "--adapter",
                 str(run / "run" / "adapter.safetensors"), "--view", "--size", "64", "--out", str(out),
                 "--no-progress"]) == 0
    assert len(page_data(out / "view.html")["scenes"]) == 2 and (out / "v0_depth.png").is_file()
    assert main(["infer", str(run / "imgs"), "--model", str(run / "tiny.safetensors"), "--view", "--out",
                 str(out)]) == 2  # --view without --adapter: a one-line error


def test_depth_pictures_share_one_range():
    d = np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8)
    same = depth_pictures([d, d.copy()])
    assert same[0] == same[1]
    a, b = depth_pictures([d, 2 * d])  # twice as far: redder/bluer on the shared range, not the same picture
    assert a != b and depth_pictures([d, None])[1] is None


def find_browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def test_browser_renders_the_two_models_differently(run, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium; CI installs it)")
    page = tmp_path / "view.html"
    assert main(["view", str(run / "run"), "--images", str(run / "imgs"), "--views", "--size", "64",
                 "--out", str(page), "--no-open"]) == 0
    cmd = [browser, "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
           "--use-angle=swiftshader", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,600",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri() + "#selftest"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    m = re.search(r'<pre id="fin3r-selftest"[^>]*>(.*?)</pre>', dom, re.S)
    assert m and m.group(1), f"the page wrote no self-test result; browser output: {dom[:500]}"
    result = json.loads(html.unescape(m.group(1)))
    assert result["webgl"] and result["labels"] == ["base", "Fin3R"]
    shots = []
    for url in result["shots"]:
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
        background = rgb[0, 0]
        drawn = (np.abs(rgb - background).sum(-1) > 30).mean()
        assert drawn > 0.002, f"canvas nearly blank ({drawn:.2%} of pixels drawn)"
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # image colours, not one flat fill
        shots.append(rgb)
    assert shots[0].shape == shots[1].shape
    differ = (np.abs(shots[0] - shots[1]).sum(-1) > 30).mean()
    assert differ > 0.002, f"the two models render alike ({differ:.2%} of pixels differ)"
