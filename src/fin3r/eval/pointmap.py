"""Multi-view point-map reconstruction (CUT3R's ``mv_recon`` protocol): accuracy, completeness,
normal consistency.

Per scene the keyframes are fed in chunks of ``num_views`` (all at once for CUT3R/VGGT; pairs
of consecutive keyframes for DUSt3R/MASt3R, each pair one reconstruction). The GT depth is
resampled (nearest) to the model input and unprojected; GT and predicted points are expressed in
view 0's frame. Alignment (``align="median"``, CUT3R's ``Regr3D_t_ScaleShiftInv``): subtract the
joint median z of the valid points (separately for GT and prediction), scale the prediction by
``median ||p_gt|| / median ||p_pred||`` of the centred points, add the GT median z back; then both
go to the world frame with the GT camera of view 0, are cropped to the centre ``crop x crop``
pixels, and optionally refined by point-to-point ICP (``icp_threshold``). ``align="umeyama"`` fits
a Sim(3) of the predicted to the GT points instead (pi3's variant).

After ICP, normals are estimated from each point cloud (k = 30 PCA,
:func:`~fin3r.eval.registration.estimate_normals`, as CUT3R's Open3D ``estimate_normals()``); NC
compares absolute cosines so the normal orientation does not matter. Metrics per reconstruction:
``acc``, ``acc_med``, ``comp``, ``comp_med`` (metres, NumPy medians), ``nc``, ``nc_med``; means
over reconstructions.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.eval.alignment import umeyama_sim3
from fin3r.eval.metrics import accuracy_completeness, key_average
from fin3r.eval.model_io import default_num_views, predict_views_resized
from fin3r.eval.mvdepth import MultiViewConfig, benchmark_settings, keyframes
from fin3r.eval.registration import estimate_normals, icp_point_to_point
from fin3r.eval.report import save_result
from fin3r.eval.scenes import list_scenes, load_frame, read_scene
from fin3r.geometry import depth_to_points, invert_rigid, scale_intrinsics, transform_points

__all__ = ["evaluate_pointmap", "align_pointmaps_median"]


def align_pointmaps_median(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """CUT3R's alignment of ``pred (S, H, W, 3)`` to ``gt`` (both in view 0's frame) on ``valid``."""
    z_gt = gt[..., 2][valid].median()
    z_pr = pred[..., 2][valid].median()
    shift_gt = torch.stack([z_gt.new_zeros(()), z_gt.new_zeros(()), z_gt])
    shift_pr = torch.stack([z_pr.new_zeros(()), z_pr.new_zeros(()), z_pr])
    s_gt = (gt - shift_gt)[valid].norm(dim=-1).median().clamp(1e-3, 1e3)
    s_pr = (pred - shift_pr)[valid].norm(dim=-1).median().clamp(1e-3, 1e3)
    return (pred - shift_pr) * (s_gt / s_pr) + shift_gt


def _centre_crop(x: Tensor, crop: int) -> Tensor:
    H, W = x.shape[1:3]
    if crop <= 0 or H < crop or W < crop:
        return x
    y0, x0 = (H - crop) // 2, (W - crop) // 2
    return x[:, y0 : y0 + crop, x0 : x0 + crop]


def _reconstruction(model, frames: list[dict], config: MultiViewConfig, long_side: int | None) -> dict | None:
    imgs = torch.stack([f["img"] for f in frames])
    pred, (h, w) = predict_views_resized(model, imgs, long_side, config.align_config())
    H, W = frames[0]["depth"].shape
    depth = F.interpolate(torch.stack([f["depth"] for f in frames])[:, None], size=(h, w), mode="nearest")[:, 0]
    valid = F.interpolate(torch.stack([f["valid"] for f in frames]).float()[:, None], size=(h, w), mode="nearest")[:, 0] > 0
    K = scale_intrinsics(torch.stack([f["K"] for f in frames]).double(), w / W, h / H).float()
    c2w = torch.stack([f["cam2world"] for f in frames]).float()
    to_v0 = invert_rigid(c2w[0])[None] @ c2w  # camera v -> camera 0
    gt = transform_points(to_v0, depth_to_points(depth, K))
    pr = pred.pts3d[0].float().cpu()
    if not bool(valid.any()):
        return None
    if config.align == "umeyama":
        s, R, t = umeyama_sim3(pr[valid], gt[valid])
        pr = s * pr @ R.T + t
    else:
        pr = align_pointmaps_median(pr, gt, valid)
    gt_w = transform_points(c2w[0], gt)
    pr_w = transform_points(c2w[0], pr)
    v = _centre_crop(valid[..., None], config.crop)[..., 0]
    gt_p, pr_p = _centre_crop(gt_w, config.crop)[v].double(), _centre_crop(pr_w, config.crop)[v].double()
    if config.icp_threshold > 0:
        T = icp_point_to_point(pr_p, gt_p, config.icp_threshold)
        pr_p = pr_p @ T[:3, :3].T + T[:3, 3]
    # normals estimated from the clouds after ICP, as CUT3R's Open3D estimate_normals()
    return accuracy_completeness(pr_p, gt_p, estimate_normals(pr_p), estimate_normals(gt_p))


def evaluate_pointmap(
    model,
    root: str | Path,
    benchmark: str,
    out_dir: str | Path | None = None,
    config: MultiViewConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
) -> dict:
    """Point-map reconstruction of every scene of ``root/benchmark`` (see the module doc).

    Returns ``{"task": "pointmap", "model", "benchmarks": {benchmark: {acc, acc_med, comp,
    comp_med, nc, nc_med, num_reconstructions, num_excluded}}, "mean", "records": {benchmark:
    [per reconstruction: scene, frames, metrics]}}``."""
    from tqdm.auto import tqdm

    config = config or MultiViewConfig()
    folder = Path(root) / benchmark
    layout, long_side = benchmark_settings(folder, config)
    nv = config.num_views or default_num_views(model)
    records, excluded = [], []
    t_fwd = 0.0
    for scene in tqdm(list_scenes(folder, benchmark)[: config.max_scenes], desc=f"pointmap {benchmark}",
                      disable=not progress, leave=False):
        kf = keyframes(read_scene(folder, scene, layout, benchmark), config)
        data = [load_frame(f, config.min_depth, config.max_depth) for f in kf]
        step = nv or len(kf)
        for s in range(0, len(kf), step):
            chunk = list(range(s, min(s + step, len(kf))))
            if len(chunk) < 2 and len(kf) >= 2:
                chunk = [len(kf) - 2, len(kf) - 1]  # pair up a trailing single view
            t0 = time.perf_counter()
            m = _reconstruction(model, [data[i] for i in chunk] if len(chunk) > 1 else [data[chunk[0]]] * 2,
                                config, long_side)
            t_fwd += time.perf_counter() - t0
            names = [kf[i].name for i in chunk]
            if m is None:
                excluded.append(f"{scene}:{','.join(names)}")
                continue
            records.append({"scene": scene, "frames": " ".join(names), **m})
    keys = ("acc", "acc_med", "comp", "comp_med", "nc", "nc_med")
    summary = key_average([{k: r[k] for k in keys if k in r} for r in records])
    summary.update(num_reconstructions=len(records), num_excluded=len(excluded), forward_time_s=t_fwd)
    result = {"task": "pointmap", "model": model_tag, "config": asdict(config),
              "aggregation": "mean over reconstructions (CUT3R: mean over scenes)", "benchmarks": {benchmark: summary},
              "mean": {k: summary.get(k) for k in keys}, "records": {benchmark: records},
              "excluded": {benchmark: excluded}}
    if out_dir is not None:
        save_result(Path(out_dir) / "pointmap.json", result)
    return result
