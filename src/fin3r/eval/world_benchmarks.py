"""Benchmarks exported from the synthetic world in the real on-disk layouts.

``export_world_benchmarks(out_dir)`` renders held-out (``split="test"``) scenes of
:mod:`fin3r.data.world` and writes them exactly as the real benchmarks are laid out, so that the
same readers and commands run end to end on a CPU machine:

- ``<out>/world/`` -- MoGe's monocular layout (``.index.txt``, ``image.jpg``, log-encoded
  ``depth.png``, ``meta.json`` with normalized intrinsics) plus ``edge.png``, the edge pixels
  (:func:`fin3r.eval.world.edge_mask`, the definition ``fin3r demo`` uses: where depth at a
  16x coarser resolution misses the sharp depth by more than 5%), so "AbsRel on edge pixels"
  can be reported; and ``benchmark.json`` (resolution, metric unit,
  recommended model input size). ``fin3r eval monodepth --benchmarks world``.
- ``<out>/world_pairs/`` -- a ScanNet-1500-style pair list (SuperGlue's
  ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)`` text format) with the colour images.
  ``fin3r eval relpose --benchmark world_pairs``.
- ``<out>/world_scenes/`` -- 7-Scenes-style multi-view scenes (``seq-01/frame-XXXXXX.color.png``,
  ``.depth.png`` in millimetres, ``.pose.txt`` camera-to-world) with ``intrinsics.txt``.
  ``fin3r eval mvdepth`` / ``fin3r eval pointmap --benchmark world_scenes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fin3r.data.world import (
    WorldMonoDataset,
    WorldViewsDataset,
    intrinsics_from_fov,
    make_scene,
    render_views,
    sample_trajectory,
    scene_seed_for,
)
from fin3r.eval.moge_layout import write_instance
from fin3r.eval.relpose import Pair, write_superglue_pairs
from fin3r.eval.scenes import write_7scenes_frame
from fin3r.eval.world import edge_mask
from fin3r.io import write_json_atomic

__all__ = ["export_world_benchmarks", "export_world_monodepth", "export_world_pairs", "export_world_scenes"]


def _uint8(img: Tensor) -> np.ndarray:
    """``(H, W, 3)`` or ``(3, H, W)`` float [0, 1] -> uint8 ``(H, W, 3)``."""
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _normalized_K(K: Tensor, height: int, width: int) -> np.ndarray:
    """Pixel intrinsics (centre of pixel (i, j) at (j, i)) -> MoGe's normalized (image = [0, 1]^2)."""
    Kn = K.double().clone()
    Kn[0, 0], Kn[0, 2] = K[0, 0] / width, (K[0, 2] + 0.5) / width
    Kn[1, 1], Kn[1, 2] = K[1, 1] / height, (K[1, 2] + 0.5) / height
    return Kn.numpy()


def export_world_monodepth(out: Path, num_images: int, height: int, width: int, seed: int, progress: bool = False) -> Path:
    """MoGe-layout monocular benchmark of ``num_images`` test views (see module doc)."""
    from tqdm.auto import tqdm

    folder = Path(out) / "world"
    folder.mkdir(parents=True, exist_ok=True)
    ds = WorldMonoDataset(num_images, height, width, seed=seed, split="test")
    names = []
    for i in tqdm(range(num_images), desc="world monodepth", disable=not progress, leave=False):
        s = ds[i]
        depth = torch.where(s["valid"], s["depth"], torch.full_like(s["depth"], float("inf")))  # sky = far
        name = f"{i:04d}"
        write_instance(folder / name, _uint8(s["img"]), depth.numpy(), _normalized_K(s["K"], height, width),
                       edge=edge_mask(s["depth"], s["valid"]).numpy())
        names.append(name)
    (folder / ".index.txt").write_text("\n".join(names) + "\n")
    spec = {"path": "world", "width": width, "height": height, "split": ".index.txt", "depth_unit": 1.0,
            "drop_max_depth": 1000.0, "input_long_side": max(height, width), "source": "fin3r.data.world",
            "seed": seed}
    write_json_atomic(folder / "benchmark.json", spec)
    return folder


