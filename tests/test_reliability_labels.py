"""Labelling and label reading under hostile input: keys and paths, pixel formats, bad entries of
every shape skipped-counted-reported, one unit per label entry, abandoned temp files swept.
(docs/reliability.md lists which promise each test holds.)"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.data.labels import BadLabel, LabelledImages, label_paths, read_label, write_label
from fin3r.data.sa1b import BadImage, ImageReader, ImageRef, list_images
from fin3r.data.world import WorldMonoDataset, export_world_images, save_world_image
from fin3r.errors import InputError

# names added with these tests are imported inside them, so that each test fails on its own
# (rather than the whole module) against the code before the fix


def _world_png_bytes(index=0, h=24, w=32, key=None):
    import tempfile

    s = WorldMonoDataset(index + 1, h, w, seed=0)[index]
    with tempfile.TemporaryDirectory() as tmp:
        save_world_image(Path(tmp) / "x.png", s["img"], s["key"] if key is None else key)
        return (Path(tmp) / "x.png").read_bytes()


def _tar(path, members, links=()):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _report(out, shard="0of1"):
    return json.loads((out / f"label_report_{shard}.json").read_text())


# --- keys and paths ------------------------------------------------------------------------------


def test_tar_member_climbing_out_writes_nothing_outside_out(tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    shard = work / "sa_000000.tar"
    _tar(shard, {"../../evil.png": _world_png_bytes(0), "/abs/evil2.png": _world_png_bytes(1),
                 "sa_1.png": _world_png_bytes(2)})
    out = work / "labels"
    before = _files(tmp_path)
    assert main(["label", "--teacher", "oracle", "--images", str(shard), "--out", str(out)]) == 0
    assert _files(tmp_path) - before == {f"a/b/labels/{f}" for f in _files(out)}  # nothing outside --out
    assert _files(out) == {"sa_000000/sa_1.json", "sa_000000/sa_1.depth.png", "sa_000000/sa_1.mask.png",
                           "label_report_0of1.json"}
    bad = {b["image"].split("::")[-1]: b["error"] for b in _report(out)["bad"]}
    assert "'..'" in bad["../../evil.png"] and "absolute" in bad["/abs/evil2.png"]


def test_member_naming_another_shard_cannot_take_its_entry(tmp_path):
    """A member ``../sa_000001/sa_5.png`` in shard 0 must not write shard 1's entry (after which
    shard 1's real image would be skipped as labelled and paired with the wrong label)."""
    _tar(tmp_path / "sa_000000.tar", {"../sa_000001/sa_5.png": _world_png_bytes(0)})
    _tar(tmp_path / "sa_000001.tar", {"sa_5.png": _world_png_bytes(1)})
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "sa_000000.tar"),
                 str(tmp_path / "sa_000001.tar"), "--out", str(out)]) == 0
    _, _, meta = read_label(out, "sa_000001/sa_5")
    assert meta["image"] == f"{tmp_path / 'sa_000001.tar'}::sa_5.png"
    assert _report(out)["labelled"] == 1 and len(_report(out)["bad"]) == 1


def test_images_dotdot_keys_name_the_real_folder(tmp_path, monkeypatch):
    export_world_images(tmp_path / "photos", 1, 24, 32)
    monkeypatch.chdir(tmp_path / "photos")
    out = tmp_path / "photos" / "labels"
    (tmp_path / "photos" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "photos" / "sub")
    before = _files(tmp_path)
    assert main(["label", "--teacher", "oracle", "--images", "..", "--out", str(out)]) == 0
    assert {f for f in _files(tmp_path) - before if not f.startswith("photos/labels/")} == set()
    assert (out / "photos" / "world_000000.json").is_file()


def test_link_members_are_still_ignored(tmp_path):
    shard = tmp_path / "sa_000000.tar"
    _tar(shard, {"sa_1.png": _world_png_bytes(0)},
         links=[("sa_2.png", "/etc/passwd", tarfile.SYMTYPE), ("sa_3.png", "sa_1.png", tarfile.LNKTYPE)])
    skipped = []
    refs = list_images([shard], skipped)
    assert [r.member for r in refs] == ["sa_1.png"]
    assert sorted(s["image"].split("::")[1] for s in skipped) == ["sa_2.png", "sa_3.png"]


