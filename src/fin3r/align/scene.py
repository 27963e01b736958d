"""Global alignment of a pairwise model's predictions into one scene with cameras.

``align_pairs(pairs, config)`` turns :class:`~fin3r.align.pairs.PairPredictions` into an
:class:`AlignedScene` (per-image depth, world points, confidence, camera-to-world poses,
intrinsics); ``align_views(model, imgs, config)`` runs the model on the pair graph first and
returns a :class:`~fin3r.models.base.ViewsPrediction` like the multi-view models', so DUSt3R and
MASt3R take any number of views: points of every view in view 0's camera frame, ``cam2world``
relative to view 0, ``intrinsics`` and ``depth`` per view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fin3r.align.camera import default_principal_point, estimate_focal, solve_pnp_ransac
from fin3r.align.graphs import pair_graph, parse_graph
from fin3r.align.init import init_from_spanning_tree
from fin3r.align.optimizer import OptimizerConfig, PointCloudAligner, run_optimizer
from fin3r.align.pairs import PairPredictions, predict_pairs
from fin3r.errors import InputError
from fin3r.geometry import depth_to_points, invert_rigid, transform_points
from fin3r.models.base import ViewsPrediction

__all__ = ["AlignConfig", "AlignedScene", "align_pair", "align_pairs", "scene_to_views_prediction", "align_views", "is_pairwise"]

def is_pairwise(model) -> bool:
    """Whether ``model`` predicts image pairs (its family's ``views_per_forward`` is 2: DUSt3R,
    MASt3R), so that more views need the global alignment."""
    from fin3r.models.registry import find_family

    spec = find_family(getattr(model, "family", ""))
    return spec is not None and spec.views_per_forward == 2


@dataclass
class AlignConfig:
    """Global-alignment settings.

    Attributes:
        graph: pair graph (:func:`~fin3r.align.graphs.pair_graph`): ``complete``, ``swin-K``,
            ``logwin-K``, ``oneref-R`` (``-noncyclic`` variants).
        method: ``optimize`` (the point-cloud optimiser), ``pair`` (two images only: cameras of
            the raw pair prediction, :func:`align_pair`) or ``auto`` (``pair`` for two images, else
            ``optimize``) -- DUSt3R's demo does the same.
        init: ``mst`` (spanning-tree initialisation) or ``random`` (the optimiser's random start).
        pnp_iters: RANSAC iterations of the initialisation's PnP.
        batch_size: pairs per model forward.
        seed: seed of the random start (every parameter the initialisation does not set).
        optimizer: :class:`~fin3r.align.optimizer.OptimizerConfig` (iterations, learning rate, ...).
    """

    graph: str = "complete"
    method: str = "auto"
    init: str = "mst"
    pnp_iters: int = 10
    batch_size: int = 8
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        parse_graph(self.graph)
        if self.method not in ("auto", "optimize", "pair"):
            raise InputError(f"align: method must be auto, optimize or pair, got {self.method!r}")
        if self.init not in ("mst", "random"):
            raise InputError(f"align: init must be mst or random, got {self.init!r}")
        if self.batch_size < 1:
            raise InputError("align: batch_size must be >= 1")


@dataclass
class AlignedScene:
    """A globally aligned scene of ``N`` images (world frame: the initialisation's root camera).

    Attributes:
        depth: ``(N, H, W)`` planar depth.
        pts3d: ``(N, H, W, 3)`` world points.
        conf: ``(N, H, W)`` the best confidence of each pixel over its pairs.
        cam2world: ``(N, 4, 4)`` OpenCV camera-to-world poses.
        intrinsics: ``(N, 3, 3)`` in pixels.
        losses: the loss at each iteration.
        info: initialisation details (``tree``, ``root``, ``pnp``) and the pair graph.
    """

    depth: Tensor
    pts3d: Tensor
    conf: Tensor
    cam2world: Tensor
    intrinsics: Tensor
    losses: list[float]
    info: dict

    @property
    def focals(self) -> Tensor:
        """``(N,)``."""
        return self.intrinsics[:, 0, 0]

    def relative_to(self, n: int = 0) -> AlignedScene:
        """The same scene in camera ``n``'s frame (camera ``n`` at the identity)."""
        to_n = invert_rigid(self.cam2world[n].double())
        c2w = (to_n[None] @ self.cam2world.double()).float()
        pts = (self.pts3d.double() @ to_n[:3, :3].T + to_n[:3, 3]).float()
        return AlignedScene(self.depth, pts, self.conf, c2w, self.intrinsics, self.losses, self.info)


def align_pairs(pairs: PairPredictions, config: AlignConfig | None = None, progress: bool = False) -> AlignedScene:
    """Global alignment of ``pairs`` (see :mod:`fin3r.align.optimizer` and :mod:`fin3r.align.init`)."""
    config = config or AlignConfig()
    g = torch.Generator().manual_seed(config.seed)
    with torch.inference_mode(False), torch.enable_grad():  # callers may be in inference mode
        aligner = PointCloudAligner(pairs, config.optimizer, generator=g)
        info: dict = {"graph": config.graph, "edges": len(pairs.edges)}
        if config.init == "mst":
            info.update(init_from_spanning_tree(aligner, pnp_iters=config.pnp_iters))
        losses = run_optimizer(aligner, progress=progress)
    with torch.no_grad():
        info["final_loss"] = float(aligner())
        N, (H, W) = aligner.num_images, aligner.image_size
        return AlignedScene(depth=aligner.depth().detach().clone(),
                            pts3d=aligner.world_points().detach().reshape(N, H, W, 3).clone(),
                            conf=aligner.im_conf.reshape(N, H, W).clone(),
                            cam2world=aligner.cam2world().detach().clone(),
                            intrinsics=aligner.intrinsics().detach().clone(), losses=losses, info=info)


@torch.no_grad()
def align_pair(pairs: PairPredictions, config: AlignConfig | None = None) -> AlignedScene:
    """Cameras of a single image pair without optimisation (DUSt3R's pair viewer): the focal of
    each image from its own-frame points (:func:`~fin3r.align.camera.estimate_focal`), the other
    camera by PnP-RANSAC of its points in the reference camera's frame (100 iterations, 5 px),
    where the reference is the image whose pair ``(i, 1 - i)`` scores the higher
    ``mean(conf_i) * mean(conf_j)``; the points are that pair's prediction, unchanged."""
    config = config or AlignConfig()
    if pairs.num_images != 2 or set(pairs.edges) != {(0, 1), (1, 0)}:
        raise InputError("align_pair: needs the two ordered pairs (0, 1) and (1, 0)")
    H, W = pairs.image_size
    cfg = config.optimizer
    pp = cfg.principal_point or default_principal_point(H, W)
    idx = pairs.edge_index()
    im_conf = torch.zeros(2, H, W)
    for k, (i, j) in enumerate(pairs.edges):
        im_conf[i] = torch.maximum(im_conf[i], pairs.conf_i[k])
        im_conf[j] = torch.maximum(im_conf[j], pairs.conf_j[k])
    focals, rel, score = [], [], []
    for i in (0, 1):
        k, k_other = idx[(i, 1 - i)], idx[(1 - i, i)]
        score.append(float(pairs.conf_i[k].mean() * pairs.conf_j[k].mean()))
        f = estimate_focal(pairs.pts_i[k], pp)
        f = f if math.isfinite(f) and f > 0 else float(max(H, W))
        focals.append(f)
        K = torch.tensor([[f, 0, pp[0]], [0, f, pp[1]], [0, 0, 1]], dtype=torch.float64)
        res = solve_pnp_ransac(pairs.pts_j[k_other].double().numpy(), K.numpy(),
                               (im_conf[i] > cfg.min_conf_thr).numpy(), iters=100)
        rel.append(invert_rigid(torch.from_numpy(res[0]).float()) if res is not None else torch.eye(4))
    ref = 0 if score[0] > score[1] else 1
    other = 1 - ref
    k = idx[(ref, other)]
    c2w = torch.empty(2, 4, 4)
    c2w[ref], c2w[other] = torch.eye(4), rel[other]
    depth = torch.empty(2, H, W)
    depth[ref] = pairs.pts_i[k][..., 2]
    depth[other] = transform_points(invert_rigid(rel[other]), pairs.pts_j[k])[..., 2]
    K = torch.zeros(2, 3, 3)
    K[:, 0, 0] = K[:, 1, 1] = torch.tensor(focals)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = pp[0], pp[1], 1
    pts = transform_points(c2w, depth_to_points(depth, K))
    return AlignedScene(depth=depth, pts3d=pts, conf=im_conf, cam2world=c2w, intrinsics=K, losses=[],
                        info={"graph": "pair", "edges": 2, "root": ref, "method": "pair"})


def scene_to_views_prediction(scene: AlignedScene) -> ViewsPrediction:
    """A batch-1 :class:`ViewsPrediction` of ``scene`` in view 0's camera frame."""
    s = scene.relative_to(0)
    return ViewsPrediction(pts3d=s.pts3d[None], conf=s.conf[None], cam2world=s.cam2world[None],
                           intrinsics=s.intrinsics[None], depth=s.depth[None], depth_conf=s.conf[None],
                           extras={"align": {k: v for k, v in s.info.items() if k != "tree"},
                                   "align_loss": s.info.get("final_loss")})


def align_views(model, imgs: Tensor, config: AlignConfig | None = None, progress: bool = False) -> ViewsPrediction:
    """Pairwise model on ``imgs (N, 3, H, W)`` (or ``(1, N, 3, H, W)``) in ``[0, 1]``, ``N >= 2``,
    through the pair graph and the global alignment -> a batch-1 ViewsPrediction in view 0's frame
    (``pts3d``, ``conf``, ``cam2world``, ``intrinsics``, ``depth``)."""
    config = config or AlignConfig()
    if imgs.ndim == 5:
        if imgs.shape[0] != 1:
            raise InputError(f"align_views: one scene at a time, got a batch of {imgs.shape[0]}")
        imgs = imgs[0]
    n = imgs.shape[0]
    use_pair = config.method == "pair" or (config.method == "auto" and n == 2)
    if use_pair and n != 2:
        raise InputError(f"align method 'pair' takes exactly 2 images, got {n}")
    edges = pair_graph(n, "complete" if use_pair else config.graph)
    pairs = predict_pairs(model, imgs, edges, batch_size=config.batch_size, progress=progress)
    scene = align_pair(pairs, config) if use_pair else align_pairs(pairs, config, progress=progress)
    return scene_to_views_prediction(scene)
