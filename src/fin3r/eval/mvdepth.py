"""Multi-view depth (the DUSt3R/MASt3R "Robust MVD" protocol, median scaling).

For every keyframe of every scene (:mod:`fin3r.eval.scenes` layouts) the model sees the keyframe
as view 0 with ``num_views - 1`` neighbouring keyframes as source views (default: one for the
pairwise DUSt3R/MASt3R, the next keyframes up to ``num_views`` for CUT3R/VGGT; DUSt3R/MASt3R with
``num_views > 2`` go through the global alignment). The keyframe's
depth (z of its own-frame points, view 0) is resized to the GT with nearest resampling, scaled by
``median(gt) / median(pred)`` over the valid GT pixels, clipped to ``[0.1, 100]`` and scored:
``absrel = mean |p - g| / g`` and ``inliers103 = mean[max(p/g, g/p) < 1.03]`` (fractions; RMVD
prints x 100). Means over keyframes per scene set; the result also keeps every per-view record.
RMVD's "best over a growing number of source views" is not applied (one fixed view count).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fin3r.eval.alignment import median_scale
from fin3r.eval.metrics import key_average
from fin3r.eval.model_io import default_num_views, predict_views_resized
from fin3r.eval.report import save_result
from fin3r.eval.scenes import list_scenes, load_frame, read_scene

__all__ = ["MultiViewConfig", "evaluate_mvdepth", "keyframes", "benchmark_settings"]


@dataclass
class MultiViewConfig:
    """Settings shared by ``fin3r eval mvdepth`` and ``fin3r eval pointmap``.

    Attributes:
        layout: ``7scenes`` | ``nrgbd`` | ``scannet`` (default: the benchmark's ``benchmark.json``,
            else ``7scenes``).
        kf_every: keep every k-th frame of a scene (CUT3R: 200 for 7-Scenes, ~500 for NRGBD).
        max_frames: at most this many keyframes per scene.
        num_views: views per forward (default: 2 for DUSt3R/MASt3R, all keyframes otherwise);
            DUSt3R/MASt3R with more than 2 views: pair graph + global alignment (``fin3r.align``).
        align_graph: the global alignment's pair graph (``complete``, ``swin-K``, ...).
        align_iters: the global alignment's optimiser iterations.
        input_long_side: model input long side (default per family / benchmark.json).
        min_depth, max_depth: valid GT depth range in metres.
        max_scenes: evaluate only the first N scenes.
        align: pointmap alignment, ``median`` (CUT3R: median-z shift + median-norm scale) or
            ``umeyama`` (pi3: Sim(3) fit of all valid points).
        icp_threshold: point-to-point ICP refinement distance in metres (CUT3R 0.1; 0 = off).
        crop: keep the centre ``crop x crop`` pixels of each view for the point clouds (CUT3R
            224; 0 = whole view; ignored for views smaller than that).
    """

    layout: str | None = None
    kf_every: int = 1
    max_frames: int | None = None
    num_views: int | None = None
    input_long_side: int | None = None
    min_depth: float = 1e-3
    max_depth: float = 10.0
    max_scenes: int | None = None
    align: str = "median"
    icp_threshold: float = 0.1
    crop: int = 224
    align_graph: str = "complete"
    align_iters: int = 100

    def align_config(self):
        """The :class:`~fin3r.align.AlignConfig` of these settings."""
        from fin3r.align import AlignConfig, OptimizerConfig

        return AlignConfig(graph=self.align_graph, optimizer=OptimizerConfig(niter=self.align_iters))


def benchmark_settings(folder: Path, config: MultiViewConfig) -> tuple[str, int | None]:
    """``(layout, input_long_side)``: the config's, else the folder's ``benchmark.json``'s."""
    spec = {}
    if (folder / "benchmark.json").is_file():
        spec = json.loads((folder / "benchmark.json").read_text())
    layout = config.layout or spec.get("layout", "7scenes")
    return layout, config.input_long_side or spec.get("input_long_side")


def keyframes(frames: list, config: MultiViewConfig) -> list:
    """Every ``kf_every``-th frame, at most ``max_frames``."""
    kf = frames[:: max(1, config.kf_every)]
    return kf[: config.max_frames] if config.max_frames else kf


def evaluate_mvdepth(
    model,
    root: str | Path,
    benchmark: str,
    out_dir: str | Path | None = None,
    config: MultiViewConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
) -> dict:
    """Multi-view depth of every keyframe of ``root/benchmark`` (see the module doc).

    Returns ``{"task": "mvdepth", "model", "benchmarks": {benchmark: {"absrel", "inliers103",
    "num_views_scored", "num_excluded"}}, "mean", "records": {benchmark: [per keyframe: scene,
    frame, absrel, inliers103, valid_pixels]}}``."""
    from tqdm.auto import tqdm

    config = config or MultiViewConfig()
    folder = Path(root) / benchmark
    layout, long_side = benchmark_settings(folder, config)
    nv = config.num_views or default_num_views(model)
    scenes = list_scenes(folder, benchmark)[: config.max_scenes]
    records, excluded = [], []
    t_fwd = 0.0
    for scene in tqdm(scenes, desc=f"mvdepth {benchmark}", disable=not progress, leave=False):
        kf = keyframes(read_scene(folder, scene, layout, benchmark), config)
        data = [load_frame(f, config.min_depth, config.max_depth) for f in kf]
        n = len(kf)
        for i in range(n):
            k = min(nv or n, n)
            order = [i] + [(i + j) % n for j in range(1, k)] if n > 1 else [i, i]
            imgs = torch.stack([data[j]["img"] for j in order])
            gt, valid = data[i]["depth"], data[i]["valid"]
            if not bool(valid.any()):
                excluded.append(f"{scene}/{kf[i].name}")
                continue
            t0 = time.perf_counter()
            pred, _ = predict_views_resized(model, imgs, long_side, config.align_config())
            t_fwd += time.perf_counter() - t0
            depth = pred.pts3d[0, 0, ..., 2].float().cpu()
            depth = F.interpolate(depth[None, None], size=gt.shape, mode="nearest")[0, 0]
            p, g = depth[valid], gt[valid]
            p = (p * median_scale(p, g)).clamp(0.1, 100.0)
            ratio = torch.maximum(p / g, g / p)
            records.append({"scene": scene, "frame": kf[i].name, "valid_pixels": int(valid.sum()),
                            "absrel": ((p - g).abs() / g).mean().item(),
                            "inliers103": (ratio < 1.03).float().mean().item()})
    summary = key_average([{k: r[k] for k in ("absrel", "inliers103")} for r in records])
    summary.update(num_views_scored=len(records), num_excluded=len(excluded), forward_time_s=t_fwd)
    result = {"task": "mvdepth", "model": model_tag, "config": asdict(config),
              "aggregation": "mean over keyframes (RMVD: mean over samples)", "benchmarks": {benchmark: summary},
              "mean": {k: summary.get(k) for k in ("absrel", "inliers103")}, "records": {benchmark: records},
              "excluded": {benchmark: excluded}}
    if out_dir is not None:
        save_result(Path(out_dir) / "mvdepth.json", result)
    return result
