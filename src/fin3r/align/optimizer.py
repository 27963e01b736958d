"""The confidence-weighted point-cloud optimiser of DUSt3R's global alignment.

Unknowns: per image ``n`` a depth map ``D_n (H, W)`` (stored as ``log D``), a camera-to-world
pose ``P_n`` (unit quaternion + translation) and a focal length ``f_n`` (principal point fixed);
per ordered pair ``e = (i, j)`` a similarity ``S_e = s_e [R_e | t_e]`` that places the pair's
prediction in the world. The loss compares each image's un-projected depth map
``X_n = P_n (D_n K_n^-1 [u, v, 1])`` with every pair prediction of that image::

    L = sum_e sum_px w_i |X_i - S_e pts_i| / (E H W)  +  sum_e sum_px w_j |X_j - S_e pts_j| / (E H W)

with ``w = log(conf)`` (``conf_transform``) and the Euclidean distance (``dist="l1"``; ``"l2"``:
squared). The pair scales are normalised so that their geometric mean is ``base_scale`` (fixes the
global scale). Parametrisation and optimiser follow the official code, so a run from the same
initialisation follows the same path: quaternions normalised in the forward pass, translations
stored as ``sign(t) log(1 + |t|)``, focal as ``focal_break * log f``, Adam (betas 0.9, 0.9) with a
cosine (or linear) learning-rate decay from ``lr`` to ``lr_min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fin3r.align.camera import default_principal_point
from fin3r.align.pairs import PairPredictions
from fin3r.errors import InputError
from fin3r.geometry import matrix_to_quaternion, quaternion_to_matrix

__all__ = ["OptimizerConfig", "PointCloudAligner", "run_optimizer", "signed_log1p", "signed_expm1"]


@dataclass
class OptimizerConfig:
    """Settings of the point-cloud optimiser (defaults: the official demo's).

    Attributes:
        niter: Adam iterations (the official demo: 300).
        lr: initial learning rate.
        lr_min: final learning rate.
        schedule: ``cosine`` or ``linear`` decay.
        conf_transform: pixel weight from the confidence: ``log``, ``sqrt``, ``m1`` (conf - 1), ``id``.
        dist: ``l1`` (Euclidean distance) or ``l2`` (squared distance).
        base_scale: geometric mean of the pair scales.
        focal_break: focal parametrised as ``focal_break * log f``.
        min_conf_thr: confidence above which a pixel is trusted (PnP during initialisation, masks).
        optimize_focal: optimise the focal lengths (else keep the initial ones).
        principal_point: ``(cx, cy)`` in pixels (default ``(W / 2, H / 2)``).
    """

    niter: int = 300
    lr: float = 0.01
    lr_min: float = 1e-6
    schedule: str = "cosine"
    conf_transform: str = "log"
    dist: str = "l1"
    base_scale: float = 0.5
    focal_break: float = 20.0
    min_conf_thr: float = 3.0
    optimize_focal: bool = True
    principal_point: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear"):
            raise InputError(f"align: schedule must be cosine or linear, got {self.schedule!r}")
        if self.conf_transform not in ("log", "sqrt", "m1", "id"):
            raise InputError(f"align: conf_transform must be log, sqrt, m1 or id, got {self.conf_transform!r}")
        if self.dist not in ("l1", "l2"):
            raise InputError(f"align: dist must be l1 or l2, got {self.dist!r}")
        if self.niter < 0 or not self.lr > 0 or not self.base_scale > 0:
            raise InputError("align: niter must be >= 0, lr and base_scale > 0")


def signed_log1p(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def signed_expm1(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def _conf_weight(conf: Tensor, mode: str) -> Tensor:
    if mode == "log":
        return conf.log()
    if mode == "sqrt":
        return conf.sqrt()
    if mode == "m1":
        return conf - 1
    return conf


def _poses_to_matrix(params: Tensor) -> Tensor:
    """``(M, 7+)`` ``[q (w, x, y, z), signed_log1p(t)]`` -> ``(M, 4, 4)`` rigid transforms."""
    top = torch.cat((quaternion_to_matrix(params[:, :4]), signed_expm1(params[:, 4:7])[..., None]), dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=params.dtype, device=params.device).expand(len(params), 1, 4)
    return torch.cat((top, bottom), dim=1)


def _matrix_to_pose_params(R: Tensor, t: Tensor) -> Tensor:
    return torch.cat((matrix_to_quaternion(R.double()).to(R.dtype), signed_log1p(t.reshape(3))))


class PointCloudAligner(nn.Module):
    """The optimiser's state for ``N`` images of one size ``(H, W)`` and ``E`` ordered pairs.

    Parameters (``nn.Parameter``): ``log_depth (N, H*W)``, ``im_pose (N, 7)``, ``im_logf (N, 1)``
    (``focal_break * log f``), ``pw_pose (E, 8)`` (pose + ``log s``). Until an initialisation sets
    them they hold the official random start (``randn`` poses, depth ``exp(randn/10 - 3)``, focal
    = ``max(H, W)``)."""

    def __init__(self, pairs: PairPredictions, config: OptimizerConfig | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config or OptimizerConfig()
        self.edges = list(pairs.edges)
        self.num_images = pairs.num_images
        H, W = pairs.image_size
        self.image_size = (H, W)
        E, N, HW = len(self.edges), self.num_images, H * W
        cfg = self.config
        self.register_buffer("pred_i", pairs.pts_i.float().reshape(E, HW, 3).clone())
        self.register_buffer("pred_j", pairs.pts_j.float().reshape(E, HW, 3).clone())
        self.register_buffer("conf_i", pairs.conf_i.float().reshape(E, HW).clone())
        self.register_buffer("conf_j", pairs.conf_j.float().reshape(E, HW).clone())
        self.register_buffer("weight_i", _conf_weight(self.conf_i, cfg.conf_transform))
        self.register_buffer("weight_j", _conf_weight(self.conf_j, cfg.conf_transform))
        self.register_buffer("ei", torch.tensor([i for i, _ in self.edges], dtype=torch.long))
        self.register_buffer("ej", torch.tensor([j for _, j in self.edges], dtype=torch.long))
        im_conf = torch.zeros(N, HW)
        for e, (i, j) in enumerate(self.edges):
            im_conf[i] = torch.maximum(im_conf[i], self.conf_i[e])
            im_conf[j] = torch.maximum(im_conf[j], self.conf_j[e])
        self.register_buffer("im_conf", im_conf)
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        self.register_buffer("grid", torch.stack((u, v), -1).reshape(HW, 2))
        pp = cfg.principal_point or default_principal_point(H, W)
        self.register_buffer("pp", torch.tensor([pp], dtype=torch.float32).repeat(N, 1))
        g = generator
        self.log_depth = nn.Parameter(torch.randn(N, HW, generator=g) / 10 - 3)
        self.im_pose = nn.Parameter(torch.randn(N, 7, generator=g))
        self.im_logf = nn.Parameter(torch.full((N, 1), cfg.focal_break * math.log(max(H, W))),
                                    requires_grad=cfg.optimize_focal)
        self.pw_pose = nn.Parameter(torch.randn(E, 8, generator=g))

    # --- the unknowns as geometry -------------------------------------------------------------
    def focals(self) -> Tensor:
        """``(N,)`` focal lengths in pixels."""
        return (self.im_logf[:, 0] / self.config.focal_break).exp()

    def intrinsics(self) -> Tensor:
        """``(N, 3, 3)`` pinhole intrinsics in pixels."""
        N = self.num_images
        K = torch.zeros(N, 3, 3, dtype=self.pp.dtype, device=self.pp.device)
        f = self.focals()
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, :2, 2] = self.pp
        K[:, 2, 2] = 1
        return K

    def cam2world(self) -> Tensor:
        """``(N, 4, 4)`` camera-to-world poses (OpenCV axes)."""
        return _poses_to_matrix(self.im_pose)

    def depth(self) -> Tensor:
        """``(N, H, W)`` planar depth."""
        return self.log_depth.exp().reshape(self.num_images, *self.image_size)

    def world_points(self) -> Tensor:
        """``(N, H*W, 3)`` every pixel un-projected with its depth, focal and pose."""
        d = self.log_depth.exp()[..., None]
        xy = (self.grid[None] - self.pp[:, None]) / self.focals()[:, None, None]
        cam = torch.cat((d * xy, d), dim=-1)
        P = self.cam2world()
        return cam @ P[:, :3, :3].transpose(1, 2) + P[:, None, :3, 3]

    def pair_scales(self) -> Tensor:
        """``(E,)`` pair scales, geometric mean ``base_scale``."""
        log_s = self.pw_pose[:, 7]
        return (log_s - log_s.mean() + math.log(self.config.base_scale)).exp()

    def pair_poses(self) -> Tensor:
        """``(E, 4, 4)`` the similarity ``s [R | t]`` of each pair (the scale on R and t)."""
        T = _poses_to_matrix(self.pw_pose)
        return torch.cat((T[:, :3] * self.pair_scales()[:, None, None], T[:, 3:]), dim=1)

    # --- setters used by the initialisation ----------------------------------------------------
    @torch.no_grad()
    def set_image(self, n: int, cam2world: Tensor, depth: Tensor, focal: float | None) -> None:
        """Set image ``n``'s pose ``(4, 4)``, depth ``(H, W)`` (non-positive -> 1) and focal."""
        self.im_pose[n] = _matrix_to_pose_params(cam2world[:3, :3].float(), cam2world[:3, 3].float())
        self.log_depth[n] = depth.float().reshape(-1).log().nan_to_num(nan=0.0, neginf=0.0)
        if focal is not None:
            self.im_logf[n, 0] = self.config.focal_break * math.log(focal)

    @torch.no_grad()
    def set_pair(self, e: int, s: float, R: Tensor, t: Tensor) -> None:
        """Set pair ``e``'s similarity ``x -> s R x + t`` (the raw scale, before normalisation)."""
        self.pw_pose[e, :7] = _matrix_to_pose_params(R.float(), t.float() / s)
        self.pw_pose[e, 7] = math.log(s)

    def scale_normaliser(self) -> float:
        """The factor the pair-scale normalisation applies: ``base_scale / geomean(raw scales)``."""
        log_s = self.pw_pose[:, 7].detach()
        return float((math.log(self.config.base_scale) - log_s.mean()).exp())

    # --- the loss ------------------------------------------------------------------------------
    def forward(self) -> Tensor:
        """The alignment loss (a scalar)."""
        X = self.world_points()
        S = self.pair_poses()
        R, t = S[:, :3, :3], S[:, None, :3, 3]
        ai = self.pred_i @ R.transpose(1, 2) + t
        aj = self.pred_j @ R.transpose(1, 2) + t
        if self.config.dist == "l1":
            di, dj = (X[self.ei] - ai).norm(dim=-1), (X[self.ej] - aj).norm(dim=-1)
        else:
            di, dj = (X[self.ei] - ai).square().sum(-1), (X[self.ej] - aj).square().sum(-1)
        area = self.pred_i.shape[0] * self.pred_i.shape[1]
        return (di * self.weight_i).sum() / area + (dj * self.weight_j).sum() / area


def _lr_at(t: float, cfg: OptimizerConfig) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(t * math.pi)) / 2
    return cfg.lr + (cfg.lr_min - cfg.lr) * t


def run_optimizer(aligner: PointCloudAligner, progress: bool = False) -> list[float]:
    """Minimise the loss with Adam for ``config.niter`` iterations; returns the loss per iteration
    (each measured before its step)."""
    from tqdm.auto import tqdm

    cfg = aligner.config
    params = [p for p in aligner.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9))
    losses = []
    with torch.enable_grad():
        for n in tqdm(range(cfg.niter), desc="align", unit="it", disable=not progress, leave=False):
            for group in opt.param_groups:
                group["lr"] = _lr_at(n / cfg.niter, cfg)
            opt.zero_grad()
            loss = aligner()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses
