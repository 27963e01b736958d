"""Teachers: the oracle (ground truth + degradations), hf:<folder> (tiny random models), moge."""

import importlib.util
import math
import sys

import pytest
import torch

from fin3r.errors import Fin3rError, InputError
from fin3r.teachers import TeacherOutput, load_teacher

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_MOGE = importlib.util.find_spec("moge") is not None


def _world_batch(n=2, h=24, w=32):
    from fin3r.data.world import WorldMonoDataset

    ds = WorldMonoDataset(n, h, w, seed=3)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def test_oracle_is_exact_up_to_scale_and_labelled():
    batch = _world_batch()
    t = load_teacher("oracle")
    assert t.name == "oracle" and t.metadata()["is_oracle"] and t.depth_kind == "scale"
    out = t.predict(batch["img"], depth=batch["depth"], valid=batch["valid"])
    assert isinstance(out, TeacherOutput) and out.depth_kind == "scale"
    assert torch.equal(out.mask, batch["valid"])
    for b in range(2):
        ratio = out.depth[b][out.mask[b]] / batch["depth"][b][out.mask[b]]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
        assert 0.5 <= ratio[0] <= 2.0
    # the same image gets the same scale in any batch (label caches are reproducible)
    again = t.predict(batch["img"][1:], depth=batch["depth"][1:], valid=batch["valid"][1:])
    assert torch.equal(again.depth[0], out.depth[1])


def test_oracle_from_keys_and_needs_ground_truth():
    batch = _world_batch(1)
    t = load_teacher("oracle")
    out = t.predict(batch["img"], keys=batch["key"])
    ref = t.predict(batch["img"], depth=batch["depth"], valid=batch["valid"], keys=batch["key"])
    assert torch.allclose(out.depth, ref.depth, rtol=1e-4, atol=1e-4)  # same key: same scale
    assert torch.equal(out.mask, batch["valid"])
    with pytest.raises(InputError, match="ground truth"):
        t.predict(batch["img"])


def test_oracle_degradations():
    batch = _world_batch(1, 48, 64)
    gt, valid = batch["depth"], batch["valid"]
    t = load_teacher("oracle:pool=4,blur=1.0,noise=0.05,scale=1-1,seed=2")
    assert t.name.startswith("oracle(") and "pool=4" in t.name
    out = t.predict(batch["img"], depth=gt, valid=valid)
    m = out.mask & valid
    rel = (out.depth[m] - gt[m]).abs() / gt[m]
    assert 0.01 < rel.mean() < 0.3  # degraded, but still the same scene
    sharp = load_teacher("oracle:scale=1-1").predict(batch["img"], depth=gt, valid=valid)
    assert torch.allclose(sharp.depth, gt)
    with pytest.raises(InputError):
        load_teacher("oracle:colour=3")


def test_unknown_specs():
    with pytest.raises(InputError):
        load_teacher("midas:foo")
    with pytest.raises(InputError):
        load_teacher("hf:")


def test_moge_missing_names_the_extra(tmp_path):
    if HAS_MOGE:
        pytest.skip("moge is installed")
    with pytest.raises(Fin3rError, match=r"fin3r\[moge\]"):
        load_teacher(f"moge:{tmp_path / 'model.pt'}")