def export_world_pairs(out: Path, num_pairs: int, height: int, width: int, seed: int, progress: bool = False) -> Path:
    """ScanNet-1500-style pairs (SuperGlue text format ``pairs.txt``) of two overlapping test views."""
    from tqdm.auto import tqdm

    folder = Path(out) / "world_pairs"
    (folder / "color").mkdir(parents=True, exist_ok=True)
    K = intrinsics_from_fov(width, height)
    pairs = []
    for i in tqdm(range(num_pairs), desc="world pairs", disable=not progress, leave=False):
        scene = make_scene(scene_seed_for(seed + 7, i, "test"))
        cams = sample_trajectory(scene, 2, seed=i)
        views = render_views(scene, cams, K, height, width)
        names = []
        for v in range(2):
            name = f"color/{i:04d}_{v}.jpg"
            from PIL import Image

            Image.fromarray(_uint8(views["img"][v])).save(folder / name, quality=95)
            names.append(name)
        T = torch.linalg.inv(cams[1].double()) @ cams[0].double()
        pairs.append(Pair(names[0], names[1], folder / names[0], folder / names[1], K.double().numpy(),
                          K.double().numpy(), T.numpy()))
    write_superglue_pairs(folder / "pairs.txt", pairs)
    spec = {"format": "superglue", "input_long_side": max(height, width), "source": "fin3r.data.world", "seed": seed}
    write_json_atomic(folder / "benchmark.json", spec)
    return folder


def export_world_scenes(out: Path, num_scenes: int, views_per_scene: int, height: int, width: int, seed: int,
                        progress: bool = False) -> Path:
    """7-Scenes-layout multi-view scenes (``scene_XX/seq-01/frame-*.{color,depth,pose}``, depth in
    millimetres) with the exact intrinsics in ``intrinsics.txt``."""
    from tqdm.auto import tqdm

    folder = Path(out) / "world_scenes"
    folder.mkdir(parents=True, exist_ok=True)
    ds = WorldViewsDataset(num_scenes, views_per_scene, height, width, seed=seed + 13, split="test", mode="video")
    names = []
    for i in tqdm(range(num_scenes), desc="world scenes", disable=not progress, leave=False):
        s = ds[i]
        name = f"scene_{i:02d}"
        valid = s["valid"] & (s["depth"] < 65.0)  # representable in uint16 millimetres
        for v in range(views_per_scene):
            write_7scenes_frame(folder / name, v, s["img"][v], s["depth"][v], valid[v], s["cam2world"][v])
        np.savetxt(folder / name / "intrinsics.txt", s["K"][0].double().numpy())
        names.append(name)
    (folder / "scenes.txt").write_text("\n".join(names) + "\n")
    spec = {"layout": "7scenes", "input_long_side": max(height, width), "source": "fin3r.data.world", "seed": seed}
    write_json_atomic(folder / "benchmark.json", spec)
    return folder


def export_world_benchmarks(
    out_dir: str | Path,
    num_images: int = 16,
    num_pairs: int = 16,
    num_scenes: int = 3,
    views_per_scene: int = 4,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    tasks: tuple[str, ...] = ("monodepth", "relpose", "multiview"),
    progress: bool = False,
) -> dict[str, Path]:
    """Export the synthetic world's test split as benchmarks (see the module doc).

    Returns ``{task: folder}``. Deterministic in ``seed``; a second call overwrites."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    if "monodepth" in tasks:
        folders["monodepth"] = export_world_monodepth(out, num_images, height, width, seed, progress)
    if "relpose" in tasks:
        folders["relpose"] = export_world_pairs(out, num_pairs, height, width, seed, progress)
    if "multiview" in tasks:
        folders["multiview"] = export_world_scenes(out, num_scenes, views_per_scene, height, width, seed, progress)
    return folders
