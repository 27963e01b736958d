"""Teachers: the oracle (ground truth + degradations), hf:<folder> (tiny random models), a missing MoGe
(MoGe through its real package: tests/test_teachers_moge.py)."""

import importlib.util
import math
import sys

import pytest
import torch

from fin3r.errors import Fin3rError, InputError
from fin3r.teachers import TeacherOutput, load_teacher
from fin3r.teachers.tiny import save_tiny_depth_anything, save_tiny_depth_pro

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


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


def test_moge_missing_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "moge.model.v1", None)  # import fails as if not installed
    with pytest.raises(Fin3rError, match=r"dlr-moge==2\.0\.0 dlr-utils3d==1\.3"):
        load_teacher(f"moge:{tmp_path / 'model.pt'}")


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (optional extra fin3r[hf])")
def test_hf_relative_depth_anything_is_affine_disparity(tmp_path):
    model = save_tiny_depth_anything(tmp_path / "da")
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
    save_tiny_depth_anything(tmp_path / "metric", kind="metric")
    t = load_teacher(f"hf:{tmp_path / 'metric'}")
    assert t.depth_kind == "metric"
    out = t.predict(torch.rand(1, 3, 28, 28))
    assert (out.depth[out.mask] <= 20 + 1e-4).all()  # sigmoid * max_depth
    with pytest.raises(Fin3rError):
        load_teacher(f"hf:{tmp_path / 'nothing'}")
    assert math.isfinite(float(out.depth.sum()))


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (optional extra fin3r[hf])")
def test_depth_pro_is_transformers_post_processing(tmp_path):
    """``depthpro:<folder>`` = the model on the processor's square input, then transformers'
    ``DepthProImageProcessor.post_process_depth_estimation`` at the input size (that processor
    imports torchvision, so its three steps are written out here: ``pred * W / f`` with
    ``f = W / 2 / tan(fov / 2)``, bilinear resize, ``1 / clamp(., 1e-4, 1e4)``); metric with the
    FoV head."""
    model = save_tiny_depth_pro(tmp_path / "dp")
    t = load_teacher(f"depthpro:{tmp_path / 'dp'}")
    assert t.depth_kind == "metric" and t.name == "depthpro:dp"
    img = torch.rand(2, 3, 30, 40)
    out = t.predict(img)
    x = torch.nn.functional.interpolate((img - 0.5) / 0.5, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        raw = model(pixel_values=x)
    ref = []
    for depth, fov in zip(raw.predicted_depth, raw.field_of_view):
        focal = 0.5 * 40 / torch.tan(0.5 * torch.deg2rad(fov))
        depth = torch.nn.functional.interpolate((depth * 40 / focal)[None, None], size=(30, 40), mode="bilinear")
        ref.append(1.0 / torch.clamp(depth[0, 0], min=1e-4, max=1e4))
    ref = torch.stack(ref)
    # rtol: the processor normalises before resizing, the teacher after (equal up to float rounding,
    # which the random network and the inverse amplify)
    assert torch.allclose(out.depth, ref, rtol=1e-3) and out.mask.all()
    save_tiny_depth_pro(tmp_path / "nofov", fov=False)
    assert load_teacher(f"depthpro:{tmp_path / 'nofov'}").depth_kind == "scale"  # focal unknown
    save_tiny_depth_anything(tmp_path / "da")
    with pytest.raises(Fin3rError, match="not 'depth_pro'"):
        load_teacher(f"depthpro:{tmp_path / 'da'}")
    with pytest.raises(InputError, match="unknown option"):
        load_teacher(f"depthpro:{tmp_path / 'dp'}#sizes=3")


ENSEMBLE = "ensemble:oracle:noise=0.08,seed=1,oracle:noise=0.04,blur=1.5,seed=2,oracle:noise=0.04,pool=4,seed=3"


def _log_error(label, mask, gt, valid):
    ok = mask & valid
    r = torch.where(ok, torch.log(gt.clamp_min(1e-9)) - torch.log(label.clamp_min(1e-9)), torch.tensor(float("nan")))
    return (r - torch.nanmedian(r.flatten(1), dim=1).values.view(-1, 1, 1)).abs()


def test_ensemble_beats_each_member_and_its_confidence_ranks_errors():
    from fin3r.teachers.ensemble import split_member_specs

    assert split_member_specs(ENSEMBLE.partition(":")[2]) == [
        "oracle:noise=0.08,seed=1", "oracle:noise=0.04,blur=1.5,seed=2", "oracle:noise=0.04,pool=4,seed=3"]
    batch = _world_batch(4, 48, 64)
    gt, valid = batch["depth"], batch["valid"]
    t = load_teacher(ENSEMBLE)
    assert t.depth_kind == "scale" and t.needs_ground_truth and t.metadata()["is_oracle"]
    out = t.predict(batch["img"], depth=gt, valid=valid)
    both = out.mask & out.extras["members_mask"].all(0) & valid
    ens = _log_error(out.depth, out.mask, gt, valid)[both]
    for label, mask in zip(out.extras["members_aligned"], out.extras["members_mask"]):
        assert ens.mean() < _log_error(label, mask, gt, valid)[both].mean()
    conf = out.extras["confidence"][both]
    assert ((conf > 0) & (conf <= 1)).all()
    low = conf < conf.median()
    assert ens[low].mean() > 1.5 * ens[~low].mean()  # disagreement flags the larger errors
    # members are aligned to the first: the aligned labels share its scale
    first = out.extras["members_aligned"][0][both]
    for label in out.extras["members_aligned"][1:]:
        assert abs(float(torch.median(torch.log(label[both] / first)))) < 0.01


def test_ensemble_alignment_rules():
    from fin3r.teachers.ensemble import align_to_reference, alignment_between

    assert alignment_between("scale", "metric") == "scale"
    assert alignment_between("metric", "affine") == "affine"
    assert alignment_between("affine_disparity", "scale") == "affine_disparity"
    with pytest.raises(InputError, match="cannot be aligned"):
        alignment_between("scale", "affine_disparity")
    depth = 1.0 + torch.rand(1, 8, 8) * 4
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    disparity = 3.0 / depth + 0.2  # the same scene as an affine disparity
    aligned, m = align_to_reference(depth * 7, mask, "scale", disparity, mask, "affine_disparity")
    assert torch.allclose(aligned, disparity, atol=1e-5) and m.all()
    aligned, _ = align_to_reference(depth * 0.3, mask, "metric", depth, mask, "scale")
    assert torch.allclose(aligned, depth, rtol=1e-5)


def test_ensemble_label_cache_and_loss_weight(tmp_path):
    """``fin3r label --teacher ensemble:...`` stores the confidence; LabelledImages reads it (1 for
    entries without one); the distillation loss weights pixels by it."""
    from fin3r.cli import main
    from fin3r.data.labels import LabelledImages, read_label
    from fin3r.data.world import export_world_images
    from fin3r.losses import distillation_loss

    export_world_images(tmp_path / "imgs", 2, 32, 48, seed=0, split="test")
    assert main(["label", "--teacher", ENSEMBLE, "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "l")]) == 0
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 0
    ds = LabelledImages(tmp_path / "imgs", tmp_path / "l", 32, 48)
    plain = LabelledImages(tmp_path / "imgs", tmp_path / "o", 32, 48)
    s, p = ds[0], plain[0]
    _, mask, meta = read_label(tmp_path / "l", s["key"])
    assert meta["conf_file"].endswith(".conf.png") and meta["teacher"].startswith("ensemble(oracle")
    assert s["teacher_conf"].shape == (32, 48) and (s["teacher_conf"][s["valid"]] < 1).any()
    assert torch.equal(p["teacher_conf"], torch.ones(32, 48))
    # a pixel-weighted loss: zero weight on a corrupted region removes its error
    gt = s["depth"][None].clone()
    valid = s["valid"][None]
    student = gt.clone()
    student[:, :, :24] *= 3.0
    conf = torch.ones_like(gt)
    w = torch.ones_like(gt)
    w[:, :, :24] = 0
    full, _ = distillation_loss(student, conf, gt, valid, "scale", far_quantile=None, align="scale")
    weighted, _ = distillation_loss(student, conf, gt, valid, "scale", far_quantile=None, teacher_weight=w)
    ref, _ = distillation_loss(gt, conf, gt, valid, "scale", far_quantile=None)
    assert float(full) > float(ref) + 0.05
    assert torch.allclose(weighted, ref, atol=1e-5)  # the zero-weight region neither counts nor bends the fit


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (optional extra fin3r[hf])")
def test_hf_teacher_bf16_autocast_close_to_fp32(tmp_path):
    save_tiny_depth_anything(tmp_path / "da")
    t = load_teacher(f"hf:{tmp_path / 'da'}")
    img = torch.rand(2, 3, 28, 28)
    ref = t.predict(img)
    with pytest.raises(InputError):
        t.set_precision("fp8")
    low = t.set_precision("bf16").predict(img)
    assert low.depth.dtype == torch.float32 and t.metadata()["precision"] == "bf16"
    m = ref.mask & low.mask
    assert not torch.equal(low.depth, ref.depth)  # bf16 did run
    assert torch.median((low.depth[m] - ref.depth[m]).abs() / ref.depth[m].abs().clamp_min(1e-3)) < 0.05


def test_ensemble_median_of_an_even_count_is_the_middle_mean():
    from fin3r.teachers.ensemble import median_and_confidence

    aligned = torch.tensor([1.0, 2.0, 4.0, 10.0]).view(4, 1, 1, 1).expand(4, 1, 1, 2).clone()
    masks = torch.ones(4, 1, 1, 2, dtype=torch.bool)
    masks[3, 0, 0, 1] = False  # second pixel: members 1, 2, 4 only
    label, mask, conf = median_and_confidence(aligned, masks, "scale", tau=0.05, min_members=2)
    assert torch.allclose(label[0, 0], torch.tensor([3.0, 2.0])) and mask.all()
    assert conf[0, 0, 0] < conf[0, 0, 1] < 1  # the wider spread is the less confident