def test_write_label_refuses_paths_outside_the_root(tmp_path):
    d, m = torch.ones(4, 4), torch.ones(4, 4, dtype=torch.bool)
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for key in ("../evil", "/abs/evil", "a/../../evil"):
        with pytest.raises(InputError):
            write_label(tmp_path / "root", key, d, m)
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "link")  # a folder inside that leads out
    with pytest.raises(InputError, match="outside"):
        write_label(tmp_path / "root", "link/x", d, m)
    assert not any((tmp_path / "elsewhere").iterdir())
    assert write_label(tmp_path / "root", "./a//b", d, m) == tmp_path / "root" / "a" / "b.json"


# --- pixel formats and sizes ---------------------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    arr = ImageReader().read(ImageRef("deep", str(tmp_path / "deep.png")))
    assert arr.dtype == np.uint8 and arr.shape == (48, 64, 3)
    assert np.abs(arr[..., 0].astype(float) - grey / 257.0).max() <= 0.5 + 1e-6
    assert (arr == 255).mean() < 0.01  # PIL's convert("RGB") gave 98% white


def test_unsupported_pixel_formats_are_refused_with_the_reason():
    from fin3r.media import to_rgb8

    with pytest.raises(InputError, match="unsupported pixel format"):
        to_rgb8(Image.new("F", (8, 8)), "x.png")
    with pytest.raises(InputError, match="outside"):
        to_rgb8(Image.fromarray(np.full((8, 8), -5, np.int32), mode="I"), "x.png")
    assert to_rgb8(Image.new("LA", (8, 8), (100, 7))).tolist()[0][0] == [100, 100, 100]


def test_tiny_images_are_skipped_and_counted_and_max_size_is_validated(tmp_path, capsys):
    export_world_images(tmp_path / "imgs", 2, 24, 32)
    export_world_images(tmp_path / "tiny", 1, 1, 1)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), str(tmp_path / "tiny"),
                 "--out", str(out)]) == 0
    rep = _report(out)
    assert rep["labelled"] == 2 and rep["skipped_counts"] == {"too_small": 1} and "1x1" in rep["bad"][0]["error"]
    capsys.readouterr()
    for bad in (["--max-size", "-5"], ["--min-size", "0"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as e:  # argparse: one line, exit code 2
            main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(out), *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "l3"),
                 "--max-size", "8"]) == 2
    assert "--max-size 8" in capsys.readouterr().err


# --- skip, count, report, continue ---------------------------------------------------------------


def test_label_skips_malformed_world_keys_and_keeps_batch_neighbours(tmp_path):
    folder = tmp_path / "imgs"
    export_world_images(folder, 3, 24, 32)
    for i, key in enumerate(['{"scene_seed": "x"}', "not json", '{"scene_seed":1,"cam2world":[0],"K":[1],'
                             '"height":999999,"width":1}']):
        (folder / f"z_bad{i}.png").write_bytes(_world_png_bytes(0, key=key))
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(folder), "--out", str(out), "--batch-size", "4"]) == 0
    rep = _report(out)
    assert rep["labelled"] == 3 and rep["skipped_counts"] == {"teacher_refused": 3}
    assert all("world key" in b["error"] for b in rep["bad"])
    assert main(["label", "--teacher", "oracle", "--images", str(folder), "--out", str(tmp_path / "l2"),
                 "--strict"]) == 2


