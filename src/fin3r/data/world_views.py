"""Rendered slices of the synthetic world held in memory, and the data sets built on them.

- :func:`render_world_views` renders ``N`` scenes x ``V`` views of :mod:`fin3r.data.world` into
  one :class:`WorldViews` record (images as uint8, depth, masks, cameras);
- :func:`blur_depth` is a coarse model's degraded supervision (average-pooled, then bilinearly
  up-sampled depth);
- :func:`pair_batch` / :func:`sample_pairs`: replay pairs in the sample contract of
  :mod:`fin3r.data.views` (``img (B, 2, 3, H, W)``, ``pts3d`` in view 0's frame, ``valid``);
- :func:`teacher_labels`: a :mod:`fin3r.teachers` teacher run once on every view;
- :class:`LabelledViews` (distillation samples) and :class:`ReplayPairs` (replay samples) for
  the training engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fin3r.data.world import intrinsics_from_fov, make_scene, render_views, sample_trajectory, scene_seed_for
from fin3r.geometry import depth_to_points, relative_pose, transform_points
from fin3r.teachers import load_teacher


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
    K = intrinsics_from_fov(width, height, fov_x_deg)
    imgs, depths, valids, Ks, poses = [], [], [], [], []
    it = range(num_scenes)
    if progress:
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


def teacher_labels(spec: str, views: WorldViews, batch: int = 64) -> tuple[Tensor, Tensor, str]:
    """Run the teacher ``spec`` (``fin3r.teachers``) once on every view: ``(depth (N, V, H, W),
    mask (N, V, H, W), depth_kind)``. The ``oracle`` teacher gives the world's exact depth behind
    an unknown per-image scale -- a perfect monocular teacher, and labelled as such everywhere."""
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


__all__ = ["WorldViews", "render_world_views", "blur_depth", "pair_batch", "sample_pairs", "teacher_labels",
           "LabelledViews", "ReplayPairs"]
