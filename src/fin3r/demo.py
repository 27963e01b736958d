"""The embedded demo: Fin3R end to end on the synthetic world, on the CPU, with no downloads.

Pieces (each a plain function, so the pretraining script, the CLI and the tests share them):

- :func:`render_world_views` renders ``N`` scenes x ``V`` views of :mod:`fin3r.data.world` into
  one :class:`WorldViews` record (the held-in label images, the replay pairs, the held-out
  evaluation pairs all come from it);
- :func:`blur_depth` is the base model's degraded supervision (average-pooled, then bilinearly
  up-sampled depth: a base that only ever saw coarse depth, like the real ones);
- :func:`pair_batch` turns (scene, view a, view b) indices into a replay batch in the sample
  contract of DESIGN.md (``img (B, 2, 3, H, W)``, ``pts3d`` in view 0's frame, ``valid``);
- :func:`evaluate_world` scores a model on held-out pairs with :mod:`fin3r.eval` metrics and
  returns per-view values, so two models can be compared with paired differences;
- :func:`run_demo` (further below) is ``fin3r demo``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from fin3r.eval.alignment import absrel_scaled
from fin3r.geometry import align_scale, depth_to_points, relative_pose, transform_points

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# World data
# --------------------------------------------------------------------------------------------
@dataclass
class WorldViews:
    """``N`` scenes x ``V`` rendered views of the synthetic world.

    Attributes:
        img: ``(N, V, 3, H, W)`` uint8 (kept compact; :meth:`images` gives float ``[0, 1]``).
        depth: ``(N, V, H, W)`` float32 planar depth, 0 where invalid.
        valid: ``(N, V, H, W)`` bool.
        K: ``(N, V, 3, 3)`` intrinsics in pixels.
        cam2world: ``(N, V, 4, 4)`` OpenCV camera-to-world poses.
    """

    img: Tensor
    depth: Tensor
    valid: Tensor
    K: Tensor
    cam2world: Tensor

    @property
    def num_scenes(self) -> int:
        return self.img.shape[0]

    @property
    def num_views(self) -> int:
        return self.img.shape[1]

    def images(self, scene: Tensor, view: Tensor) -> Tensor:
        """Float images ``(B, 3, H, W)`` in ``[0, 1]`` of views ``(scene[b], view[b])``."""
        return self.img[scene, view].float() / 255.0


def render_world_views(
    num_scenes: int,
    num_views: int,
    height: int,
    width: int,
    seed: int,
    split: str = "train",
    kind: str | None = "indoor",
    fov_x_deg: float = 60.0,
    progress: bool = False,
) -> WorldViews:
    """Render ``num_scenes`` scenes of ``num_views`` overlapping views each (deterministic).

    The scenes are those of :class:`fin3r.data.world.WorldViewsDataset` (``scene_seed_for``:
    "train" and "test" never share a scene; ``sample_trajectory`` "cluster" cameras), restricted
    to one ``kind`` of scene ("indoor": a closed room, every pixel valid; None: the world's own
    indoor/outdoor mix).
    """
    from fin3r.data.world import intrinsics_from_fov, make_scene, render_views, sample_trajectory, scene_seed_for

    K = intrinsics_from_fov(width, height, fov_x_deg)
    imgs, depths, valids, Ks, poses = [], [], [], [], []
    it = range(num_scenes)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"render {split} world", unit="scene", leave=False)
    for n in it:
        scene_seed = scene_seed_for(seed, n, split)
        scene = make_scene(scene_seed, kind)
        cams = sample_trajectory(scene, num_views, seed=0, mode="cluster")
        out = render_views(scene, cams, K, height, width)
        imgs.append((out["img"].permute(0, 3, 1, 2).clamp(0, 1) * 255).round().to(torch.uint8))
        depths.append(torch.where(out["valid"], out["depth"], torch.zeros(())))
        valids.append(out["valid"])
        Ks.append(out["K"])
        poses.append(out["cam2world"])
    make_scene.cache_clear()  # scenes are cached by the world module; we keep only the renders
    return WorldViews(
        img=torch.stack(imgs),
        depth=torch.stack(depths),
        valid=torch.stack(valids),
        K=torch.stack(Ks),
        cam2world=torch.stack(poses),
    )


def blur_depth(depth: Tensor, valid: Tensor, pool: int) -> Tensor:
    """Low-resolution version of ``depth (..., H, W)``: valid-weighted average pooling by ``pool``,
    then bilinear up-sampling back to ``(H, W)``; 0 where ``valid`` is False. ``pool <= 1`` is
    the identity. This is the only depth the base model is trained on."""
    if pool <= 1:
        return depth.clone()
    shape = depth.shape
    d = depth.reshape(-1, 1, *shape[-2:]).float()
    m = valid.reshape(-1, 1, *shape[-2:]).float()
    num = F.avg_pool2d(d * m, pool, ceil_mode=True)
    den = F.avg_pool2d(m, pool, ceil_mode=True)
    low = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
    # fill empty cells from their neighbours so bilinear up-sampling does not pull edges to 0
    if (den == 0).any():
        filled = F.max_pool2d(low, 3, 1, 1)
        low = torch.where(den > 0, low, filled)
    up = F.interpolate(low, size=shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(valid.reshape(up.shape), up, torch.zeros_like(up)).reshape(shape)


def pair_batch(views: WorldViews, scene: Tensor, a: Tensor, b: Tensor, depth: Tensor | None = None) -> dict:
    """A replay batch of pairs ``(scene[k], a[k]) -> (scene[k], b[k])``.

    Args:
        views: the rendered world.
        scene, a, b: ``(B,)`` int64 indices (``a == b`` gives a self-pair: the monocular case).
        depth: optional ``(N, V, H, W)`` depth to build the ground truth from (e.g. the blurred
            depth of the base's supervision); default ``views.depth``.

    Returns:
        dict with ``img (B, 2, 3, H, W)`` float ``[0, 1]``, ``pts3d (B, 2, H, W, 3)`` both views'
        points in view 0's camera frame, ``valid (B, 2, H, W)``, ``depth (B, 2, H, W)``,
        ``K (B, 2, 3, 3)``, ``cam2world (B, 2, 4, 4)`` (view 0 = identity, i.e. relative poses).
    """
    depth = views.depth if depth is None else depth
    idx_v = torch.stack([a, b], 1)  # (B, 2)
    idx_s = scene[:, None].expand_as(idx_v)
    img = views.img[idx_s, idx_v].float() / 255.0
    d = depth[idx_s, idx_v]
    valid = views.valid[idx_s, idx_v] & (d > 0)
    K = views.K[idx_s, idx_v]
    c2w = views.cam2world[idx_s, idx_v]
    rel = relative_pose(c2w[:, :1].expand_as(c2w), c2w)  # (B, 2, 4, 4): view -> view 0
    pts_cam = depth_to_points(d, K)  # (B, 2, H, W, 3)
    pts = transform_points(rel, pts_cam)
    return {"img": img, "pts3d": pts, "valid": valid, "depth": d, "K": K, "cam2world": rel}


def sample_pairs(
    gen: torch.Generator, num_scenes: int, num_views: int, batch: int, self_frac: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Random pairs ``(scene, a, b)``, each ``(batch,)``: two distinct views of one scene, or a
    self-pair (``a == b``) with probability ``self_frac``."""
    scene = torch.randint(num_scenes, (batch,), generator=gen)
    a = torch.randint(num_views, (batch,), generator=gen)
    off = torch.randint(1, max(num_views, 2), (batch,), generator=gen)
    b = (a + off) % num_views
    same = torch.rand(batch, generator=gen) < self_frac
    b = torch.where(same | (num_views < 2), a, b)
    return scene, a, b


# --------------------------------------------------------------------------------------------
# Evaluation on held-out world pairs (metrics from fin3r.eval)
# --------------------------------------------------------------------------------------------
def edge_mask(depth: Tensor, valid: Tensor, pool: int, thresh: float = 0.05) -> Tensor:
    """Depth-edge pixels: where the low-resolution depth (:func:`blur_depth` with ``pool``) differs
    from the sharp depth by more than ``thresh`` relative -- the detail a coarse model lacks.
    ``depth, valid (..., H, W) -> (..., H, W)`` bool."""
    low = blur_depth(depth, valid, pool)
    return valid & ((low - depth).abs() > thresh * depth.clamp_min(1e-6))


@torch.no_grad()
def mean_token_norms(model, img: Tensor, batch: int = 64) -> tuple[Tensor, Tensor]:
    """Per-image mean L2 norm of the encoder tokens, after and before the encoder's final norm
    (``fin3r.diagnose.token_norms``): ``img (B, 3, H, W) -> (post (B,), pre (B,))``."""
    from fin3r.diagnose import token_norms

    norms = token_norms(model, img, batch)
    return norms["post"].reshape(img.shape[0], -1).mean(1), norms["pre"].reshape(img.shape[0], -1).mean(1)


@torch.no_grad()
def evaluate_world(
    model,
    eval_views: WorldViews,
    edge_pool: int = 8,
    batch: int = 32,
    progress: bool = False,
) -> dict:
    """Score ``model`` on held-out pairs (views 0 and 1 of every scene of ``eval_views``).

    Per scene (the unit of the paired statistics; both views count for the monocular figures):

    - ``abs_rel``, ``delta1``: monocular depth (``predict_mono``) after the AbsRel-optimal scale
      (scale-invariant), against the *sharp* ground truth, mean of the two views;
    - ``edge_abs_rel``: the same AbsRel restricted to :func:`edge_mask` pixels;
    - ``pose_err``: relative pose error (max of rotation and translation-direction angle, degrees)
      of view 1 w.r.t. view 0: PnP-RANSAC (``fin3r.eval.relpose.solve_pnp``, the ``fin3r eval``
      protocol) on view 1's points in view 0's frame from the pair prediction, with the true
      intrinsics; summarised as AUC@5/10/20;
    - ``mv_err``: multi-view pointmap error ``mean ||s P - G|| / mean ||G||`` of both views in view
      0's frame with one least-squares scale ``s``;
    - ``norm_post``, ``norm_pre``: mean encoder token norm after / before the encoder's final norm.

    Returns:
        ``{"per_scene": {metric: (N,) float64 tensor}, "summary": {metric: mean},
        "pose_auc": {"auc5", "auc10", "auc20"}, "n_scenes", "n_views"}``.
    """
    from fin3r.eval.metrics import abs_rel, delta1, pose_auc, pose_errors
    from fin3r.eval.relpose import solve_pnp

    model.eval()
    n = eval_views.num_scenes
    keys = ("abs_rel", "delta1", "edge_abs_rel", "mv_err", "pose_err", "norm_post", "norm_pre")
    per = {k: torch.zeros(n, dtype=torch.float64) for k in keys}
    starts = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluate", unit="batch", leave=False)
    for s0 in starts:
        scene = torch.arange(s0, min(n, s0 + batch))
        zeros, ones = torch.zeros_like(scene), torch.ones_like(scene)
        pair = pair_batch(eval_views, scene, zeros, ones)
        B = scene.numel()
        img = pair["img"].flatten(0, 1)  # (2B, 3, H, W)
        mono = model.predict_mono(img)
        depth_gt = pair["depth"].flatten(0, 1)
        valid = pair["valid"].flatten(0, 1)
        edges = edge_mask(depth_gt, valid, edge_pool)
        post, pre = mean_token_norms(model, img)
        views_pred = model.predict_views(pair["img"])
        scale = align_scale(views_pred.pts3d, pair["pts3d"], pair["valid"])
        err = (scale[:, None, None, None, None] * views_pred.pts3d - pair["pts3d"]).norm(dim=-1)
        gt_norm = pair["pts3d"].norm(dim=-1)
        mv_valid = pair["valid"].float()
        mv = (err * mv_valid).flatten(1).sum(1) / (gt_norm * mv_valid).flatten(1).sum(1).clamp_min(1e-12)
        T_gt = relative_pose(pair["cam2world"][:, 1], pair["cam2world"][:, 0])  # cam 0 -> cam 1
        for k in range(B):
            i = int(scene[k])
            ar, d1, ea = [], [], []
            for v in (2 * k, 2 * k + 1):
                m = valid[v]
                pred = absrel_scaled(mono.depth[v], depth_gt[v], m)
                ar.append(abs_rel(pred, depth_gt[v], m))
                d1.append(delta1(pred, depth_gt[v], m))
                if edges[v].any():
                    ea.append(abs_rel(pred, depth_gt[v], edges[v]))
            per["abs_rel"][i] = sum(ar) / 2
            per["delta1"][i] = sum(d1) / 2
            per["edge_abs_rel"][i] = sum(ea) / len(ea) if ea else math.nan
            T_pred = solve_pnp(views_pred.pts3d[k, 1].double().numpy(), pair["K"][k, 1].double().numpy())
            per["pose_err"][i] = float(pose_errors(torch.from_numpy(T_pred).float(), T_gt[k])["max"])
            per["mv_err"][i] = float(mv[k])
            per["norm_post"][i] = float(post[2 * k : 2 * k + 2].mean())
            per["norm_pre"][i] = float(pre[2 * k : 2 * k + 2].mean())
    summary = {k: float(torch.nanmean(v)) for k, v in per.items() if k != "pose_err"}
    aucs = pose_auc(per["pose_err"], (5, 10, 20))
    summary.update(auc5=aucs[0], auc10=aucs[1], auc20=aucs[2])
    return {"per_scene": per, "summary": summary, "n_scenes": n, "n_views": 2 * n}


def floor_figures(eval_views: WorldViews, pool: int) -> dict:
    """The figures of the blurred ground truth itself (what a perfect coarse model would score):
    ``{"abs_rel", "delta1", "edge_abs_rel"}`` on views 0 and 1 of every scene."""
    from fin3r.eval.metrics import abs_rel, delta1

    depth = eval_views.depth[:, :2].flatten(0, 1)
    valid = eval_views.valid[:, :2].flatten(0, 1)
    low = blur_depth(depth, valid, pool)
    edges = edge_mask(depth, valid, pool)
    ar, d1, ea = [], [], []
    for v in range(depth.shape[0]):
        m = valid[v]
        pred = absrel_scaled(low[v], depth[v], m)
        ar.append(abs_rel(pred, depth[v], m))
        d1.append(delta1(pred, depth[v], m))
        if edges[v].any():
            ea.append(abs_rel(pred, depth[v], edges[v]))
    return {
        "abs_rel": sum(ar) / len(ar),
        "delta1": sum(d1) / len(d1),
        "edge_abs_rel": sum(ea) / max(len(ea), 1),
        "edge_fraction": float(edges.float().mean()),
    }


# --------------------------------------------------------------------------------------------
# Paired statistics
# --------------------------------------------------------------------------------------------
def paired_difference(after: Tensor, before: Tensor) -> dict:
    """Paired comparison of per-scene values (the same held-out scenes before and after).

    Returns ``{"before", "after", "diff", "se", "rel", "z", "n"}``: the means, the mean of
    ``after - before``, its standard error ``std / sqrt(n)``, the relative change
    ``diff / before`` and ``z = diff / se``. Scenes where either value is NaN are left out."""
    ok = torch.isfinite(after) & torch.isfinite(before)
    a, b = after[ok].double(), before[ok].double()
    n = int(ok.sum())
    d = a - b
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    diff = float(d.mean()) if n else math.nan
    mb = float(b.mean()) if n else math.nan
    return {
        "before": mb,
        "after": float(a.mean()) if n else math.nan,
        "diff": diff,
        "se": se,
        "rel": diff / mb if mb else math.nan,
        "z": diff / se if se and se > 0 else math.nan,
        "n": n,
    }


def paired_auc_difference(err_after: Tensor, err_before: Tensor, reps: int = 500, seed: int = 0) -> dict:
    """Pose AUC@5/10/20 before/after, with a paired bootstrap standard error of each difference
    (scenes resampled with replacement, both models on the same resample)."""
    from fin3r.eval.metrics import pose_auc

    gen = torch.Generator().manual_seed(seed)
    n = err_after.numel()
    a0, b0 = pose_auc(err_after), pose_auc(err_before)
    diffs = []
    for _ in range(reps):
        idx = torch.randint(n, (n,), generator=gen)
        a, b = pose_auc(err_after[idx]), pose_auc(err_before[idx])
        diffs.append([x - y for x, y in zip(a, b)])
    d = torch.tensor(diffs, dtype=torch.float64)
    out = {}
    for i, t in enumerate((5, 10, 20)):
        se = float(d[:, i].std())
        diff = a0[i] - b0[i]
        out[f"auc{t}"] = {"before": b0[i], "after": a0[i], "diff": diff, "se": se,
                          "rel": diff / b0[i] if b0[i] else math.nan, "z": diff / se if se > 0 else math.nan, "n": n}
    return out


# --------------------------------------------------------------------------------------------
# Data sets for the training engine (the DESIGN.md sample contract)
# --------------------------------------------------------------------------------------------
class LabelledViews(torch.utils.data.Dataset):
    """Monocular distillation samples: every view of ``views`` with its teacher label.

    Sample ``i`` = view ``i % V`` of scene ``i // V``: ``img (3, H, W)`` in [0, 1], ``depth (H, W)``
    (the teacher's depth), ``valid (H, W)`` (the teacher's mask), ``K``, ``cam2world``,
    ``depth_kind`` (the teacher's), ``source="teacher"``.
    """

    def __init__(self, views: WorldViews, teacher_depth: Tensor, teacher_mask: Tensor, depth_kind: str):
        self.views, self.depth, self.mask, self.depth_kind = views, teacher_depth, teacher_mask, depth_kind

    def __len__(self) -> int:
        return self.views.num_scenes * self.views.num_views

    def __getitem__(self, i: int) -> dict:
        n, v = divmod(int(i), self.views.num_views)
        return {
            "img": self.views.img[n, v].float() / 255.0,
            "depth": self.depth[n, v],
            "valid": self.mask[n, v],
            "K": self.views.K[n, v],
            "cam2world": self.views.cam2world[n, v],
            "depth_kind": self.depth_kind,
            "source": "teacher",
        }


class ReplayPairs(torch.utils.data.Dataset):
    """Multi-view replay samples: a fixed list of pairs of ``views`` with the base model's own
    (low-resolution) depth supervision -- replay shows the model the data it was trained on.

    Sample ``i``: ``img (2, 3, H, W)``, ``depth (2, H, W)``, ``valid``, ``K (2, 3, 3)``,
    ``cam2world (2, 4, 4)`` (world frame), ``depth_kind="metric"``, ``source="world"``.
    """

    def __init__(self, views: WorldViews, depth: Tensor, num_pairs: int, self_frac: float, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.views, self.depth = views, depth
        self.scene, self.a, self.b = sample_pairs(gen, views.num_scenes, views.num_views, num_pairs, self_frac)

    def __len__(self) -> int:
        return self.scene.numel()

    def __getitem__(self, i: int) -> dict:
        n, idx = self.scene[i], torch.stack([self.a[i], self.b[i]])
        return {
            "img": self.views.img[n, idx].float() / 255.0,
            "depth": self.depth[n, idx],
            "valid": self.views.valid[n, idx],
            "K": self.views.K[n, idx],
            "cam2world": self.views.cam2world[n, idx],
            "depth_kind": "metric",
            "source": "world",
        }


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class DemoWorldConfig:
    """The demo's slices of the synthetic world (all deterministic from ``seed``).

    ``label_*``: held-in scenes (train split, not the base's own pretraining scenes) whose images
    the teacher labels; ``replay_*``: train-split scenes for multi-view replay, with the base's own
    low-resolution depth (``pool`` comes from the base's card); ``eval_scenes``: held-out (test
    split) scenes, one pair each -- two views per scene for the monocular figures.
    """

    height: int = 48
    width: int = 64
    seed: int = 1
    kind: str | None = "indoor"
    label_scenes: int = 256
    label_views: int = 4
    replay_scenes: int = 256
    replay_views: int = 4
    replay_pairs: int = 4096
    self_frac: float = 0.0
    eval_scenes: int = 256
    pool: int = 0  # 0 = the base card's pool


@dataclass
class FinetuneConfig:
    """Fin3R fine-tuning (one ``fin3r.train`` run): LoRA on the encoder, distillation + replay.

    ``steps`` optimizer steps, each on one single-source batch of ``batch_size``: a fraction
    ``mono_fraction`` of them distillation batches, the rest replay batches. Variants without
    distillation or without replay spend all their steps on the other source (equal steps).
    """

    steps: int = 600
    mono_fraction: float = 0.75
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 20
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])
    rank: int = 8
    alpha: float = 8.0
    mode: str | None = "weight_row"
    distill_weight: float = 3.0
    replay_weight: float = 1.0
    rho: str = "abs"
    lam: float = 0.2