def test_truncated_shard_yields_its_readable_members(tmp_path):
    good = tmp_path / "sa_000000.tar"
    _tar(good, {"sa_1.png": _world_png_bytes(0)})
    cut = tmp_path / "sa_000001.tar"
    _tar(cut, {f"sa_{k}.png": _world_png_bytes(k) for k in range(1, 5)})
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) * 5 // 8])  # a partly downloaded shard: two members, a half, a missing one
    junk = tmp_path / "sa_000002.tar"
    junk.write_bytes(b"not a tar at all" * 10)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(good), str(cut), str(junk), "--out", str(out)]) == 0
    rep = _report(out)
    labelled = sorted(p.parent.name + "/" + p.name for p in out.rglob("*.json") if "report" not in p.name)
    assert labelled[0] == "sa_000000/sa_1.json" and len(labelled) >= 3  # the good shard + the readable members
    errors = " ".join(b["error"] for b in rep["bad"])
    assert "truncated" in errors and "cannot open the tar shard" in errors
    assert rep["labelled"] + len([b for b in rep["bad"] if b["kind"] != "listing"]) == rep["images"]


def _labelled_world(tmp_path, n=6):
    export_world_images(tmp_path / "imgs", n, 24, 32)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    return tmp_path / "imgs", out


BAD_SIDECARS = {
    "list": lambda m: [],
    "image_size_int": lambda m: dict(m, image_size=5),
    "intrinsics_str": lambda m: dict(m, intrinsics="K"),
    "near_far_contradict": lambda m: dict(m, near=m["far"], far=m["far"] * 3),
    "near_gt_far": lambda m: dict(m, near=m["far"] * 2),
    "height_str": lambda m: dict(m, height="24"),
    "no_format": lambda m: {k: v for k, v in m.items() if k != "format"},
    "nan_far": lambda m: dict(m, far=float("nan")),
}


@pytest.mark.parametrize("name", sorted(BAD_SIDECARS))
def test_sidecars_of_any_shape_are_bad_labels(tmp_path, name):
    imgs, out = _labelled_world(tmp_path, n=1)
    p = label_paths(out, "imgs/world_000000")["json"]
    p.write_text(json.dumps(BAD_SIDECARS[name](json.loads(p.read_text()))))
    with pytest.raises(BadLabel, match=str(p)):
        read_label(out, "imgs/world_000000")


def test_labelled_images_skip_every_bad_sidecar_and_report_it(tmp_path):
    imgs, out = _labelled_world(tmp_path, n=6)
    for i, name in enumerate(["list", "image_size_int", "intrinsics_str", "near_far_contradict"]):
        p = label_paths(out, f"imgs/world_{i:06d}")["json"]
        p.write_text(json.dumps(BAD_SIDECARS[name](json.loads(p.read_text()))))
    ds = LabelledImages(imgs, out, 16, 16)
    samples = [ds[i] for i in range(len(ds))]
    assert {s["key"] for s in samples} == {"imgs/world_000004", "imgs/world_000005"}
    skipped = {path for s in samples for path, _ in s["skipped"]}
    assert skipped == {str(imgs / f"world_{i:06d}.png") for i in range(4)}
    with pytest.raises(BadLabel):
        LabelledImages(imgs, out, 16, 16, strict=True)[0]


