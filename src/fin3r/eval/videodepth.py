"""Video depth (CUT3R's ``eval/video_depth``, the protocol of CUT3R / MonST3R / pi3 tables).

Per sequence of Sintel, Bonn or KITTI (:mod:`fin3r.eval.video_layouts`):

1. every frame goes through the model's multi-view path in one pass (``window = None``, as CUT3R
   streams and pi3 feeds the whole sequence) or in consecutive windows of ``window`` frames (for
   memory; each window then has its own scale, which per-sequence alignment penalises). The depth
   of a frame is the model's own-view depth (CUT3R: z of ``pts3d_in_self_view``; VGGT: its depth
   head). Pairwise models (DUSt3R, MASt3R) have no such multi-view depth: they are scored frame by
   frame through their monocular path, and the result says so (``depth_source``);
2. the depth is resized to the GT with OpenCV's bicubic interpolation;
3. the whole sequence is aligned with ONE scale (``"scale"``: CUT3R's IRLS, its ``run.sh``
   default) or one scale and shift (``"scale&shift"``: Adam LAD), or not at all (``"metric"``),
   and scored with :func:`~fin3r.eval.cut3r_depth.cut3r_depth_metrics` under the data set's
   settings (Sintel and Bonn: GT < 70 m; Sintel: prediction clipped at 70; KITTI: none).
   ``per_frame=True`` also reports every alignment solved per frame (``"<align>_per_frame"``),
   which forgives a scale that drifts between frames;
4. sequences are aggregated weighted by their valid pixels (CUT3R), data sets by an unweighted mean.

``mono=True`` is CUT3R's *monocular* protocol (``eval/monodepth``) on the same data plus NYU-v2:
every frame alone through the model's monocular path, its low-resolution depth upsampled
bicubically, aligned per frame (``median`` by default in the CLI), frames pooled weighted by valid
pixels; figures are reported as ``<align>_per_frame``.

Python API::

    from fin3r.eval.videodepth import VideoDepthConfig, evaluate_videodepth
    res = evaluate_videodepth(model, "data", ["sintel", "bonn", "kitti"], out_dir="eval/cut3r")
    res["benchmarks"]["bonn"]["scale"]["rel"]

``model`` is a Reconstructor or a callable ``images (T, 3, H, W) -> depth (T, h, w)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fin3r.errors import InputError
from fin3r.eval.cut3r_depth import (
    CUT3R_ALIGNMENTS,
    CUT3R_DATASET_SETTINGS,
    CUT3R_METRICS,
    Cut3rDepthSettings,
    cut3r_depth_metrics,
    pixel_weighted_mean,
    resize_cubic,
)
from fin3r.eval.metrics import key_average
from fin3r.eval.model_io import default_num_views, model_input_size, predict_views_resized, resize_image
from fin3r.eval.report import save_result
from fin3r.eval.video_layouts import (
    IMAGE_DATASETS,
    VIDEO_DATASETS,
    list_video_sequences,
    read_video_gt,
    read_video_images,
)

log = logging.getLogger(__name__)

__all__ = ["VideoDepthConfig", "evaluate_videodepth", "score_sequence", "sequence_depth", "videodepth_table", "AGGREGATION"]

AGGREGATION = {
    "sequences": "mean over the sequences of a data set weighted by valid pixels (CUT3R)",
    "datasets": "unweighted mean over data sets",
}
MONO_AGGREGATION = {
    "frames": "mean over the frames of a data set weighted by valid pixels (CUT3R's monodepth)",
    "datasets": "unweighted mean over data sets",
}


@dataclass
class VideoDepthConfig:
    """``fin3r eval videodepth`` settings.

    Attributes:
        datasets: among ``sintel``, ``bonn``, ``kitti``.
        alignments: among ``scale`` (CUT3R's default), ``scale&shift``, ``metric``, ``median``.
        per_frame: also score each alignment solved per frame (``<align>_per_frame``).
        sequences: per data set, None (the protocol's list), ``"sintel14"`` or a list of names.
        window: frames per forward (None: the whole sequence).
        input_long_side: model input long side (default 512; VGGT: width 518).
        max_sequences, max_frames: evaluate only the first N sequences / frames (quick checks).
        settings: per data set ``max_depth`` / ``post_clip_max`` overriding CUT3R's.
        lad_lr, lad_iters: Adam settings of ``scale&shift`` (CUT3R: 1e-4, 1000).
        mono: CUT3R's monocular protocol: each frame alone, per-frame alignment only (module doc).
    """

    datasets: list[str] = field(default_factory=lambda: ["sintel", "bonn", "kitti"])
    alignments: list[str] = field(default_factory=lambda: ["scale"])
    per_frame: bool = False
    sequences: dict[str, object] = field(default_factory=dict)
    window: int | None = None
    input_long_side: int | None = None
    max_sequences: int | None = None
    max_frames: int | None = None
    settings: dict[str, Cut3rDepthSettings] = field(default_factory=dict)
    lad_lr: float = 1e-4
    lad_iters: int = 1000
    mono: bool = False


@torch.no_grad()
def sequence_depth(model, images: Tensor, window: int | None = None, long_side: int | None = None,
                   mono: bool = False) -> tuple[Tensor, str]:
    """``(depth (T, h, w) float32 on the CPU, source)`` of a sequence ``images (T, 3, H, W)``.

    ``source`` names the path: ``"multi-view"``, ``"mono per frame"`` (``mono``, or pairwise
    models) or ``"callable"``."""
    if not hasattr(model, "predict_views"):
        if not callable(model):
            raise TypeError("model must be a Reconstructor or a callable images -> depth")
        return model(images).float().cpu(), "callable"
    family = getattr(model, "family", "")
    if mono or default_num_views(model) == 2:  # pairwise (DUSt3R, MASt3R): no per-view depth for a sequence
        patch = int(getattr(model, "patch_size", 16))
        size = model_input_size(*images.shape[-2:], family, patch, long_side)
        dev = next(model.parameters()).device
        depth = [model.predict_mono(resize_image(img[None].to(dev), size)).depth[0].float().cpu() for img in images]
        return torch.stack(depth), "mono per frame"
    step = window or images.shape[0]
    chunks = []
    for s in range(0, images.shape[0], step):
        pred, _ = predict_views_resized(model, images[s : s + step], long_side)
        if pred.depth is None:
            raise InputError(f"model family {family!r} predicts no per-view depth on its multi-view path")
        chunks.append(pred.depth[0].float().cpu())
    return torch.cat(chunks), "multi-view"


def score_sequence(pred: Tensor, gt: np.ndarray | Tensor, alignments: Sequence[str], settings: Cut3rDepthSettings,
                   per_frame: bool = False, lad_lr: float = 1e-4, lad_iters: int = 1000,
                   device: str | torch.device = "cpu", per_sequence: bool = True) -> dict[str, dict]:
    """Score a sequence: ``pred (T, h, w)`` (any size; resized bicubically to the GT) against
    ``gt (T, H, W)`` in its reader's precision. Returns ``{align: metrics}`` (unless
    ``per_sequence`` is False) and, with ``per_frame``, ``{align + "_per_frame": metrics}`` (frames
    pooled weighted by valid pixels)."""
    gt = torch.as_tensor(gt)
    size = tuple(gt.shape[-2:])
    pred = torch.stack([resize_cubic(p, size) for p in pred])
    if pred.shape[0] != gt.shape[0]:
        raise InputError(f"{pred.shape[0]} predicted frames for {gt.shape[0]} GT frames")
    p, g = pred.to(device), gt.to(device)
    out: dict[str, dict] = {}
    for align in alignments:
        if per_sequence:
            out[align] = cut3r_depth_metrics(p, g, align, settings, lad_lr=lad_lr, lad_iters=lad_iters)
        if per_frame:
            frames = [cut3r_depth_metrics(p[i], g[i], align, settings, lad_lr=lad_lr, lad_iters=lad_iters)
                      for i in range(p.shape[0])]
            out[f"{align}_per_frame"] = pixel_weighted_mean(frames)
    return out


def evaluate_videodepth(
    model,
    root: str | Path,
    datasets: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    config: VideoDepthConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict:
    """Video depth on every sequence of ``datasets`` under ``root`` (see the module doc).

    Returns ``{"task": "videodepth", "model", "config", "alignments", "aggregation",
    "depth_source", "benchmarks": {dataset: {align: metrics, "num_sequences", "num_frames"}},
    "mean": {align: metrics}, "records": {dataset: [per sequence]}}``; writes
    ``OUT/videodepth.json`` when ``out_dir`` is given."""
    from tqdm.auto import tqdm

    config = config or VideoDepthConfig()
    names = list(datasets or config.datasets)
    aligns = list(config.alignments)
    bad = [a for a in aligns if a not in CUT3R_ALIGNMENTS]
    if bad:
        raise InputError(f"unknown alignments {bad}; known: {list(CUT3R_ALIGNMENTS)}")
    unknown = [d for d in names if d not in VIDEO_DATASETS]
    if unknown:
        raise InputError(f"unknown video datasets {unknown}; known: {list(VIDEO_DATASETS)}")
    for d in names:
        if d in IMAGE_DATASETS and not config.mono:
            raise InputError(f"{d} holds single images: evaluate it with CUT3R's monocular protocol (mono / --mono)")
    per_frame = config.per_frame or config.mono
    keys = ([] if config.mono else aligns) + ([f"{a}_per_frame" for a in aligns] if per_frame else [])
    result: dict = {"task": "videodepth", "model": model_tag, "config": asdict(config), "alignments": keys,
                    "aggregation": MONO_AGGREGATION if config.mono else AGGREGATION, "depth_source": None, "benchmarks": {}, "records": {}}
    for name in names:
        settings = config.settings.get(name) or CUT3R_DATASET_SETTINGS[name]
        if isinstance(settings, dict):
            settings = Cut3rDepthSettings(**settings)
        seqs = list_video_sequences(root, name, config.sequences.get(name))[: config.max_sequences]
        records = []
        n_frames = 0
        for seq in tqdm(seqs, desc=f"videodepth {name}", disable=not progress, leave=False):
            if config.max_frames:
                seq.images, seq.depths = seq.images[: config.max_frames], seq.depths[: config.max_frames]
            images, gt = read_video_images(seq), read_video_gt(seq)
            t0 = time.perf_counter()
            depth, source = sequence_depth(model, images, config.window, config.input_long_side, config.mono)
            t1 = time.perf_counter()
            result["depth_source"] = source
            scores = score_sequence(depth, gt, aligns, settings, per_frame, config.lad_lr, config.lad_iters, device,
                                    per_sequence=not config.mono)
            records.append({"sequence": seq.name, "frames": len(seq.images), "forward_time_s": t1 - t0,
                            "metric_time_s": time.perf_counter() - t1, **scores})
            n_frames += len(seq.images)
        summary: dict = {k: pixel_weighted_mean([r[k] for r in records], CUT3R_METRICS) for k in keys}
        summary.update(num_sequences=len(records), num_frames=n_frames)
        result["benchmarks"][name] = summary
        result["records"][name] = records
    result["mean"] = key_average([{k: {m: v for m, v in s[k].items() if m != "valid_pixels"} for k in keys}
                                  for s in result["benchmarks"].values()])
    result["mean"]["num_benchmarks"] = len(result["benchmarks"])
    if out_dir is not None:
        save_result(Path(out_dir) / "videodepth.json", result)
    return result


def videodepth_table(result: dict) -> str:
    """Markdown: one row per (data set, alignment) with CUT3R's figures (x 100 but RMSE / log RMSE)."""
    cols = ("rel", "sq_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3")
    head = "| model | dataset | alignment | Abs Rel↓ | Sq Rel↓ | RMSE↓ | Log RMSE↓ | δ<1.25↑ | δ<1.25²↑ | δ<1.25³↑ | sequences |"
    rows = [head, "|" + "---|" * 11]
    for name, s in result["benchmarks"].items():
        for a in result["alignments"]:
            m = s.get(a, {})
            vals = [f"{m.get(c, float('nan')) * (1 if c in ('rmse', 'log_rmse') else 100):.3f}" for c in cols]
            rows.append(f"| {result.get('model') or 'model'} | {name} | {a} | " + " | ".join(vals)
                        + f" | {s['num_sequences']} |")
    scope = ("CUT3R's monocular protocol: each frame alone, aligned per frame; aggregation: mean over frames "
             "weighted by valid pixels" if result.get("config", {}).get("mono")
             else f"Per sequence, one alignment (*_per_frame: per frame); aggregation: {AGGREGATION['sequences']}")
    rows += ["", f"{scope}. Depth from: {result.get('depth_source')}. Abs Rel, Sq Rel and δ in %."]
    return "\n".join(rows) + "\n"
