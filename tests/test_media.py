"""Pictures as users have them: EXIF orientation applied identically by inference, labelling /
training (the SA-1B reader) and the diagnostics; video frames sampled at a rate through OpenCV;
folders of mixed sizes with every resize and crop recorded."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main
from fin3r.errors import InputError
from fin3r.infer import list_inputs, prepare_image
from fin3r.media import Frame, frame_slot, open_rgb, read_video_frames
from fin3r.models import build_model, save_model


def rotated_jpeg(path, orientation=6):
    """A 20 x 40 (H x W) picture stored with an EXIF orientation tag; returns the stored pixels."""
    rng = np.random.default_rng(0)
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white: where it ends up shows the rotation
    stored[:2] = rng.integers(0, 255, (2, 40, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    return stored


def test_exif_orientation_is_applied_the_same_way_everywhere(tmp_path):
    from fin3r.data.sa1b import ImageRef, ImageReader
    from fin3r.diagnose import load_images

    path = tmp_path / "phone.jpg"
    rotated_jpeg(path, 6)  # 6: the viewer rotates it 90 degrees clockwise
    rgb, full, stored = open_rgb(path)
    assert stored == (20, 40) and full == (40, 20) and rgb.shape == (40, 20, 3)
    assert rgb[:20].mean() > 200 and rgb[20:].mean() < 60  # the white left half is now on top
    ref = ImageRef(key="phone", path=str(path))
    arr, hw = ImageReader(check_sa1b_json=False).read_at_least(ref, None)
    assert hw == (40, 20) and np.array_equal(arr, rgb)  # labelling / training read the same pixels
    prepared = prepare_image(path, long_side=40, multiple=4)
    assert prepared.original_size == (40, 20) and prepared.img.shape == (3, 40, 20)
    assert np.abs(prepared.rgb.astype(int) - rgb).max() <= 2
    diag = load_images(tmp_path, 40, 20)
    assert np.abs(diag[0].permute(1, 2, 0).numpy() * 255 - rgb).max() <= 2
    # draft decoding (a min size given upright) still covers the upright size
    small, full2, _ = open_rgb(path, min_hw=(10, 5))
    assert full2 == (40, 20) and small.shape[0] >= 10 and small.shape[1] >= 5


def test_frame_slots():
    keep = [i for i in range(30) if i == 0 or frame_slot(i, 30.0, 2.0) != frame_slot(i - 1, 30.0, 2.0)]
    assert keep == [0, 15]
    assert [frame_slot(i, 10.0, None) for i in range(3)] == [0, 1, 2]
    assert [frame_slot(i, 10.0, 50.0) for i in range(3)] == [0, 1, 2]  # above the native rate: all


def write_video(path, n=10, fps=10.0, size=(48, 64)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((*size, 3), 20 * i, np.uint8)
        frame[:, : 4 * (i + 1)] = 255
        writer.write(frame)
    writer.release()


def test_video_frames_at_a_rate(tmp_path):
    write_video(tmp_path / "clip.avi", n=10, fps=10.0)
    frames = read_video_frames(tmp_path / "clip.avi", fps=5.0)
    assert [f.index for f in frames] == [0, 2, 4, 6, 8] and [f.name for f in frames][:2] == ["clip_f000000.png",
                                                                                            "clip_f000002.png"]
    assert frames[1].time_s == pytest.approx(0.2) and frames[0].rgb.shape == (48, 64, 3)
    assert (frames[2].rgb[:, : 4 * 5] > 200).all()  # frame 4's white band, decoded in RGB order
    assert len(read_video_frames(tmp_path / "clip.avi", max_frames=3)) == 3
    with pytest.raises(InputError):
        read_video_frames(tmp_path / "clip.avi", fps=0.0)
    with pytest.raises(InputError):
        read_video_frames(tmp_path / "missing.avi")
    assert isinstance(list_inputs(tmp_path / "clip.avi", 2.0)[0], Frame)


def test_infer_on_a_video_and_on_mixed_sizes(tmp_path):
    torch.manual_seed(0)
    model_file = save_model(build_model("dust3r_tiny").eval(), tmp_path / "tiny.safetensors")
    write_video(tmp_path / "clip.avi", n=6, fps=6.0)
    out = tmp_path / "video"
    assert main(["infer", str(tmp_path / "clip.avi"), "--fps", "2", "--model", str(model_file), "--size", "64",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [e["frame_index"] for e in summary["images"]] == [0, 3]
    assert (out / "clip_f000003_depth.png").is_file() and summary["images"][1]["time_s"] == pytest.approx(0.5)
    # a folder of mixed sizes as one multi-view set: the first image sets the size, the crop is recorded
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    rotated_jpeg(folder / "b.jpg", 6)  # 40 x 20 once upright: a portrait among landscapes
    out = tmp_path / "mixed_out"
    assert main(["infer", str(folder), "--views", "--model", str(model_file), "--size", "64", "--out", str(out),
                 "--no-progress"]) == 0
    a, b = json.loads((out / "predictions.json").read_text())["images"]
    assert a["size"] == b["size"] == [48, 64] and a["crop_xy"] == [0, 0]
    assert b["original_size"] == [40, 20] and b["resized_size"] == [128, 64] and b["crop_xy"] == [0, 40]
