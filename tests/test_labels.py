"""Label cache: exact read-back, the log encoding's bound, `fin3r label` end to end, LabelledImages."""

import importlib.util
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.data.labels import (
    BadLabel,
    LabelledImages,
    decode_log_depth,
    encode_log_depth,
    label_paths,
    log_depth_error_bound,
    read_label,
    write_label,
)
from fin3r.data.views import check_view
from fin3r.data.world import WorldMonoDataset, export_world_images


def _depth(h=20, w=30, lo=0.05, hi=80.0, seed=0):
    g = np.random.default_rng(seed)
    d = np.exp(g.uniform(np.log(lo), np.log(hi), size=(h, w))).astype(np.float32)
    mask = g.uniform(size=(h, w)) > 0.1
    return d, mask


def test_png_roundtrip_within_bound_and_exact_on_rewrite(tmp_path):
    d, mask = _depth()
    write_label(tmp_path, "a/b", d, mask, {"teacher": "x", "depth_kind": "scale"})
    depth, m, meta = read_label(tmp_path, "a/b")
    assert np.array_equal(m, mask) and (depth[~m] == 0).all()
    assert meta["teacher"] == "x" and meta["height"] == 20 and meta["format"] == "png"
    near, far = float(d[mask].min()), float(d[mask].max())
    assert meta["near"] == near and meta["far"] == far  # stored exactly
    rel = np.abs(depth[m] / d[m] - 1)
    bound = log_depth_error_bound(near, far)
    assert rel.max() <= bound
    assert rel.max() > 0.1 * bound  # the bound is tight, not vacuous
    # what was read is what gets written: a rewrite of the decoded values is bit-identical
    write_label(tmp_path, "c", depth, m, {})
    again, m2, _ = read_label(tmp_path, "c")
    assert np.array_equal(again, depth) and np.array_equal(m2, m)
    with Image.open(label_paths(tmp_path, "a/b")["png"]) as im:
        assert im.mode.startswith("I") and float(im.text["near"]) == near


def test_codes_limits():
    codes, near, far = encode_log_depth(np.array([[1.0, 10.0, np.inf, 0.0, np.nan]]))
    assert codes.tolist() == [[1, 65534, 65535, 0, 0]] and (near, far) == (1.0, 10.0)
    depth, ok = decode_log_depth(codes, near, far)
    assert depth[0, 0] == 1.0 and abs(depth[0, 1] - 10.0) < 1e-5 and np.isinf(depth[0, 2])
    assert ok.tolist() == [[True, True, False, False, False]]
    codes, near, far = encode_log_depth(np.full((2, 2), 3.0))
    assert (decode_log_depth(codes, near, far)[0] == 3.0).all()


def test_npy_format(tmp_path):
    d, mask = _depth(seed=1)
    write_label(tmp_path, "k", d, mask, {}, fmt="npy")
    depth, m, meta = read_label(tmp_path, "k")
    assert meta["format"] == "npy" and np.array_equal(m, mask)
    assert np.abs(depth[m] / d[m] - 1).max() <= 2.0**-11


def test_bad_labels(tmp_path):
    with pytest.raises(BadLabel, match="missing"):
        read_label(tmp_path, "nothing")
    d, mask = _depth()
    write_label(tmp_path, "k", d, mask, {})
    label_paths(tmp_path, "k")["png"].write_bytes(b"\x89PNG broken")
    with pytest.raises(BadLabel, match="corrupt"):
        read_label(tmp_path, "k")
    write_label(tmp_path, "k", d, mask, {})
    p = label_paths(tmp_path, "k")["json"]
    meta = json.loads(p.read_text())
    meta["width"] = 31
    p.write_text(json.dumps(meta))
    with pytest.raises(BadLabel, match="sidecar says"):
        read_label(tmp_path, "k")


def _export_world(folder, n=4, h=24, w=32):
    export_world_images(folder, n, h, w, seed=0)
    return WorldMonoDataset(n, h, w, seed=0)