def test_training_counts_bad_samples_per_epoch_and_aborts_past_the_fraction(tmp_path):
    from fin3r.config import load_config
    from fin3r.data.skips import TooManyBadSamples
    from fin3r.train import TrainConfig, train

    imgs, out = _labelled_world(tmp_path, n=4)
    p = label_paths(out, "imgs/world_000001")["json"]
    p.write_text("[]")
    base = ["model.name=dust3r_tiny", "data.height=16", "data.width=16", "data.mono_per_epoch=8",
            "data.batch_size=4", "data.replay=none", "data.allow_no_replay=true", "data.heldout_images=0", "optim.epochs=2", "progress=false",
            "tensorboard=false", "distill.min_valid=4", "data.mono=labels", f"data.images_root={imgs}",
            f"data.labels_root={out}"]
    cfg = load_config(TrainConfig, None, base + [f"out_dir={tmp_path / 'run'}", "data.max_bad_fraction=0.5"])
    result = train(cfg)
    epochs = [r for r in result.history if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(r["bad_samples"] >= 1 for r in epochs)
    assert all(0 < r["bad_fraction"] <= 0.5 for r in epochs)
    cfg = load_config(TrainConfig, None, base + [f"out_dir={tmp_path / 'run2'}", "data.max_bad_fraction=0.0"])
    with pytest.raises(TooManyBadSamples, match="max_bad_fraction"):
        train(cfg)


# --- one unit per label entry; temp files ----------------------------------------------------------


def test_a_mixed_entry_is_never_read(tmp_path):
    """Two writers racing on one key: writer B's depth PNG with writer A's sidecar."""
    d = torch.rand(12, 16) + 0.5
    m = torch.ones(12, 16, dtype=torch.bool)
    write_label(tmp_path / "b", "k", d * 3, m)
    write_label(tmp_path, "k", d, m)
    label_paths(tmp_path, "k")["png"].write_bytes(label_paths(tmp_path / "b", "k")["png"].read_bytes())
    with pytest.raises(BadLabel, match="SHA-256"):
        read_label(tmp_path, "k")
    # the optional confidence channel is part of the unit too
    from fin3r.data.label_channels import channel_path

    write_label(tmp_path / "b", "c", d, m, confidence=torch.full((12, 16), 0.25))
    write_label(tmp_path, "c", d, m, confidence=torch.full((12, 16), 0.75))
    read_label(tmp_path, "c")
    conf = channel_path(label_paths(tmp_path, "c")["mask"], "conf")
    conf.write_bytes(channel_path(label_paths(tmp_path / "b", "c")["mask"], "conf").read_bytes())
    with pytest.raises(BadLabel, match="conf.png.*SHA-256"):
        read_label(tmp_path, "c")


def test_abandoned_temp_files_are_swept_at_the_next_run(tmp_path):
    import socket

    from fin3r.io import TEMP_SUFFIX, sweep_temp_files

    imgs, out = _labelled_world(tmp_path, n=1)
    host = socket.gethostname().replace(".", "-")
    dead = out / "imgs" / f".world_000001.json.{host}.999999999.abcd{TEMP_SUFFIX}"
    alive = out / "imgs" / f".world_000002.json.{host}.{os.getpid()}.abcd{TEMP_SUFFIX}"
    other = out / "imgs" / "notes.tmp"
    for p in (dead, alive, other):
        p.write_text("x")
    assert main(["label", "--teacher", "oracle", "--images", str(imgs), "--out", str(out)]) == 0
    assert not dead.exists() and alive.exists() and other.exists()
    assert _report(out)["temp_files_removed"] == 1
    os.utime(alive, (0, 0))  # an hour old: abandoned whoever wrote it
    assert sweep_temp_files(out) == [alive]


def test_scan_images_reports_instead_of_raising(tmp_path):
    from fin3r.data.sa1b import scan_images

    (tmp_path / "d").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "d" / "a.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "d" / "a.jpg")
    refs, skipped = scan_images([tmp_path / "d"])
    assert len(refs) == 1 and len(skipped) == 1
    with pytest.raises(InputError):
        scan_images([tmp_path / "missing"])


@pytest.mark.slow
def test_soak_label_killed_with_sigkill_ends_with_the_uninterrupted_cache(tmp_path):
    """The soak of benchmarks/soak_label.py at test size: 24 images, one broken input of each of
    the eight kinds, one SIGKILL at a random point: the final cache equals an uninterrupted run's,
    byte for byte, no temp file is left, and every broken input is listed with its kind."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "soak_label.py"
    spec = importlib.util.spec_from_file_location("soak_label", path)
    soak_label = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak_label)
    figures = soak_label.soak(tmp_path, n_images=24, kills=1, seed=1, broken_fraction=1 / 3)
    assert figures["broken"] == 8 and set(figures["broken_per_kind"].values()) == {1}
    assert figures["files_differing"] == 0 and figures["files_reference"] == 3 * 16
    assert figures["killed_runs"][0]["killed"] and figures["broken_listed_with_right_kind"] == 8
    assert figures["ok"], figures