@dataclass
class DemoConfig:
    """``fin3r demo``: see :func:`run_demo`. ``base``: a fin3r model file ("" = the packaged
    ``fin3r/assets/demo_base.safetensors``); ``teacher``: a ``fin3r.teachers`` spec;
    ``threads``: torch threads (0 = measure 1 vs 2 and take the faster); ``jobs``: fine-tuning
    runs trained at once in worker processes of one thread each (0 = as many as there are cores
    and runs, unless two threads measured more than 1.8x faster than one); ``figure_views``:
    held-out views shown in the figure."""

    base: str = ""
    teacher: str = "oracle"
    out_dir: str = "runs/demo"
    seed: int = 0
    threads: int = 0
    jobs: int = 0
    world: DemoWorldConfig = field(default_factory=DemoWorldConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    figure_views: int = 4
    ablation: bool = False
    progress: bool = True


#: the variants of ``fin3r demo --ablation`` (all with the same steps, seed and data):
#: ``distill``/``replay``: which losses; ``mode``: the LoRA re-normalisation (``"config"`` = the
#: configured one). ``fin3r`` is the method; ``replay_only`` is the control every run includes.
VARIANTS: dict[str, dict] = {
    "replay_only": {"distill": False, "replay": True, "mode": "config",
                    "label": "control: replay only (no teacher)"},
    "naive_lora": {"distill": True, "replay": False, "mode": None, "label": "naive LoRA (distillation only)"},
    "lora_replay": {"distill": True, "replay": True, "mode": None, "label": "LoRA + replay"},
    "renorm_row_replay": {"distill": True, "replay": True, "mode": "weight_row",
                          "label": "re-norm LoRA (weight_row) + replay"},
    "renorm_output_replay": {"distill": True, "replay": True, "mode": "output",
                             "label": "re-norm LoRA (output) + replay"},
}
MAIN_VARIANTS = ("fin3r", "replay_only")
ABLATION_VARIANTS = ("replay_only", "naive_lora", "lora_replay", "renorm_row_replay", "renorm_output_replay")


def default_base_path():
    """The packaged base model (``fin3r/assets/demo_base.safetensors``)."""
    from importlib.resources import files

    return files("fin3r") / "assets" / "demo_base.safetensors"


def load_base(path: str = ""):
    """``(model (fp32, eval), card dict)`` of the demo base (``""`` = the packaged asset)."""
    import json
    from pathlib import Path

    from fin3r.errors import CheckpointError
    from fin3r.models import load_model

    p = Path(str(default_base_path())) if not path else Path(path)
    if not p.is_file():
        raise CheckpointError(f"demo base model not found: {p} (make it with scripts/pretrain_world.py)")
    model = load_model(str(p)).float().eval()
    card_path = p.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return model, card


# --------------------------------------------------------------------------------------------
# Teacher labels
# --------------------------------------------------------------------------------------------
def teacher_labels(spec: str, views: WorldViews, batch: int = 64) -> tuple[Tensor, Tensor, str]:
    """Run the teacher ``spec`` (``fin3r.teachers``) once on every view: ``(depth (N, V, H, W),
    mask (N, V, H, W), depth_kind)``. The ``oracle`` teacher gives the world's exact depth behind
    an unknown per-image scale -- a perfect monocular teacher, and labelled as such everywhere."""
    from fin3r.teachers import load_teacher

    teacher = load_teacher(spec)
    N, V, _, H, W = views.img.shape
    depths, masks, kind = [], [], "scale"
    flat_img = views.img.flatten(0, 1)
    flat_depth = views.depth.flatten(0, 1)
    flat_valid = views.valid.flatten(0, 1)
    for i in range(0, N * V, batch):
        img = flat_img[i : i + batch].float() / 255.0
        out = _predict_teacher(teacher, img, flat_depth[i : i + batch], flat_valid[i : i + batch])
        depths.append(out.depth.float())
        masks.append(out.mask.bool())
        kind = out.depth_kind
    return torch.cat(depths).reshape(N, V, H, W), torch.cat(masks).reshape(N, V, H, W), kind


def _predict_teacher(teacher, img: Tensor, depth: Tensor, valid: Tensor):
    """A teacher prediction; the oracle also reads the rendered ground truth it stands behind."""
    if getattr(teacher, "needs_ground_truth", False):
        return teacher.predict(img, depth=depth, valid=valid)
    return teacher.predict(img)


# --------------------------------------------------------------------------------------------
# Fine-tuning through the training engine
# --------------------------------------------------------------------------------------------
def variant_train_config(cfg: DemoConfig, name: str, out_dir) -> "TrainConfig":  # noqa: F821
    """The ``fin3r.train`` configuration of one demo variant (``"fin3r"`` or a :data:`VARIANTS` key):
    the same steps, seed, lr schedule and data for every variant; only the losses and the LoRA
    re-normalisation differ."""
    from fin3r.train.config import (DataConfig, DistillConfig, LoraConfig, ModelConfig, OptimConfig,
                                    ReplayConfig, TrainConfig)

    f = cfg.finetune
    spec = {"distill": True, "replay": True, "mode": "config"} if name == "fin3r" else VARIANTS[name]
    mode = f.mode if spec["mode"] == "config" else spec["mode"]
    if spec["distill"] and spec["replay"]:
        mono_steps = int(round(f.steps * f.mono_fraction))
    else:
        mono_steps = f.steps if spec["distill"] else 0
    replay_steps = f.steps - mono_steps
    return TrainConfig(
        out_dir=str(out_dir),
        seed=cfg.seed,
        device="cpu",
        precision="fp32",
        model=ModelConfig(name="demo_base"),
        lora=LoraConfig(targets=list(f.targets), rank=f.rank, alpha=f.alpha, dropout=0.0, mode=mode),
        distill=DistillConfig(weight=f.distill_weight, lam=f.lam, rho=f.rho),
        replay=ReplayConfig(weight=f.replay_weight),
        data=DataConfig(height=cfg.world.height, width=cfg.world.width, batch_size=f.batch_size,
                        mono_per_epoch=mono_steps * f.batch_size, replay_per_epoch=replay_steps * f.batch_size,
                        replay="world" if replay_steps else "none"),
        optim=OptimConfig(lr=f.lr, min_lr=f.lr * f.min_lr_frac, weight_decay=0.0,
                          warmup_epochs=f.warmup_steps / max(f.steps, 1), epochs=1, grad_clip=1.0),
        ckpt_every=0,
        log_every=25,
        max_steps=f.steps,
        progress=cfg.progress,
        tensorboard=False,
    )


def finetune_variant(base, cfg: DemoConfig, name: str, datasets: dict, out_dir, hooks=None):
    """Fine-tune a copy of ``base`` as variant ``name`` with :func:`fin3r.train.engine.train`;
    returns ``(model with its LoRA layers, eval mode; TrainResult)``."""
    import copy

    from fin3r.train.engine import train

    tc = variant_train_config(cfg, name, out_dir)
    ds = dict(datasets)
    if tc.data.replay_per_epoch == 0:
        ds["replay"] = None  # (a source with count 0 -- e.g. mono in the control -- is skipped by the sampler)
    result = train(tc, model=copy.deepcopy(base), datasets=ds, hooks=hooks)
    return result.model.eval(), result


def train_and_evaluate(job: dict) -> dict:
    """One variant, start to finish (in this process or in a worker process): fine-tune, evaluate
    on the held-out pairs, predict the figure's views. ``job`` holds ``base`` (a model, or
    ``(config_dict, state_dict)`` from another process), ``cfg``, ``name``, ``datasets``,
    ``eval_views``, ``pool``, ``out_dir``, ``threads``, ``figure_images`` and optionally
    ``queue`` (one item per optimizer step, for the parent's progress bar)."""
    import time

    torch.set_num_threads(job["threads"])
    base = job["base"]
    if isinstance(base, tuple):
        from fin3r.models.registry import build_model

        config, state = base
        base = build_model(dict(config))
        base.load_state_dict(state)
        base.eval()
    hooks = None
    if job.get("queue") is not None:
        from fin3r.train.engine import TrainHooks

        q = job["queue"]
        hooks = TrainHooks(on_step=lambda step, record: q.put(1))
    t0 = time.time()
    model, res = finetune_variant(base, job["cfg"], job["name"], job["datasets"], job["out_dir"], hooks=hooks)
    seconds = time.time() - t0
    ev = evaluate_world(model, job["eval_views"], edge_pool=job["pool"])
    with torch.no_grad():
        fig = model.predict_mono(job["figure_images"]).depth
    last = res.history[-1] if res.history else {}
    return {
        "name": job["name"],
        "eval": ev,
        "figure_depth": fig,
        "info": {"steps": res.steps, "skipped": res.skipped_steps, "trainable_params": res.trainable_params,
                 "seconds": round(seconds, 1), "threads": job["threads"],
                 "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float))}},
    }


def run_variants(jobs: list[dict], parallel: int, progress: bool, total_steps: int) -> dict[str, dict]:
    """Run :func:`train_and_evaluate` for every job: one after the other in this process
    (``parallel <= 1``), or ``parallel`` worker processes at a time (``spawn``; one thread each),
    with one progress bar over every variant's optimizer steps."""
    if parallel <= 1:
        out = {}
        for job in jobs:
            job = dict(job, cfg=_with_progress(job["cfg"], progress))
            r = train_and_evaluate(job)
            out[r["name"]] = r
        return out
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    q = manager.Queue()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"fine-tuning ({parallel} in parallel)", unit="step", dynamic_ncols=True)
    out = {}
    try:
        with ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
            pending = set()
            for job in jobs:
                b = job["base"]
                job = dict(job, base=(b.config_dict(), b.state_dict()), queue=q, cfg=_with_progress(job["cfg"], False))
                pending.add(pool.submit(train_and_evaluate, job))
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                n = 0
                while True:
                    try:
                        q.get_nowait()
                        n += 1
                    except queue_mod.Empty:
                        break
                if bar is not None and n:
                    bar.update(n)
                for fut in done:
                    r = fut.result()
                    out[r["name"]] = r
    finally:
        if bar is not None:
            bar.close()
        manager.shutdown()
    return out


def _with_progress(cfg: DemoConfig, progress: bool) -> DemoConfig:
    import dataclasses

    return dataclasses.replace(cfg, progress=progress)


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
def measure_threads(model, batch: dict, candidates=(1, 2), reps: int = 3) -> tuple[int, dict]:
    """Time a training-like step (forward + backward of the replay loss on ``batch``) with each
    thread count; returns ``(fastest, {threads: seconds per step})``. On a busy 2-core machine
    two threads can be several times slower than one (OpenMP contention), so this is measured."""
    import copy
    import time

    from fin3r.models import replay_loss

    m = copy.deepcopy(model).train()
    before = torch.get_num_threads()
    timings = {}
    for t in candidates:
        if t > (os.cpu_count() or 1):
            continue
        torch.set_num_threads(t)
        m.zero_grad(set_to_none=True)
        loss, _ = replay_loss(m.family, m.predict_views(batch["img"]), batch)  # warm-up
        loss.backward()
        t0 = time.perf_counter()
        for _ in range(reps):
            loss, _ = replay_loss(m.family, m.predict_views(batch["img"]), batch)
            loss.backward()
        timings[t] = (time.perf_counter() - t0) / reps
    torch.set_num_threads(before)
    best = min(timings, key=timings.get)
    return best, timings


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------
METRICS = (  # key, label, better ("lower"/"higher")
    ("abs_rel", "mono AbsRel (scale-inv.)", "lower"),
    ("edge_abs_rel", "edge AbsRel", "lower"),
    ("delta1", "mono delta1", "higher"),
    ("mv_err", "multi-view pointmap err", "lower"),
    ("norm_post", "enc. token norm (after enc_norm)", "-"),
    ("norm_pre", "enc. token norm (before enc_norm)", "-"),
)


def run_demo(cfg: DemoConfig, echo=print) -> dict:
    """``fin3r demo``: base -> teacher labels -> Fin3R fine-tuning (and the replay-only control,
    or the ablation's variants) -> evaluation of every model on the same held-out views ->
    ``report.json``, ``report.md`` and ``figure.png`` in ``cfg.out_dir``. Returns the report.

    ``echo`` receives one line per stage (the CLI prints them; the engine shows its own progress
    bars)."""
    import json
    import time
    from pathlib import Path

    t_start = time.time()
    threads_before = torch.get_num_threads()
    timings: dict[str, float] = {}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w, f = cfg.world, cfg.finetune
    torch.manual_seed(cfg.seed)

    base, card = load_base(cfg.base)
    recipe = card.get("recipe", {})
    pool = w.pool or int(recipe.get("pool", 8))
    base_seed = int(recipe.get("seed", 0))
    H, W = w.height, w.width

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 2)

    # 1. the world ---------------------------------------------------------------------------
    t0 = time.time()
    echo(f"[1/5] rendering the synthetic world: {w.label_scenes}x{w.label_views} held-in views for the "
         f"teacher, {w.replay_scenes}x{w.replay_views} replay views, {w.eval_scenes} held-out pairs ({W}x{H})")
    label_views = render_world_views(w.label_scenes, w.label_views, H, W, w.seed, "train", w.kind, progress=cfg.progress)
    replay_views = render_world_views(w.replay_scenes, w.replay_views, H, W, base_seed, "train", w.kind,
                                      progress=cfg.progress)
    eval_views = render_world_views(w.eval_scenes, 2, H, W, w.seed, "test", w.kind, progress=cfg.progress)
    replay_depth = blur_depth(replay_views.depth, replay_views.valid, pool)
    stage("render", t0)

    # threads ----------------------------------------------------------------------------------
    t0 = time.time()
    nb = min(f.batch_size, replay_views.num_scenes)
    probe = pair_batch(replay_views, torch.arange(nb), torch.zeros(nb, dtype=torch.long),
                       torch.ones(nb, dtype=torch.long), depth=replay_depth)
    if cfg.threads > 0:
        threads, thread_timings = cfg.threads, {}
    else:
        threads, thread_timings = measure_threads(base, probe)
    torch.set_num_threads(threads)
    n_runs = len(ABLATION_VARIANTS if cfg.ablation else MAIN_VARIANTS)
    if cfg.jobs > 0:
        parallel = min(cfg.jobs, n_runs)
    else:
        scaling = thread_timings.get(1, 1.0) / thread_timings.get(2, math.inf) if thread_timings else 1.0
        parallel = min(os.cpu_count() or 1, n_runs) if scaling < 1.8 else 1
    stage("threads", t0)
    echo(f"      torch threads: {threads}" + (
        " (measured s/step: " + ", ".join(f"{k} thread(s) {v:.3f}" for k, v in thread_timings.items()) + ")"
        if thread_timings else " (set)") + f"; fine-tuning runs at once: {parallel}")

    # 2. teacher labels ------------------------------------------------------------------------
    t0 = time.time()
    echo(f"[2/5] teacher labels: '{cfg.teacher}' on {label_views.num_scenes * label_views.num_views} held-in images"
         + (" (the ORACLE teacher: the world's exact depth up to an unknown per-image scale)"
            if cfg.teacher == "oracle" else ""))
    t_depth, t_mask, t_kind = teacher_labels(cfg.teacher, label_views)
    stage("teacher", t0)

    datasets = {
        "mono": LabelledViews(label_views, t_depth, t_mask, t_kind),
        "replay": ReplayPairs(replay_views, replay_depth, w.replay_pairs, w.self_frac, cfg.seed),
        "heldout": eval_views.img[:16, 0].float() / 255.0,
    }

    # 3. the base --------------------------------------------------------------------------------
    t0 = time.time()
    echo(f"[3/5] evaluating the base model on {eval_views.num_scenes} held-out pairs "
         f"({2 * eval_views.num_scenes} views)")
    results = {"base": evaluate_world(base, eval_views, edge_pool=pool, progress=cfg.progress)}
    stage("eval_base", t0)

    # 4. fine-tuning -----------------------------------------------------------------------------
    names = ABLATION_VARIANTS if cfg.ablation else MAIN_VARIANTS
    n_fig = min(cfg.figure_views, eval_views.num_scenes)
    figure_images = eval_views.img[:n_fig, 0].float() / 255.0
    for i, name in enumerate(names):
        tc = variant_train_config(cfg, name, out / name)
        echo(f"[4/5] fine-tuning {i + 1}/{len(names)}: {_variant_label(cfg, name)} -- {f.steps} steps "
             f"({tc.data.mono_per_epoch // f.batch_size} distillation + {tc.data.replay_per_epoch // f.batch_size} "
             f"replay batches of {f.batch_size}), lr {f.lr:g}")
    if parallel > 1:
        echo(f"      {len(names)} runs, {parallel} at a time in worker processes (1 torch thread each)")
    t0 = time.time()
    jobs = [dict(base=base, cfg=cfg, name=name, datasets=datasets, eval_views=eval_views, pool=pool,
                 out_dir=out / name, threads=1 if parallel > 1 else threads, figure_images=figure_images)
            for name in names]
    runs = run_variants(jobs, parallel, cfg.progress, f.steps * len(names))
    stage("train_and_eval", t0)
    train_info = {}
    for name in names:
        results[name] = runs[name]["eval"]
        train_info[name] = dict(runs[name]["info"], label=_variant_label(cfg, name))
        timings[f"train_{name}"] = train_info[name]["seconds"]
    with torch.no_grad():
        figure_depth = {"base": base.predict_mono(figure_images).depth}
    figure_depth.update({name: runs[name]["figure_depth"] for name in names})

    # 5. report ----------------------------------------------------------------------------------
    t0 = time.time()
    echo("[5/5] report and figure")
    floor = floor_figures(eval_views, pool)
    report = build_report(cfg, card, results, train_info, floor, pool, threads, thread_timings, names)
    report["threads"]["parallel_runs"] = parallel
    write_figure(out / "figure.png", cfg, eval_views, figure_depth, results, names)
    stage("report", t0)
    report["timings_s"] = timings
    report["total_s"] = round(time.time() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = report_markdown(report)
    (out / "report.md").write_text(md)
    torch.set_num_threads(threads_before)
    return report


@torch.no_grad()
def write_figure(path, cfg: DemoConfig, eval_views: WorldViews, figure_depth: dict, results: dict, names) -> None:
    """The figure: held-out views (image, teacher, base, fine-tuned, control, ground truth, error
    maps) and the feature-norm bars of every model. ``figure_depth``: model name -> ``(n, H, W)``
    monocular depth of views 0 of the first ``n`` held-out scenes."""
    from fin3r.demo_figure import demo_figure

    n = next(iter(figure_depth.values())).shape[0]
    sub = WorldViews(eval_views.img[:n, :1], eval_views.depth[:n, :1], eval_views.valid[:n, :1],
                     eval_views.K[:n, :1], eval_views.cam2world[:n, :1])
    t_depth, _, _ = teacher_labels(cfg.teacher, sub)
    images = sub.img[:, 0].float() / 255.0
    main = [m for m in ("fin3r", "renorm_row_replay") if m in names][:1]
    shown = ["base"] + main + (["replay_only"] if "replay_only" in names else [])
    preds = {m: figure_depth[m] for m in shown}
    labels = {m: _variant_label(cfg, m) for m in results if m != "base"}
    labels.update({"base": "base", "fin3r": "Fin3R (fine-tuned)", "replay_only": "control (replay only)"})
    norms = {m: (results[m]["summary"]["norm_pre"], results[m]["summary"]["norm_post"]) for m in results}
    demo_figure(path, images, sub.depth[:, 0], sub.valid[:, 0], t_depth[:, 0], preds, norms, labels,
                teacher_name=f"teacher ({cfg.teacher})")


def _variant_label(cfg: DemoConfig, name: str) -> str:
    if name == "fin3r":
        return f"Fin3R: re-norm LoRA ({cfg.finetune.mode}) + replay" if cfg.finetune.mode else "Fin3R: LoRA + replay"
    return VARIANTS[name]["label"]


def build_report(cfg, card, results, train_info, floor, pool, threads, thread_timings, names) -> dict:
    """The demo's findings as a JSON-able dict: per-model summaries, paired differences against the
    base and against the replay-only control (the teacher-specific part), pose AUCs with paired
    bootstrap standard errors, and the acceptance checks of issue 8."""
    from fin3r.config import to_dict

    keys = [k for k, _, _ in METRICS]
    per = {n: r["per_scene"] for n, r in results.items()}
    report = {
        "what": "fin3r demo: Fin3R on the synthetic world -- base -> teacher distillation into the encoder "
                "(LoRA) + multi-view replay -> the same held-out views before and after",
        "teacher": cfg.teacher,
        "teacher_note": ("ORACLE teacher: the world's exact depth behind an unknown per-image scale (a perfect "
                         "monocular teacher; real runs use MoGe or another model)") if cfg.teacher == "oracle" else "",
        "base": {"file": cfg.base or "fin3r/assets/demo_base.safetensors",
                 "params": card.get("params"), "steps": card.get("steps_done"), "minutes": card.get("minutes"),
                 "supervision": f"depth avg-pooled by {pool} then bilinearly up-sampled"},
        "eval": {"scenes": results["base"]["n_scenes"], "views": results["base"]["n_views"],
                 "edge_pool": pool, "split": "test (held-out scenes)"},
        "floor_blurred_gt": floor,
        "threads": {"used": threads, "measured_s_per_step": {str(k): v for k, v in thread_timings.items()}},
        "config": to_dict(cfg),
        "models": {n: r["summary"] for n, r in results.items()},
        "training": train_info,
        "vs_base": {}, "vs_control": {}, "pose": {},
    }
    for n in names:
        report["vs_base"][n] = {k: paired_difference(per[n][k], per["base"][k]) for k in keys}
        report["pose"][n] = paired_auc_difference(per[n]["pose_err"], per["base"]["pose_err"])
        if n != "replay_only" and "replay_only" in per:
            report["vs_control"][n] = {k: paired_difference(per[n][k], per["replay_only"][k]) for k in keys}
    main = "fin3r" if "fin3r" in names else ("renorm_row_replay" if "renorm_row_replay" in names else None)
    if main is not None:
        vb, vc = report["vs_base"][main], report["vs_control"].get(main, {})
        best_mono = min(vb["abs_rel"]["rel"], vb["edge_abs_rel"]["rel"])
        checks = {
            "target: >= 10% lower mono or edge AbsRel vs base": best_mono <= -0.10,
            "target: multi-view pointmap error <= 5% worse": vb["mv_err"]["rel"] <= 0.05,
            "minimum: edge AbsRel vs base <= -5%": vb["edge_abs_rel"]["rel"] <= -0.05,
        }
        if vc:
            checks["minimum: teacher-specific edge gain (vs control) >= 4 paired SE"] = vc["edge_abs_rel"]["z"] <= -4
        report["acceptance"] = {"variant": main, "checks": checks}
    return report


def _fmt_delta(p: dict, digits: int = 4) -> str:
    if not math.isfinite(p["diff"]):
        return "n/a"
    rel = f", {100 * p['rel']:+.1f}%" if math.isfinite(p["rel"]) else ""
    return f"{p['diff']:+.{digits}f} ± {p['se']:.{digits}f}{rel}"


def report_markdown(report: dict) -> str:
    """``report.md``: the table the CLI prints, then the details."""
    lines = ["# fin3r demo report", ""]
    lines.append(report["what"] + ".")
    if report.get("teacher_note"):
        lines += ["", f"Teacher: **{report['teacher']}** -- {report['teacher_note']}."]
    b, e = report["base"], report["eval"]
    lines += ["", f"Base: `{b['file']}` ({b['params']} parameters, {b['steps']} pretraining steps, "
              f"{b['supervision']}). Evaluation: {e['scenes']} held-out scenes, {e['views']} views "
              f"(mono figures over both views of each scene; standard errors over scenes, paired).", ""]
    lines += summary_table(report)
    fl = report["floor_blurred_gt"]
    lines += ["", f"Floor (the blurred ground truth itself, what a perfect coarse model scores): "
              f"AbsRel {fl['abs_rel']:.4f}, edge AbsRel {fl['edge_abs_rel']:.4f}, delta1 {fl['delta1']:.4f}; "
              f"edge pixels: {100 * fl['edge_fraction']:.0f}%.", ""]
    lines += ["## Relative pose (AUC, paired bootstrap SE of the difference)", "",
              "| model | AUC@5 | AUC@10 | AUC@20 |", "|---|---|---|---|"]
    m0 = report["models"]["base"]
    lines.append(f"| base | {m0['auc5']:.3f} | {m0['auc10']:.3f} | {m0['auc20']:.3f} |")
    for n, p in report["pose"].items():
        cells = [f"{p[k]['after']:.3f} ({p[k]['diff']:+.3f} ± {p[k]['se']:.3f})" for k in ("auc5", "auc10", "auc20")]
        lines.append(f"| {report['training'][n]['label']} | " + " | ".join(cells) + " |")
    if report["vs_control"]:
        lines += ["", "## Teacher-specific effect (paired difference vs the replay-only control)", "",
                  "| model | " + " | ".join(lbl for _, lbl, _ in METRICS[:4]) + " |",
                  "|---|" + "---|" * 4]
        for n, d in report["vs_control"].items():
            lines.append(f"| {report['training'][n]['label']} | "
                         + " | ".join(_fmt_delta(d[k]) + f" (z {d[k]['z']:+.1f})" for k, _, _ in METRICS[:4]) + " |")
    if "acceptance" in report:
        lines += ["", f"## Checks (issue 8) for `{report['acceptance']['variant']}`", ""]
        lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in report["acceptance"]["checks"].items()]
    lines += ["", "## Training runs", "", "| variant | steps | trainable params | seconds |", "|---|---|---|---|"]
    for n, t in report["training"].items():
        lines.append(f"| {t['label']} | {t['steps']} | {t['trainable_params']} | {t['seconds']:.0f} |")
    th = report["threads"]
    lines += ["", f"Threads: {th['used']} (measured seconds per training step: {th['measured_s_per_step'] or 'not measured'}). "
              f"Wall time: {report.get('total_s', 0):.0f} s ({report.get('timings_s', {})}).", "",
              "![figure](figure.png)", ""]
    return "\n".join(lines)


def summary_table(report: dict) -> list[str]:
    """The main table: every model's figures, and its paired difference vs the base."""
    head = "| model | " + " | ".join(lbl for _, lbl, _ in METRICS) + " | AUC@5/10/20 |"
    lines = [head, "|---|" + "---|" * (len(METRICS) + 1)]
    m0 = report["models"]["base"]
    lines.append("| base | " + " | ".join(f"{m0[k]:.4f}" for k, _, _ in METRICS)
                 + f" | {m0['auc5']:.3f}/{m0['auc10']:.3f}/{m0['auc20']:.3f} |")
    for n, d in report["vs_base"].items():
        m = report["models"][n]
        cells = [f"{m[k]:.4f} ({_fmt_delta(d[k])})" for k, _, _ in METRICS]
        lines.append(f"| {report['training'][n]['label']} | " + " | ".join(cells)
                     + f" | {m['auc5']:.3f}/{m['auc10']:.3f}/{m['auc20']:.3f} |")
    return lines
