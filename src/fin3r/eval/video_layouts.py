"""Readers for the video-depth benchmarks in the layouts CUT3R's (and pi3's) evaluation reads.

Under one data root (CUT3R's ``data/``), as prepared by the MonST3R scripts:

``sintel``  ``sintel/training/final/<seq>/frame_XXXX.png`` and
            ``sintel/training/depth/<seq>/frame_XXXX.dpt`` (MPI-Sintel float32 depth: tag
            202021.25, int32 width, int32 height, then height x width float32, little endian).
            CUT3R's video evaluation takes every sequence under ``final/``; pi3's and MonST3R's
            the 14 of :data:`SINTEL_14` (``sequences="sintel14"``).
``bonn``    ``bonn/rgbd_bonn_dataset/rgbd_bonn_<seq>/rgb_110/*.png`` and ``.../depth_110/*.png``
            (uint16, metres x 5000, 0 = invalid), the five sequences of :data:`BONN_5`.
``kitti``   ``kitti/depth_selection/val_selection_cropped/image_gathered/<seq>/*.png`` and
            ``.../groundtruth_depth_gathered/<seq>/*.png`` (uint16, metres x 256, 0 = invalid,
            sparse), every sequence.
``nyu``     ``nyu-v2/val/nyu_images/*.png`` and ``nyu-v2/val/nyu_depths/*.npy`` (metres, dense): the
            654 test images, one pseudo-sequence ``val``; single images, for CUT3R's monocular
            protocol only (``fin3r eval videodepth --mono``).

GT depth comes back as CUT3R's readers return it: Sintel float32 as stored; Bonn and KITTI float64
with invalid pixels set to ``-1`` (excluded by ``gt > 0``). Frames pair by sorted file name; a
sequence whose image and depth counts differ is an error (CUT3R pairs silently by position).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fin3r.errors import InputError

__all__ = [
    "VIDEO_DATASETS",
    "IMAGE_DATASETS",
    "SINTEL_14",
    "BONN_5",
    "VideoSequence",
    "read_sintel_dpt",
    "write_sintel_dpt",
    "read_png_depth",
    "list_video_sequences",
    "read_video_gt",
    "read_video_images",
]

SINTEL_TAG = 202021.25
SINTEL_14 = ("alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2", "market_5",
             "market_6", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3")
BONN_5 = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")


@dataclass(frozen=True)
class _Layout:
    root: str  # under the data root
    images: str  # per sequence, under root ({seq} replaced)
    depth: str
    image_ext: str
    depth_ext: str
    listing: str | None  # folder whose sub-folders are the sequences (None: fixed list)
    default: tuple[str, ...] = ()
    depth_scale: float = 1.0  # PNG depth divisor (0 = float .dpt)


VIDEO_DATASETS: dict[str, _Layout] = {
    "sintel": _Layout("sintel/training", "final/{seq}", "depth/{seq}", ".png", ".dpt", "final"),
    "bonn": _Layout("bonn/rgbd_bonn_dataset", "rgbd_bonn_{seq}/rgb_110", "rgbd_bonn_{seq}/depth_110", ".png", ".png",
                    None, BONN_5, 5000.0),
    "kitti": _Layout("kitti/depth_selection/val_selection_cropped", "image_gathered/{seq}",
                     "groundtruth_depth_gathered/{seq}", ".png", ".png", "image_gathered", (), 256.0),
    "nyu": _Layout("nyu-v2", "{seq}/nyu_images", "{seq}/nyu_depths", ".png", ".npy", None, ("val",)),
}
#: data sets of single images: only CUT3R's per-image (monocular) protocol applies
IMAGE_DATASETS = ("nyu",)


@dataclass
class VideoSequence:
    """One sequence: its name and the paired image / GT depth files in frame order."""

    dataset: str
    name: str
    images: list[Path]
    depths: list[Path]


def read_sintel_dpt(path: str | Path) -> np.ndarray:
    """MPI-Sintel ``.dpt`` depth: ``(H, W)`` float32."""
    raw = Path(path).read_bytes()
    if len(raw) < 12:
        raise InputError(f"{path}: not a Sintel .dpt file (too short)")
    tag = np.frombuffer(raw[:4], "<f4")[0]
    width, height = (int(v) for v in np.frombuffer(raw[4:12], "<i4"))
    if tag != np.float32(SINTEL_TAG):
        raise InputError(f"{path}: not a Sintel .dpt file (tag {tag}, expected {SINTEL_TAG})")
    if width <= 0 or height <= 0 or width * height >= 100_000_000 or len(raw) != 12 + 4 * width * height:
        raise InputError(f"{path}: bad Sintel .dpt size {width} x {height} for {len(raw)} bytes")
    return np.frombuffer(raw[12:], "<f4").reshape(height, width).astype(np.float32)


def write_sintel_dpt(path: str | Path, depth: np.ndarray) -> None:
    """Write ``depth (H, W)`` as an MPI-Sintel ``.dpt`` file."""
    depth = np.asarray(depth, dtype="<f4")
    h, w = depth.shape
    Path(path).write_bytes(np.array([SINTEL_TAG], "<f4").tobytes() + np.array([w, h], "<i4").tobytes() + depth.tobytes())


def read_png_depth(path: str | Path, scale: float) -> np.ndarray:
    """A 16-bit PNG depth in ``metres x scale`` (Bonn 5000, KITTI 256): ``(H, W)`` float64, 0 -> -1."""
    with Image.open(path) as im:
        raw = np.array(im)
    if raw.dtype not in (np.uint16, np.int32, np.uint32) or raw.ndim != 2:
        raise InputError(f"{path}: expected a single-channel 16-bit depth PNG, got {raw.dtype} {raw.shape}")
    depth = raw.astype(np.float64) / scale
    depth[raw == 0] = -1.0
    return depth


def _read_npy_depth(path: Path) -> np.ndarray:
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a depth .npy ({e})") from None
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f"{path}: expected a 2-D float depth map, got {depth.dtype} {depth.shape}")
    return depth


def _files(folder: Path, ext: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ext) if folder.is_dir() else []


def list_video_sequences(root: str | Path, dataset: str, sequences: str | list[str] | None = None) -> list[VideoSequence]:
    """The sequences of ``dataset`` under the data ``root`` (see the module doc).

    ``sequences``: None (the protocol's default: Sintel all, Bonn the five, KITTI all),
    ``"sintel14"`` (pi3 / MonST3R's Sintel subset), or explicit names."""
    if dataset not in VIDEO_DATASETS:
        raise InputError(f"unknown video dataset {dataset!r}; known: {', '.join(VIDEO_DATASETS)}")
    lay = VIDEO_DATASETS[dataset]
    base = Path(root) / lay.root
    if not base.is_dir():
        raise InputError(f"video dataset {dataset}: missing folder {base}")
    if sequences == "sintel14":
        names = list(SINTEL_14)
    elif isinstance(sequences, (list, tuple)):
        names = [str(s) for s in sequences]
    elif sequences is None and lay.listing is None:
        names = list(lay.default)
    elif sequences is None:
        names = sorted(p.name for p in (base / lay.listing).iterdir() if p.is_dir()) if (base / lay.listing).is_dir() else []
    else:
        raise InputError(f"video dataset {dataset}: sequences must be a list of names or 'sintel14', got {sequences!r}")
    out = []
    for name in names:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise InputError(f"video dataset {dataset}: bad sequence name {name!r}")
        img_dir, dep_dir = base / lay.images.format(seq=name), base / lay.depth.format(seq=name)
        images, depths = _files(img_dir, lay.image_ext), _files(dep_dir, lay.depth_ext)
        if not images or not depths:
            raise InputError(f"video dataset {dataset}: sequence {name} has no frames in {img_dir} / {dep_dir}")
        if len(images) != len(depths):
            raise InputError(f"video dataset {dataset}: sequence {name} has {len(images)} images but {len(depths)} depth maps")
        out.append(VideoSequence(dataset, name, images, depths))
    if not out:
        raise InputError(f"video dataset {dataset}: no sequence under {base}")
    return out


def read_video_gt(seq: VideoSequence) -> np.ndarray:
    """``(T, H, W)`` GT depth of a sequence in its reader's precision (see the module doc)."""
    lay = VIDEO_DATASETS[seq.dataset]
    frames = [read_sintel_dpt(p) if lay.depth_ext == ".dpt" else _read_npy_depth(p) if lay.depth_ext == ".npy"
              else read_png_depth(p, lay.depth_scale) for p in seq.depths]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"video dataset {seq.dataset}: sequence {seq.name} mixes depth sizes {sorted(shapes)}")
    return np.stack(frames)


def read_video_images(seq: VideoSequence) -> Tensor:
    """``(T, 3, H, W)`` float images in [0, 1] (every frame must have the same size)."""
    imgs = []
    for p in seq.images:
        try:
            with Image.open(p) as im:
                imgs.append(np.array(im.convert("RGB")))
        except OSError as e:
            raise InputError(f"{p}: cannot read the image ({e})") from None
    shapes = {i.shape for i in imgs}
    if len(shapes) != 1:
        raise InputError(f"video dataset {seq.dataset}: sequence {seq.name} mixes image sizes {sorted(shapes)}")
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
