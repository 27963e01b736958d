"""SA-1B style image sources: folders and sa_*.tar shards of jpg + json, keys, bad files."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from fin3r.data.sa1b import BadImage, ImageReader, SA1BImages, list_images
from fin3r.errors import InputError


def _jpg(h=30, w=40, seed=0):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).uniform(size=(h, w, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _sa_json(image_id, w, h):
    return json.dumps({"image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
                       "annotations": [{"id": 1, "segmentation": {"size": [h, w], "counts": "xx"},
                                        "bbox": [0, 0, 1, 1], "area": 1}]}).encode()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_and_tar_keys_and_reading(tmp_path):
    shard = tmp_path / "sa_000000.tar"
    _tar(shard, {"sa_2.jpg": _jpg(seed=2), "sa_2.json": _sa_json(2, 40, 30),
                 "sa_1.jpg": _jpg(seed=1), "sa_1.json": _sa_json(1, 40, 30)})
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes(_jpg(20, 10))
    (folder / "notes.txt").write_text("not an image")
    refs = list_images([shard, folder])
    assert [r.key for r in refs] == ["sa_000000/sa_1", "sa_000000/sa_2", "photos/sub/a"]
    reader = ImageReader()
    assert reader.read(refs[0]).shape == (30, 40, 3) and reader.read(refs[2]).shape == (20, 10, 3)
    ds = SA1BImages([shard, folder], shard=(1, 2))
    assert len(ds) == 1 and ds[0]["key"] == "sa_000000/sa_2" and ds[0]["img"].shape == (3, 30, 40)
    assert 0 <= ds[0]["img"].min() and ds[0]["img"].max() <= 1


def test_bad_images_name_their_path(tmp_path):
    shard = tmp_path / "sa_000001.tar"
    good = _jpg()
    _tar(shard, {"sa_1.jpg": good[: len(good) // 2], "sa_2.jpg": good, "sa_2.json": _sa_json(2, 64, 48)})
    refs = list_images([shard])
    reader = ImageReader()
    with pytest.raises(BadImage, match=r"sa_000001\.tar::sa_1\.jpg.*truncated"):
        reader.read(refs[0])
    with pytest.raises(BadImage, match="json says 64x48"):
        reader.read(refs[1])
    with pytest.raises(InputError):
        list_images([tmp_path / "nope"])
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "x.jpg").write_bytes(good)
    (tmp_path / "d1" / "x.png").write_bytes(good)
    skipped = []  # a second image with the same key is left out and reported, not fatal
    assert [r.describe() for r in list_images([tmp_path / "d1"], skipped)] == [str(tmp_path / "d1" / "x.jpg")]
    assert len(skipped) == 1 and "x.png" in skipped[0]["image"] and "already names" in skipped[0]["error"]


def test_draft_decode_covers_the_requested_size(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(_jpg(400, 600))
    ref = list_images([p])[0]
    arr, full = ImageReader().read_at_least(ref, (90, 140))
    assert full == (400, 600) and arr.shape == (100, 150, 3)  # 1/4 scale: the smallest >= 90x140
    arr, _ = ImageReader().read_at_least(ref, None)
    assert arr.shape == (400, 600, 3)


def test_a_folder_of_tar_shards_is_sa1b_as_downloaded(tmp_path):
    """SA-1B as downloaded is a folder of sa_*.tar: the folder finds the shards' images, with the
    same keys as listing the shards one by one (so labels made either way pair up)."""
    folder = tmp_path / "sa1b"
    folder.mkdir()
    for k in range(2):
        _tar(folder / f"sa_00000{k}.tar", {f"sa_{k}{j}.jpg": _jpg(seed=j) for j in range(2)})
    (folder / "loose.jpg").write_bytes(_jpg(seed=5))
    from_folder = list_images([folder])
    one_by_one = list_images(sorted(folder.glob("*.tar")))
    assert [r.key for r in from_folder] == ["sa1b/loose"] + [r.key for r in one_by_one]
    assert [r.key for r in one_by_one] == ["sa_000000/sa_00", "sa_000000/sa_01", "sa_000001/sa_10", "sa_000001/sa_11"]
    assert ImageReader().read(from_folder[3]).shape == (30, 40, 3)