def test_label_command_oracle_sharded_resumable_reports_bad(tmp_path, capsys):
    ds = _export_world(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes((tmp_path / "imgs" / "world_000000.png").read_bytes()[:100])
    out = tmp_path / "labels"
    for shard in ("0/2", "1/2"):
        assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(out),
                     "--shard", shard]) == 0
    reports = [json.loads((out / f"label_report_{i}of2.json").read_text()) for i in range(2)]
    assert sum(r["labelled"] for r in reports) == 4
    bad = [b for r in reports for b in r["bad"]]
    assert len(bad) == 1 and "broken.png" in bad[0]["image"]
    assert "broken.png" in capsys.readouterr().err
    depth, mask, meta = read_label(out, "imgs/world_000002")
    assert meta["teacher"] == "oracle" and meta["is_oracle"] and meta["depth_kind"] == "scale"
    gt = ds[2]["depth"].numpy()
    ratio = depth[mask] / gt[mask]
    assert np.allclose(ratio, ratio[0], rtol=2 * log_depth_error_bound(meta["near"], meta["far"]) + 1e-5)
    # rerun: everything finished is skipped
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    assert json.loads((out / "label_report_0of1.json").read_text())["labelled"] == 0
    # strict: the corrupt image is an error (exit code 2, one line)
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "l2"),
                 "--strict"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_labelled_images_dataset(tmp_path, caplog):
    _export_world(tmp_path / "imgs", n=3, h=24, w=32)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "imgs" / "unlabelled.png")
    ds = LabelledImages(tmp_path / "imgs", out, 16, 16, source="world-oracle")
    assert len(ds) == 3 and len(ds.missing) == 1
    s = ds[0]
    check_view(s)
    assert s["img"].shape == (3, 16, 16) and s["depth_kind"] == "scale" and s["source"] == "world-oracle"
    assert not s["K_known"]
    # a corrupt label is skipped (the next sample comes instead), recorded, and raised under strict
    label_paths(out, "imgs/world_000001")["png"].write_bytes(b"junk")
    s1 = ds[1]
    assert s1["key"] == "imgs/world_000002" and len(ds.errors) == 1 and "world_000001" in ds.errors[0][1]
    strict = LabelledImages([tmp_path / "imgs"], out, 16, 16, strict=False)
    strict.strict = True
    with pytest.raises(BadLabel):
        strict[1]
    # an image that changed size after labelling is caught, not silently mis-paired
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "imgs" / "world_000002.png")
    ds.errors.clear()
    assert ds[2]["key"] == "imgs/world_000000" and "labelled at" in ds.errors[0][1]


def test_label_from_tar_shard_with_hf_teacher(tmp_path):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers not installed (optional extra fin3r[hf])")
    from fin3r.teachers.tiny import save_tiny_depth_anything

    save_tiny_depth_anything(tmp_path / "da")
    shard = tmp_path / "sa_000000.tar"
    with tarfile.open(shard, "w") as tar:
        for k in range(2):
            p = tmp_path / f"sa_{k + 1}.jpg"
            Image.fromarray((np.random.default_rng(k).uniform(size=(40, 60, 3)) * 255).astype(np.uint8)).save(p)
            j = tmp_path / f"sa_{k + 1}.json"
            j.write_text(json.dumps({"image": {"image_id": k + 1, "width": 60, "height": 40,
                                               "file_name": p.name}, "annotations": []}))
            tar.add(p, arcname=p.name)
            tar.add(j, arcname=j.name)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", f"hf:{tmp_path / 'da'}", "--images", str(shard), "--out", str(out),
                 "--format", "npy", "--max-size", "48", "--batch-size", "2"]) == 0
    depth, mask, meta = read_label(out, "sa_000000/sa_1")
    assert meta["depth_kind"] == "affine_disparity" and depth.shape == (32, 48) and meta["image_size"] == [40, 60]
    ds = LabelledImages(shard, out, 16, 24)
    assert ds[1]["img"].shape == (3, 16, 24) and ds[1]["depth_kind"] == "affine_disparity"


def test_label_exit_status_when_nothing_is_found_or_everything_fails(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert main(["label", "--teacher", "oracle", "--images", str(empty), "--out", str(tmp_path / "l")]) == 2
    assert "no images" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for k in range(2):
        (broken / f"b{k}.png").write_bytes(b"\x89PNG not really")
    assert main(["label", "--teacher", "oracle", "--images", str(broken), "--out", str(tmp_path / "l")]) == 1
    assert "none of the 2 images" in capsys.readouterr().err


def test_label_and_training_data_read_a_folder_of_tar_shards(tmp_path):
    """`fin3r label --images FOLDER` and `LabelledImages(FOLDER, ...)` (data.images_root=FOLDER) on a
    folder of tar shards: every image labelled, every label found."""
    _export_world(tmp_path / "imgs", n=4)
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted((tmp_path / "imgs").glob("*.png"))
    for k in range(2):
        with tarfile.open(shards / f"sa_00000{k}.tar", "w") as tar:
            for f in files[2 * k:2 * k + 2]:
                tar.add(f, arcname=f.name)
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "oracle", "--images", str(shards), "--out", str(out)]) == 0
    assert json.loads((out / "label_report_0of1.json").read_text())["labelled"] == 4
    data = LabelledImages(shards, out, 16, 16, source="world-oracle")
    assert len(data) == 4 and not data.missing and data[3]["key"] == "sa_000001/world_000003"