def _save_tiny_depth_anything(folder, kind="relative"):
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=28, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 reassemble_factors=[2, 1], fusion_hidden_size=8, head_hidden_size=4, patch_size=14,
                                 depth_estimation_type=kind, max_depth=20)
    model = AutoModelForDepthEstimation.from_config(config)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(folder)
    return model


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (optional extra fin3r[hf])")
def test_hf_relative_depth_anything_is_affine_disparity(tmp_path):
    model = _save_tiny_depth_anything(tmp_path / "da")
    t = load_teacher(f"hf:{tmp_path / 'da'}")
    assert t.depth_kind == "affine_disparity" and t.name == "hf:da"
    img = torch.rand(2, 3, 30, 40)
    out = t.predict(img)
    assert out.depth.shape == (2, 30, 40) and out.mask.dtype == torch.bool
    assert (out.depth[~out.mask] == 0).all()
    # equals running the model by hand: resize to the processor's size (28 x 42 here:
    # the height scale 28/30 changes less than 28/40 so both sides use it, rounded to 14),
    # ImageNet-normalise, predict, resize back
    x = torch.nn.functional.interpolate(img, size=(28, 42), mode="bicubic", align_corners=False,
                                        antialias=True).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.eval()(pixel_values=x).predicted_depth
    ref = torch.nn.functional.interpolate(ref[:, None], size=(30, 40), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(out.depth, torch.where(ref > 0, ref, torch.zeros_like(ref)), atol=1e-5)
    forced = load_teacher(f"hf:{tmp_path / 'da'}#kind=scale,size=14x14")
    assert forced.depth_kind == "scale" and forced.predict(img[:1]).depth.shape == (1, 30, 40)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (optional extra fin3r[hf])")
def test_hf_metric_and_bad_folder(tmp_path):
    _save_tiny_depth_anything(tmp_path / "metric", kind="metric")
    t = load_teacher(f"hf:{tmp_path / 'metric'}")
    assert t.depth_kind == "metric"
    out = t.predict(torch.rand(1, 3, 28, 28))
    assert (out.depth[out.mask] <= 20 + 1e-4).all()  # sigmoid * max_depth
    with pytest.raises(Fin3rError):
        load_teacher(f"hf:{tmp_path / 'nothing'}")
    assert math.isfinite(float(out.depth.sum()))


_FAKE_MOGE = '''
import torch
from torch import nn


class MoGeModel(nn.Module):
    """A stand-in with MoGe's loading and ``infer`` API (not MoGe): depth = 2 + row index,
    the top-left pixel masked (inf), normalised intrinsics."""

    VERSION = {version}

    def __init__(self, **config):
        super().__init__()
        self.config = config
        self.w = nn.Parameter(torch.zeros(3))

    def infer(self, image, **kwargs):
        self.last_kwargs = kwargs
        B, _, H, W = image.shape
        depth = 2.0 + torch.arange(H, dtype=torch.float32)[None, :, None].expand(B, H, W).clone() + self.w.sum()
        mask = torch.ones(B, H, W, dtype=torch.bool)
        mask[:, 0, 0] = False
        depth[~mask] = float("inf")
        K = torch.tensor([[0.8, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]]).expand(B, 3, 3)
        return {{"depth": depth, "mask": mask, "intrinsics": K, "points": torch.zeros(B, H, W, 3)}}
'''


@pytest.mark.parametrize("version", [1, 2])
def test_moge_teacher_through_the_package_api(tmp_path, monkeypatch, version):
    """Our loading (version from the config, weights_only checkpoint, strict key check) and output
    handling (inf -> mask False, intrinsics extras), against a stand-in ``moge`` package."""
    if HAS_MOGE:
        pytest.skip("the real moge is installed")
    for name in [m for m in sys.modules if m == "moge" or m.startswith("moge.")]:
        monkeypatch.delitem(sys.modules, name)
    pkg = tmp_path / "pkgs" / "moge" / "model"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for v in (1, 2):
        (pkg / f"v{v}.py").write_text(_FAKE_MOGE.format(version=v))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    config = {"encoder": "dinov2_vits14"} if version == 1 else {"encoder": {}, "neck": {}, "scale_head": {"dim": 1}}
    ckpt = tmp_path / "ckpt" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"model_config": config, "model": {"w": torch.zeros(3)}}, ckpt)
    t = load_teacher(f"moge:{ckpt}")
    assert t.depth_kind == ("scale" if version == 1 else "metric") and t.name == f"moge{version}:ckpt/model.pt"
    out = t.predict(torch.rand(2, 3, 6, 8))
    assert not out.mask[:, 0, 0].any() and out.mask.sum() == 2 * 47 and out.depth[0, 0, 0] == 0
    assert torch.equal(out.depth[1, 3, 5], torch.tensor(5.0))
    assert out.extras["intrinsics"].shape == (2, 3, 3)
    assert t.model.last_kwargs["apply_mask"] and t.model.last_kwargs["force_projection"]
    torch.save({"model_config": config, "model": {"w": torch.zeros(3), "extra.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(Fin3rError, match="extra.weight"):
        load_teacher(f"moge:{ckpt}")
    with pytest.raises(Fin3rError, match="no checkpoint"):
        load_teacher(f"moge:{tmp_path / 'missing.pt'}")
    for name in [m for m in sys.modules if m == "moge" or m.startswith("moge.")]:
        del sys.modules[name]  # the stand-in must not outlive this test
