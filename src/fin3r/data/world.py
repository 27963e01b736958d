"""The synthetic world: procedural scenes with exact geometry, rendered by vectorised ray casting.

fin3r's embedded data set and the ground truth of the integration tests and the CPU demo. A scene
is a handful of analytic primitives -- a room shell (indoor) or a finite ground disc under an
open sky (outdoor), oriented boxes (furniture, blocks, thin table legs, rails, fence posts),
spheres, vertical capped cylinders (thin poles, trunks, barrels) -- each with a procedural solid
texture (checker, stripes, smooth noise, plain). It is made for the things a sharp monocular
teacher sees and a blurry base model misses: thin structures, sharp depth edges, small objects,
and shading (Lambert, a point light with distance fall-off, optional cast shadows) that ties image
intensity to surface orientation.

Conventions: world frame z up, metres; cameras OpenCV (x right, y down, z forward),
``cam2world`` 4x4; intrinsics ``K`` in pixels with the centre of pixel (row i, col j) at
(u=j, v=i). Rays are cast through pixel centres with direction ``R K^-1 [u, v, 1]^T`` whose
camera-frame z is 1, so the hit parameter *is* the planar depth -- exact, no resampling.
Pixels that see the sky (outdoor) are invalid: ``depth = 0``, ``valid = False``.

Everything is deterministic from the scene seed (numpy ``default_rng``); rendering is pure torch
and batched over views (``render_views``), chunked over rays to bound memory.

Main API::

    scene = make_scene(seed)                                    # cached, deterministic
    K = intrinsics_from_fov(width, height, fov_x_deg=60.0)      # (3, 3)
    cam2world = sample_trajectory(scene, num_views, seed)       # (V, 4, 4), overlapping views
    out = render_views(scene, cam2world, K, height, width)      # dict of (V, ...) tensors
    out = render_view(scene, cam2world[0], K, height, width)    # dict of (H, W, ...) tensors
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Scene",
    "make_scene",
    "intrinsics_from_fov",
    "look_at",
    "sample_trajectory",
    "render_view",
    "render_views",
    "world_key",
    "render_from_key",
    "scene_seed_for",
    "save_world_image",
    "export_world_images",
    "read_world_key",
    "WorldMonoDataset",
    "WorldViewsDataset",
]

# Texture patterns (Scene.mat_pattern).
PLAIN, CHECKER, STRIPES, NOISE = 0, 1, 2, 3
_EPS = 1e-4


@dataclass
class Scene:
    """A procedural scene: analytic primitives with materials, lights and camera anchors.

    All arrays are float32 numpy (metres, world frame z up). ``*_mat`` index the material arrays.

    Attributes:
        seed: the seed it was made from (``make_scene(seed)`` rebuilds it exactly).
        kind: ``"indoor"`` (room shell) or ``"outdoor"`` (ground disc, open sky).
        shell_lo, shell_hi: ``(3,)`` room box corners (indoor) -- seen from the inside; the six
            faces use materials ``shell_mat (6,)`` ordered -x, +x, -y, +y, floor, ceiling.
        ground_radius: radius of the ground disc at z = 0 (outdoor), ``ground_mat``.
        box_center, box_half: ``(Nb, 3)``; ``box_yaw (Nb,)`` rotation about z; ``box_mat (Nb,)``.
        sphere_center ``(Ns, 3)``, sphere_radius ``(Ns,)``, ``sphere_mat``.
        cyl_base ``(Nc, 3)`` (centre of the bottom cap), cyl_radius, cyl_height ``(Nc,)``, ``cyl_mat``.
        mat_color_a, mat_color_b: ``(M, 3)`` albedos; mat_pattern ``(M,)`` (PLAIN/CHECKER/STRIPES/
            NOISE); mat_scale ``(M,)`` pattern period in metres; mat_dir ``(M, 3)`` stripe/noise
            direction; mat_phase ``(M,)``.
        light_pos ``(3,)`` point light, light_power (irradiance at 1 m), sun_dir ``(3,)`` (unit,
            towards the sun), sun_power, ambient.
        anchors ``(A, 3)``: camera cluster centres kept free of objects; targets ``(A, 3)``: the
            points they look at (the centre of an object 1.5-6 m away indoor, 2.5-12 m outdoor).
        baseline: the radius (m) within which ``sample_trajectory`` moves the cameras.
    """

    seed: int
    kind: str
    shell_lo: np.ndarray | None
    shell_hi: np.ndarray | None
    shell_mat: np.ndarray | None
    ground_radius: float
    ground_mat: int
    box_center: np.ndarray
    box_half: np.ndarray
    box_yaw: np.ndarray
    box_mat: np.ndarray
    sphere_center: np.ndarray
    sphere_radius: np.ndarray
    sphere_mat: np.ndarray
    cyl_base: np.ndarray
    cyl_radius: np.ndarray
    cyl_height: np.ndarray
    cyl_mat: np.ndarray
    mat_color_a: np.ndarray
    mat_color_b: np.ndarray
    mat_pattern: np.ndarray
    mat_scale: np.ndarray
    mat_dir: np.ndarray
    mat_phase: np.ndarray
    light_pos: np.ndarray
    light_power: float
    sun_dir: np.ndarray
    sun_power: float
    ambient: float
    sky_color: np.ndarray
    anchors: np.ndarray
    targets: np.ndarray
    baseline: float
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_objects(self) -> int:
        return len(self.box_mat) + len(self.sphere_mat) + len(self.cyl_mat)

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The primitive arrays as float32 torch tensors (cached per device)."""
        key = str(device)
        if key not in self._torch_cache:
            names = [
                "box_center", "box_half", "sphere_center", "sphere_radius", "cyl_base",
                "cyl_radius", "cyl_height", "mat_color_a", "mat_color_b", "mat_scale", "mat_dir",
                "mat_phase", "light_pos", "sun_dir", "sky_color",
            ]
            t = {n: torch.as_tensor(getattr(self, n), dtype=torch.float32, device=device) for n in names}
            c, s = np.cos(self.box_yaw), np.sin(self.box_yaw)
            rot = np.zeros((len(self.box_yaw), 3, 3), np.float32)  # local -> world
            rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
            t["box_rot"] = torch.as_tensor(rot, device=device)
            for n in ["box_mat", "sphere_mat", "cyl_mat", "mat_pattern"]:
                t[n] = torch.as_tensor(getattr(self, n), dtype=torch.long, device=device)
            if self.shell_lo is not None:
                t["shell_lo"] = torch.as_tensor(self.shell_lo, dtype=torch.float32, device=device)
                t["shell_hi"] = torch.as_tensor(self.shell_hi, dtype=torch.float32, device=device)
                t["shell_mat"] = torch.as_tensor(self.shell_mat, dtype=torch.long, device=device)
            self._torch_cache[key] = t
        return self._torch_cache[key]


# ----------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------


class _Builder:
    """Accumulates primitives and materials while a scene is generated."""

    def __init__(self, rng: np.random.Generator, keepout: list[tuple[np.ndarray, np.ndarray, float]]):
        self.rng = rng
        self.keepout = keepout  # capsules (a, b, radius) in the xy plane kept free for cameras
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []
        self.cyls: list[tuple] = []
        self.mats: list[tuple] = []

    def material(self, pattern: int | None = None, dark: bool = False) -> int:
        rng = self.rng
        if pattern is None:
            pattern = int(rng.choice([PLAIN, CHECKER, STRIPES, NOISE], p=[0.2, 0.3, 0.25, 0.25]))
        hue = rng.uniform(0, 1)
        base = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
        sat = rng.uniform(0.2, 0.8)
        val = rng.uniform(0.25, 0.6) if dark else rng.uniform(0.45, 0.95)
        color_a = val * ((1 - sat) + sat * base)
        color_b = color_a * rng.uniform(0.25, 0.7)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        scale = rng.uniform(0.05, 0.4)
        self.mats.append((color_a, color_b, pattern, scale, direction, rng.uniform(0, 2 * np.pi)))
        return len(self.mats) - 1

    def free(self, xy: np.ndarray, radius: float) -> bool:
        """Whether a footprint circle avoids every camera keep-out capsule."""
        for a, b, r in self.keepout:
            ab = b - a
            s = np.clip(np.dot(xy - a, ab) / max(np.dot(ab, ab), 1e-9), 0.0, 1.0)
            if np.linalg.norm(xy - (a + s * ab)) < r + radius:
                return False
        return True

    def box(self, center, half, yaw=0.0, mat=None):
        self.boxes.append((np.asarray(center, float), np.asarray(half, float), float(yaw),
                           self.material() if mat is None else mat))

    def sphere(self, center, radius, mat=None):
        self.spheres.append((np.asarray(center, float), float(radius), self.material() if mat is None else mat))

    def cyl(self, base, radius, height, mat=None):
        self.cyls.append((np.asarray(base, float), float(radius), float(height),
                          self.material() if mat is None else mat))

    def place(self, lo: np.ndarray, hi: np.ndarray, radius: float, tries: int = 30) -> np.ndarray | None:
        """A random free xy position in the rectangle [lo, hi] for a footprint of ``radius``:
        60% of the draws cluster around the centre (0, 0), 40% are uniform -- a busy middle with
        open space near the walls where the camera anchors are."""
        for _ in range(tries):
            if self.rng.uniform() < 0.6:
                xy = np.clip(self.rng.normal(scale=0.15 * (hi - lo)), lo, hi)
            else:
                xy = self.rng.uniform(lo, hi)
            if self.free(xy, radius):
                return xy
        return None

    # --- composite objects ---------------------------------------------------------------
    def table(self, xy, yaw, zbase=0.0):
        rng = self.rng
        w, d, h = rng.uniform(0.5, 1.4), rng.uniform(0.4, 0.9), rng.uniform(0.45, 1.0)
        leg = rng.uniform(0.02, 0.045)
        top = rng.uniform(0.025, 0.05)
        mat_top, mat_leg = self.material(), self.material(dark=True)
        c, s = math.cos(yaw), math.sin(yaw)
        self.box([xy[0], xy[1], zbase + h - top], [w / 2, d / 2, top], yaw, mat_top)
        for sx in (-1, 1):
            for sy in (-1, 1):
                lx, ly = sx * (w / 2 - leg * 1.5), sy * (d / 2 - leg * 1.5)
                p = [xy[0] + c * lx - s * ly, xy[1] + s * lx + c * ly, zbase + (h - 2 * top) / 2]
                self.box(p, [leg, leg, (h - 2 * top) / 2], yaw, mat_leg)
        return zbase + h

    def fence(self, a, b, height):
        rng = self.rng
        n = int(np.clip(np.linalg.norm(b - a) / rng.uniform(0.25, 0.6), 3, 14))
        post = rng.uniform(0.015, 0.04)
        mat_post, mat_rail = self.material(dark=True), self.material()
        for t in np.linspace(0, 1, n):
            p = a + t * (b - a)
            self.box([p[0], p[1], height / 2], [post, post, height / 2], 0.0, mat_post)
        mid, yaw, length = (a + b) / 2, math.atan2(*(b - a)[::-1]), np.linalg.norm(b - a)
        for z in (height * 0.35, height * 0.85):
            self.box([mid[0], mid[1], z], [length / 2, post * 0.8, post * 0.8], yaw, mat_rail)

    def build(self, **kw) -> Scene:
        def arr(items, i, shape):
            return np.array([it[i] for it in items], np.float32).reshape(shape)

        nb, ns, nc = len(self.boxes), len(self.spheres), len(self.cyls)
        mats = self.mats
        return Scene(
            box_center=arr(self.boxes, 0, (nb, 3)), box_half=arr(self.boxes, 1, (nb, 3)),
            box_yaw=arr(self.boxes, 2, (nb,)), box_mat=np.array([b[3] for b in self.boxes], np.int64),
            sphere_center=arr(self.spheres, 0, (ns, 3)), sphere_radius=arr(self.spheres, 1, (ns,)),
            sphere_mat=np.array([s[2] for s in self.spheres], np.int64),
            cyl_base=arr(self.cyls, 0, (nc, 3)), cyl_radius=arr(self.cyls, 1, (nc,)),
            cyl_height=arr(self.cyls, 2, (nc,)), cyl_mat=np.array([c[3] for c in self.cyls], np.int64),
            mat_color_a=arr(mats, 0, (-1, 3)), mat_color_b=arr(mats, 1, (-1, 3)),
            mat_pattern=np.array([m[2] for m in mats], np.int64), mat_scale=arr(mats, 3, (-1,)),
            mat_dir=arr(mats, 4, (-1, 3)), mat_phase=arr(mats, 5, (-1,)),
            **kw,
        )


def _anchors(rng, lo_xy, hi_xy, target_z, cam_z, n, min_dist, max_dist, center):
    """``n`` camera anchors in the xy rectangle, each looking at a target near ``center``."""
    anchors, targets = [], []
    for _ in range(n):
        for _ in range(50):
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(min_dist, max_dist)
            xy = center + dist * np.array([math.cos(ang), math.sin(ang)])
            if np.all(xy > lo_xy) and np.all(xy < hi_xy):
                break
        xy = np.clip(xy, lo_xy, hi_xy)
        tgt = center + rng.normal(scale=0.3, size=2)
        anchors.append([xy[0], xy[1], rng.uniform(*cam_z)])
        targets.append([tgt[0], tgt[1], rng.uniform(*target_z)])
    return np.array(anchors, np.float64), np.array(targets, np.float64)


def _aim_at_objects(rng, b: _Builder, anchors, targets, dist_range, z_range):
    """Point each anchor at a random object (its centre, height clipped to ``z_range``) whose
    horizontal distance is within ``dist_range``, so every view has something in the middle;
    anchors with no such object keep their target."""
    centres = np.array([bx[0] for bx in b.boxes] + [sp[0] for sp in b.spheres]
                       + [cy[0] + np.array([0, 0, cy[2] / 2]) for cy in b.cyls]).reshape(-1, 3)
    out = targets.copy()
    for k, a in enumerate(anchors):
        dist = np.linalg.norm(centres[:, :2] - a[:2], axis=1)
        ok = np.nonzero((dist >= dist_range[0]) & (dist <= dist_range[1]))[0]
        if len(ok):
            c = centres[rng.choice(ok)]
            out[k] = [c[0], c[1], np.clip(c[2], *z_range)]
    return out


def _make_indoor(seed: int, rng: np.random.Generator) -> Scene:
    size = np.array([rng.uniform(4.0, 8.0), rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.4)])
    lo, hi = np.array([-size[0] / 2, -size[1] / 2, 0.0]), np.array([size[0] / 2, size[1] / 2, size[2]])
    margin = 0.5
    lo_xy, hi_xy = lo[:2] + margin, hi[:2] - margin
    baseline = rng.uniform(0.15, 0.4)
    half_min = float(min(size[:2]) / 2)
    anchors, targets = _anchors(rng, lo_xy, hi_xy, (0.4, 1.0), (1.1, 1.8), int(rng.integers(2, 4)),
                                0.55 * half_min, 0.95 * half_min, np.zeros(2))
    b = _Builder(rng, [(a[:2], a[:2], baseline + 0.7) for a in anchors])
    shell_mat = np.array([b.material(rng.choice([PLAIN, STRIPES, NOISE, CHECKER])) for _ in range(4)]
                         + [b.material(rng.choice([CHECKER, NOISE, STRIPES])), b.material(PLAIN)])
    inner_lo, inner_hi = lo[:2] + 0.3, hi[:2] - 0.3
    # furniture blocks, some with things on top
    for _ in range(int(rng.integers(3, 8))):
        half = np.array([rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.75)])
        xy = b.place(inner_lo, inner_hi, float(np.linalg.norm(half[:2])))
        if xy is None:
            continue
        yaw = rng.uniform(0, np.pi)
        b.box([xy[0], xy[1], half[2]], half, yaw)
        top = 2 * half[2]
        r = rng.uniform()
        if r < 0.35:  # a small box on top
            h2 = half * rng.uniform(0.2, 0.5, size=3)
            b.box([xy[0], xy[1], top + h2[2]], h2, rng.uniform(0, np.pi))
        elif r < 0.65:  # a ball on top
            rad = rng.uniform(0.05, 0.2)
            b.sphere([xy[0], xy[1], top + rad], rad)
        elif r < 0.8:  # a thin rod standing on it
            b.cyl([xy[0], xy[1], top], rng.uniform(0.008, 0.025), rng.uniform(0.2, 0.6))
    # tables (thin legs, thin tops)
    for _ in range(int(rng.integers(0, 3))):
        xy = b.place(inner_lo, inner_hi, 0.8)
        if xy is None:
            continue
        z = b.table(xy, rng.uniform(0, np.pi))
        if rng.uniform() < 0.6:
            rad = rng.uniform(0.04, 0.12)
            b.sphere([xy[0] + rng.uniform(-0.15, 0.15), xy[1] + rng.uniform(-0.1, 0.1), z + rad], rad)
    # balls on the floor
    for _ in range(int(rng.integers(1, 4))):
        rad = rng.uniform(0.08, 0.4)
        xy = b.place(inner_lo, inner_hi, rad)
        if xy is not None:
            b.sphere([xy[0], xy[1], rad], rad)
    # thin poles floor-to-ceiling or free-standing, and barrels
    for _ in range(int(rng.integers(1, 5))):
        rad = rng.uniform(0.01, 0.05)
        xy = b.place(inner_lo, inner_hi, rad + 0.05)
        if xy is not None:
            height = size[2] if rng.uniform() < 0.5 else rng.uniform(0.8, 2.0)
            b.cyl([xy[0], xy[1], 0.0], rad, height)
    for _ in range(int(rng.integers(0, 3))):
        rad = rng.uniform(0.12, 0.35)
        xy = b.place(inner_lo, inner_hi, rad)
        if xy is not None:
            b.cyl([xy[0], xy[1], 0.0], rad, rng.uniform(0.3, 1.1))
    # a horizontal rail / shelf plank across part of the room
    for _ in range(int(rng.integers(0, 3))):
        xy = b.place(inner_lo, inner_hi, 0.3)
        if xy is not None:
            length = rng.uniform(0.6, 2.0)
            thick = rng.uniform(0.01, 0.03)
            b.box([xy[0], xy[1], rng.uniform(0.6, 2.0)], [length / 2, thick, thick], rng.uniform(0, np.pi))
    targets = _aim_at_objects(rng, b, anchors, targets, (1.5, 6.0), (0.2, 1.4))
    light = np.array([rng.uniform(lo[0] + 0.5, hi[0] - 0.5), rng.uniform(lo[1] + 0.5, hi[1] - 0.5), hi[2] - 0.2])
    sun = rng.normal(size=3) + np.array([0, 0, 2.0])
    return b.build(
        seed=seed, kind="indoor", shell_lo=lo.astype(np.float32), shell_hi=hi.astype(np.float32),
        shell_mat=shell_mat.astype(np.int64), ground_radius=0.0, ground_mat=-1,
        light_pos=light.astype(np.float32), light_power=float(rng.uniform(2.0, 5.0)),
        sun_dir=(sun / np.linalg.norm(sun)).astype(np.float32), sun_power=float(rng.uniform(0.2, 0.45)),
        ambient=float(rng.uniform(0.12, 0.25)), sky_color=np.zeros(3, np.float32),
        anchors=anchors.astype(np.float32), targets=targets.astype(np.float32), baseline=float(baseline),
    )


def _make_outdoor(seed: int, rng: np.random.Generator) -> Scene:
    baseline = rng.uniform(0.3, 0.8)
    radius = 25.0
    anchors, targets = _anchors(rng, np.full(2, -12.0), np.full(2, 12.0), (0.5, 1.5), (1.2, 2.0),
                                int(rng.integers(2, 4)), 4.0, 8.0, np.zeros(2))
    b = _Builder(rng, [(a[:2], a[:2], baseline + 1.2) for a in anchors])
    ground = b.material(rng.choice([NOISE, CHECKER, STRIPES]))
    span = np.full(2, 14.0)
    for _ in range(int(rng.integers(3, 8))):  # blocks / buildings
        half = np.array([rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5), rng.uniform(0.5, 3.0)])
        xy = b.place(-span, span, float(np.linalg.norm(half[:2])))
        if xy is not None:
            b.box([xy[0], xy[1], half[2]], half, rng.uniform(0, np.pi))
    for _ in range(int(rng.integers(1, 5))):  # trees: trunk + canopy
        xy = b.place(-span, span, 1.0)
        if xy is not None:
            h, r = rng.uniform(1.0, 2.5), rng.uniform(0.06, 0.2)
            b.cyl([xy[0], xy[1], 0.0], r, h, b.material(NOISE, dark=True))
            cr = rng.uniform(0.5, 1.3)
            b.sphere([xy[0], xy[1], h + 0.7 * cr], cr, b.material(NOISE))
    for _ in range(int(rng.integers(1, 5))):  # lamp posts / sign posts (thin)
        xy = b.place(-span, span, 0.2)
        if xy is not None:
            h = rng.uniform(2.0, 4.0)
            mat = b.material(dark=True)
            b.cyl([xy[0], xy[1], 0.0], rng.uniform(0.02, 0.06), h, mat)
            b.box([xy[0], xy[1], h + 0.08], [rng.uniform(0.1, 0.3), 0.06, 0.08], rng.uniform(0, np.pi), mat)
    for _ in range(int(rng.integers(0, 3))):  # fences
        xy = b.place(-span * 0.7, span * 0.7, 2.0)
        if xy is not None:
            ang = rng.uniform(0, np.pi)
            d = rng.uniform(1.5, 4.0) * np.array([math.cos(ang), math.sin(ang)])
            if b.free(xy - d / 2, 0.1) and b.free(xy + d / 2, 0.1):
                b.fence(xy - d / 2, xy + d / 2, rng.uniform(0.6, 1.4))
    for _ in range(int(rng.integers(2, 7))):  # rocks, crates, balls
        rad = rng.uniform(0.1, 0.6)
        xy = b.place(-span, span, rad)
        if xy is None:
            continue
        if rng.uniform() < 0.5:
            b.sphere([xy[0], xy[1], rad * rng.uniform(0.4, 1.0)], rad)
        else:
            b.box([xy[0], xy[1], rad], [rad, rad, rad], rng.uniform(0, np.pi))
    targets = _aim_at_objects(rng, b, anchors, targets, (2.5, 12.0), (0.3, 2.0))
    sun = np.array([rng.normal(), rng.normal(), rng.uniform(0.5, 2.0)])
    light = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(3, 6)])
    sky = np.array([rng.uniform(0.45, 0.65), rng.uniform(0.6, 0.8), rng.uniform(0.85, 1.0)])
    return b.build(
        seed=seed, kind="outdoor", shell_lo=None, shell_hi=None, shell_mat=None,
        ground_radius=radius, ground_mat=ground,
        light_pos=light.astype(np.float32), light_power=float(rng.uniform(1.0, 4.0)),
        sun_dir=(sun / np.linalg.norm(sun)).astype(np.float32), sun_power=float(rng.uniform(0.55, 0.8)),
        ambient=float(rng.uniform(0.15, 0.3)), sky_color=sky.astype(np.float32),
        anchors=anchors.astype(np.float32), targets=targets.astype(np.float32), baseline=float(baseline),
    )


@functools.lru_cache(maxsize=4096)
def make_scene(seed: int, kind: str | None = None) -> Scene:
    """The procedural scene of ``seed`` (cached; deterministic across runs and platforms).

    Args:
        seed: any non-negative int.
        kind: ``"indoor"``, ``"outdoor"`` or None (indoor with probability 0.7, from the seed).
    """
    rng = np.random.default_rng(int(seed))
    chosen = "indoor" if rng.uniform() < 0.7 else "outdoor"
    kind = kind or chosen
    if kind == "indoor":
        return _make_indoor(int(seed), rng)
    if kind == "outdoor":
        return _make_outdoor(int(seed), rng)
    raise ValueError(f"unknown scene kind {kind!r} (indoor|outdoor)")


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float = 60.0) -> Tensor:
    """Pinhole ``K (3, 3)`` with square pixels, the principal point at the image centre
    (``cx = (W - 1) / 2`` under the pixel-centre convention) and horizontal FoV ``fov_x_deg``."""
    f = (width / 2) / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None, roll_deg: float | Tensor = 0.0) -> Tensor:
    """OpenCV ``cam2world (..., 4, 4)`` at ``eye (..., 3)`` looking at ``target (..., 3)``; image
    "up" (-y) towards world ``up`` (default +z), then rolled by ``roll_deg`` about the optical axis."""
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up, dtype=torch.float32)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up.expand_as(z)), dim=-1)
    y = torch.linalg.cross(z, x)
    roll = torch.deg2rad(torch.as_tensor(roll_deg, dtype=torch.float32))[..., None]
    x, y = torch.cos(roll) * x + torch.sin(roll) * y, -torch.sin(roll) * x + torch.cos(roll) * y
    T = torch.zeros(eye.shape[:-1] + (4, 4))
    T[..., :3, 0], T[..., :3, 1], T[..., :3, 2], T[..., :3, 3], T[..., 3, 3] = x, y, z, eye, 1.0
    return T


def sample_trajectory(
    scene: Scene,
    num_views: int,
    seed: int = 0,
    anchor: int | None = None,
    baseline: float | None = None,
    mode: str = "cluster",
) -> Tensor:
    """``num_views`` overlapping OpenCV ``cam2world (V, 4, 4)`` around one of the scene's anchors.

    Every camera looks at the anchor's target (jittered by 0.15 baseline-units) with a small roll
    (|roll| <= 4 deg); positions stay within ``baseline`` (default: the scene's, 0.15-0.4 m
    indoor, 0.3-0.8 m outdoor) of the anchor, in the object-free keep-out zone:
    ``mode="cluster"`` jitters positions uniformly in a ball, ``mode="video"`` moves along a short
    smooth arc (ordered, like consecutive video frames). Deterministic from (scene, seed, anchor).
    """
    rng = np.random.default_rng([scene.seed, int(seed), 7919])
    a = int(rng.integers(len(scene.anchors))) if anchor is None else int(anchor) % len(scene.anchors)
    base = scene.baseline if baseline is None else float(baseline)
    eye0, target0 = scene.anchors[a].astype(np.float64), scene.targets[a].astype(np.float64)
    if mode == "cluster":
        d = rng.normal(size=(num_views, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        offs = d * base * rng.uniform(0, 1, size=(num_views, 1)) ** (1 / 3)
        offs[:, 2] *= 0.5
    elif mode == "video":
        d = rng.normal(size=3)
        d[2] *= 0.3
        d /= np.linalg.norm(d)
        s = np.linspace(-1, 1, num_views)[:, None]
        offs = base * (s * d + 0.2 * (s**2) * np.array([0, 0, 1.0]))
    else:
        raise ValueError(f"unknown trajectory mode {mode!r} (cluster|video)")
    eyes = eye0 + offs
    targets = target0 + rng.normal(scale=0.15 * base, size=(num_views, 3))
    roll = rng.uniform(-4, 4, size=num_views)
    return look_at(torch.as_tensor(eyes, dtype=torch.float32), torch.as_tensor(targets, dtype=torch.float32),
                   roll_deg=torch.as_tensor(roll, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------------------
#
# Vectors are stored component-major, ``(3, P)`` (x, y, z rows): on CPU torch, arithmetic on
# contiguous 1-D rows is ~20x faster than reductions over a trailing axis of size 3.
# Primary rays: every view is a regular pixel grid, so each object is tested only on the pixel
# rectangle its bounding box projects to (thin poles and small balls cost a few hundred rays, not
# the whole image); the room shell / ground are tested on every pixel. Shadow rays: each object
# is tested only on the rays whose segment to the light passes within its bounding sphere.


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _inf_like(x: Tensor) -> Tensor:
    return torch.full_like(x, math.inf)


def _safe(x: Tensor) -> Tensor:
    return torch.where(x.abs() < 1e-12, torch.full_like(x, 1e-12), x)


def _box_t(o, d, prim) -> Tensor:
    """Entry distance of rays ``o + t d`` (``o``, ``d`` (3, P) or 3 floats) into an oriented
    box, ``inf`` where missed or behind the origin."""
    (cx, cy, cz), (hx, hy, hz), (c, s) = prim["center"], prim["half"], prim["cos_sin"]
    ox, oy, oz = o[0] - cx, o[1] - cy, o[2] - cz
    olx, oly = c * ox + s * oy, -s * ox + c * oy  # world -> local (rotation about z)
    dlx, dly = _safe(c * d[0] + s * d[1]), _safe(-s * d[0] + c * d[1])
    dlz = _safe(d[2])
    tmin = tmax = None
    for ol, dl, h in ((olx, dlx, hx), (oly, dly, hy), (oz, dlz, hz)):
        t1, t2 = (-h - ol) / dl, (h - ol) / dl
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tmin = lo if tmin is None else torch.maximum(tmin, lo)
        tmax = hi if tmax is None else torch.minimum(tmax, hi)
    return torch.where((tmax >= tmin) & (tmin > _EPS), tmin, _inf_like(tmin))


def _sphere_t(o, d, prim) -> Tensor:
    c, r = prim["center"], prim["radius"]
    oc = (o[0] - c[0], o[1] - c[1], o[2] - c[2])
    a = _dot(d, d)
    b = _dot(oc, d)
    cc = _dot(oc, oc) - r * r
    disc = b * b - a * cc
    t = (-b - torch.sqrt(disc.clamp_min(0))) / a
    return torch.where((disc >= 0) & (t > _EPS), t, _inf_like(t))


def _cylinder_t(o, d, prim) -> Tensor:
    """Vertical capped cylinder (axis +z from its base centre)."""
    (bx, by, bz), r, h = prim["base"], prim["radius"], prim["height"]
    ox, oy, oz = o[0] - bx, o[1] - by, o[2] - bz
    dx, dy, dz = d[0], d[1], d[2]
    a = (dx * dx + dy * dy).clamp_min(1e-12)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    ts = (-b - torch.sqrt(disc.clamp_min(0))) / a
    zs = oz + ts * dz
    t = torch.where((disc >= 0) & (ts > _EPS) & (zs >= 0) & (zs <= h), ts, _inf_like(ts))
    dz = _safe(dz)
    for zc in (0.0, h):
        tc = (zc - oz) / dz
        xc, yc = ox + tc * dx, oy + tc * dy
        t = torch.minimum(t, torch.where((tc > _EPS) & (xc * xc + yc * yc <= r * r), tc, _inf_like(tc)))
    return t


_INTERSECT = {"box": _box_t, "sphere": _sphere_t, "cyl": _cylinder_t}
_KIND_CODE = {"box": 2, "sphere": 3, "cyl": 4}


def _primitives(scene: Scene) -> list[dict]:
    """Per object (cached on the scene): kind, index, parameters as floats, the 8 corners of a
    bounding box ``(8, 3)`` and a bounding sphere (centre, radius)."""
    if "prims" in scene._torch_cache:
        return scene._torch_cache["prims"]
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    prims = []
    for i in range(len(scene.box_mat)):
        c, h, yaw = scene.box_center[i].astype(np.float64), scene.box_half[i].astype(np.float64), float(scene.box_yaw[i])
        cs, sn = math.cos(yaw), math.sin(yaw)
        rot = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1.0]])
        prims.append(dict(kind="box", index=i, center=tuple(c), half=tuple(h), cos_sin=(cs, sn),
                          corners=c + (signs * h) @ rot.T, bcenter=c, bradius=float(np.linalg.norm(h))))
    for i in range(len(scene.sphere_mat)):
        c, r = scene.sphere_center[i].astype(np.float64), float(scene.sphere_radius[i])
        prims.append(dict(kind="sphere", index=i, center=tuple(c), radius=r, corners=c + signs * r,
                          bcenter=c, bradius=r))
    for i in range(len(scene.cyl_mat)):
        b, r, h = scene.cyl_base[i].astype(np.float64), float(scene.cyl_radius[i]), float(scene.cyl_height[i])
        c, half = b + np.array([0, 0, h / 2]), np.array([r, r, h / 2])
        prims.append(dict(kind="cyl", index=i, base=tuple(b), radius=r, height=h, corners=c + signs * half,
                          bcenter=c, bradius=float(np.linalg.norm(half))))
    scene._torch_cache["prims"] = prims
    return prims


def _screen_rect(corners: np.ndarray, w2c: np.ndarray, K: np.ndarray, height: int, width: int):
    """Pixel rectangle (i0, i1, j0, j1), end-exclusive, covering the projection of the convex
    hull of ``corners (8, 3)``; the whole image if a corner is behind the camera; None if off
    screen."""
    pc = corners @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    if (z <= 1e-3).any():
        return None if (z <= 1e-3).all() else (0, height, 0, width)
    uvw = pc @ K.T
    u, v = uvw[:, 0] / z, uvw[:, 1] / z
    j0, j1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.ceil(u.max())) + 2, width)
    i0, i1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.ceil(v.max())) + 2, height)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _normals(scene: Scene, S: dict, p: Tensor, kind: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """World normals ``(P, 3)`` and material ids ``(P,)`` at hit points ``p (P, 3)`` given the
    winning object per ray: kind 0 shell, 1 ground, 2 box, 3 sphere, 4 cylinder, -1 nothing."""
    P = p.shape[0]
    n = torch.zeros(P, 3)
    mat = torch.full((P,), -1, dtype=torch.long)
    sel = kind == 0
    if sel.any():
        q = p[sel]
        dist = torch.cat([q - S["shell_lo"], S["shell_hi"] - q], dim=-1).abs()  # -x,-y,-z,+x,+y,+z
        face6 = dist.argmin(dim=-1)
        axis, upper = face6 % 3, face6 // 3
        nn_ = torch.zeros_like(q)
        nn_[torch.arange(len(q)), axis] = torch.where(upper == 1, -1.0, 1.0)
        n[sel] = nn_
        mat[sel] = S["shell_mat"][axis * 2 + upper]
    sel = kind == 1
    if sel.any():
        n[sel, 2] = 1.0
        mat[sel] = scene.ground_mat
    sel = kind == 2
    if sel.any():
        i = idx[sel]
        R = S["box_rot"][i]
        pl = torch.einsum("qji,qj->qi", R, p[sel] - S["box_center"][i])
        axis = (pl.abs() / S["box_half"][i]).argmax(dim=-1)
        ar = torch.arange(len(i))
        n[sel] = R[ar, :, axis] * torch.sign(pl[ar, axis])[:, None]
        mat[sel] = S["box_mat"][i]
    sel = kind == 3
    if sel.any():
        i = idx[sel]
        n[sel] = torch.nn.functional.normalize(p[sel] - S["sphere_center"][i], dim=-1)
        mat[sel] = S["sphere_mat"][i]
    sel = kind == 4
    if sel.any():
        i = idx[sel]
        q = p[sel] - S["cyl_base"][i]
        radial = q[:, :2].norm(dim=-1)
        r, h = S["cyl_radius"][i], S["cyl_height"][i]
        to_side = (radial - r).abs()
        to_cap = torch.minimum(q[:, 2].abs(), (q[:, 2] - h).abs())
        n_side = torch.nn.functional.pad(q[:, :2] / radial.clamp_min(1e-9)[:, None], (0, 1))
        n_cap = torch.zeros_like(q)
        n_cap[:, 2] = torch.where(q[:, 2] > h / 2, 1.0, -1.0)
        n[sel] = torch.where((to_side <= to_cap)[:, None], n_side, n_cap)
        mat[sel] = S["cyl_mat"][i]
    return n, mat


def _texture(p: Tensor, mat: Tensor, S: dict) -> Tensor:
    """Albedo ``(3, P)`` of world points ``p (3, P)`` with material ids ``mat (P,)``."""
    scale = S["mat_scale"][mat]
    pattern = S["mat_pattern"][mat]
    direction, phase = S["mat_dir"][mat].T, S["mat_phase"][mat]
    q = p / scale
    fl = torch.floor(q + 1e-4)
    checker = (fl[0] + fl[1] + fl[2]).remainder(2.0)
    proj = _dot(q, direction)
    stripes = (torch.sin(2 * math.pi * proj + phase) > 0).float()
    noise = 0.5 + (torch.sin(1.7 * q[0] + phase) * torch.sin(1.3 * q[1] - 0.7 * phase)
                   * torch.sin(1.1 * q[2] + 2 * phase) * 0.6
                   + 0.25 * torch.sin(5.3 * proj + phase) + 0.15 * torch.sin(11.7 * (q[0] - q[2])))
    w = torch.where(pattern == CHECKER, checker,
                    torch.where(pattern == STRIPES, stripes,
                                torch.where(pattern == NOISE, noise.clamp(0, 1), torch.zeros_like(proj))))
    return S["mat_color_a"][mat].T * (1 - w) + S["mat_color_b"][mat].T * w


def _shadowed(scene: Scene, p: Tensor, to_light: Tensor) -> Tensor:
    """Whether the segments ``p -> p + to_light`` (``(3, Q)``) are blocked by an object."""
    occ = torch.zeros(p.shape[1], dtype=torch.bool)
    vv = _dot(to_light, to_light)
    for prim in _primitives(scene):
        c, r = prim["bcenter"], prim["bradius"]
        w = (c[0] - p[0], c[1] - p[1], c[2] - p[2])
        s = (_dot(w, to_light) / vv).clamp(0, 1)
        e = (w[0] - s * to_light[0], w[1] - s * to_light[1], w[2] - s * to_light[2])
        cand = ((_dot(e, e) <= r * r) & ~occ).nonzero()[:, 0]
        if len(cand) == 0:
            continue
        t = _INTERSECT[prim["kind"]](p[:, cand], to_light[:, cand], prim)
        occ[cand[t < 1.0]] = True
    return occ


def _render_one(scene: Scene, cam2world: Tensor, K: Tensor, height: int, width: int, shadows: bool):
    S = scene.tensors()
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                          torch.arange(width, dtype=torch.float32), indexing="ij")
    Kinv = torch.linalg.inv(K.double()).float()
    xc = Kinv[0, 0] * u + Kinv[0, 1] * v + Kinv[0, 2]
    yc = Kinv[1, 0] * u + Kinv[1, 1] * v + Kinv[1, 2]
    zc = Kinv[2, 0] * u + Kinv[2, 1] * v + Kinv[2, 2]
    xc, yc = xc / zc, yc / zc  # camera z == 1: the hit distance is the planar depth
    R, o = cam2world[:3, :3], cam2world[:3, 3]
    d = torch.stack([R[i, 0] * xc + R[i, 1] * yc + R[i, 2] for i in range(3)])  # (3, H, W)
    o_f = [float(x) for x in o]
    t = torch.full((height, width), math.inf)
    kind = torch.full((height, width), -1, dtype=torch.long)
    idx = torch.zeros((height, width), dtype=torch.long)
    if scene.shell_lo is not None:
        t_exit = None
        for a in range(3):
            da = _safe(d[a])
            ta = torch.maximum((float(scene.shell_lo[a]) - o_f[a]) / da, (float(scene.shell_hi[a]) - o_f[a]) / da)
            t_exit = ta if t_exit is None else torch.minimum(t_exit, ta)
        t = torch.where(t_exit > _EPS, t_exit, t)
        kind[torch.isfinite(t)] = 0
    if scene.ground_mat >= 0:
        dz = d[2]
        tg = -o_f[2] / torch.where(dz.abs() < 1e-12, torch.full_like(dz, -1e-12), dz)
        tgc = tg.clamp(0, 1e6)
        gx, gy = o_f[0] + tgc * d[0], o_f[1] + tgc * d[1]
        ok = (tg > _EPS) & (dz < 0) & (gx * gx + gy * gy <= scene.ground_radius**2) & (tg < t)
        t = torch.where(ok, tg, t)
        kind[ok] = 1
    w2c = np.linalg.inv(cam2world.double().numpy())
    K_np = K.double().numpy()
    for prim in _primitives(scene):
        rect = _screen_rect(prim["corners"], w2c, K_np, height, width)
        if rect is None:
            continue
        i0, i1, j0, j1 = rect
        tk = _INTERSECT[prim["kind"]](o_f, d[:, i0:i1, j0:j1], prim)
        tsub = t[i0:i1, j0:j1]
        closer = tk < tsub
        if closer.any():
            t[i0:i1, j0:j1] = torch.where(closer, tk, tsub)
            kind[i0:i1, j0:j1][closer] = _KIND_CODE[prim["kind"]]
            idx[i0:i1, j0:j1][closer] = prim["index"]
    hit = torch.isfinite(t).reshape(-1)
    d = d.reshape(3, -1)
    t0 = torch.where(hit, t.reshape(-1), torch.zeros(1))
    p = o[:, None] + t0 * d  # (3, P)
    n, mat = _normals(scene, S, p.T, kind.reshape(-1), idx.reshape(-1))
    n = n.T.contiguous()
    n = torch.where(_dot(n, d) > 0, -n, n)  # face the camera
    albedo = _texture(p, mat.clamp_min(0), S)
    sun = _dot(n, S["sun_dir"]).clamp_min(0) * scene.sun_power
    to_light = S["light_pos"][:, None] - p
    dist2 = _dot(to_light, to_light).clamp_min(1e-6)
    lam = _dot(n, to_light).clamp_min(0) / torch.sqrt(dist2)
    point = lam * scene.light_power / (1.0 + dist2)
    if shadows:
        lit = (hit & (lam > 0)).nonzero()[:, 0]
        if len(lit):
            occ = _shadowed(scene, p[:, lit] + n[:, lit] * 1e-3, to_light[:, lit])
            point[lit[occ]] *= 0.15
    rgb = (albedo * (scene.ambient + sun + point)).clamp(0, 1) ** (1 / 1.4)
    elev = (d[2] / torch.sqrt(_dot(d, d)))[None]
    sky = (S["sky_color"][:, None] * (0.75 + 0.25 * elev) + 0.25 * (1 - elev.abs())).clamp(0, 1)
    rgb = torch.where(hit, rgb, sky)
    n_cam = torch.where(hit, R.T @ n, torch.zeros(1))
    return (
        rgb.reshape(3, height, width).permute(1, 2, 0),
        t0.reshape(height, width),
        hit.reshape(height, width),
        n_cam.reshape(3, height, width).permute(1, 2, 0),
        torch.where(hit, mat, torch.full_like(mat, -1)).reshape(height, width),
    )


def render_views(
    scene: Scene,
    cam2world: Tensor,
    K: Tensor,
    height: int,
    width: int,
    shadows: bool = True,
) -> dict[str, Tensor]:
    """Render ``V`` views of ``scene`` exactly (CPU float32 torch).

    Args:
        cam2world: ``(V, 4, 4)`` OpenCV camera-to-world poses (or ``(4, 4)``).
        K: ``(V, 3, 3)`` or ``(3, 3)`` intrinsics in pixels for an image of ``height x width``.
        shadows: cast shadows of the point light (costs about 1.3-1.6x).

    Returns:
        dict of tensors: ``img (V, H, W, 3)`` float32 in [0, 1]; ``depth (V, H, W)`` planar z in
        metres, 0 where invalid (sky); ``valid (V, H, W)`` bool; ``normals (V, H, W, 3)`` unit
        normals in the camera frame facing the camera (0 where invalid); ``object_id (V, H, W)``
        int64 material id (-1 sky); ``K (V, 3, 3)``; ``cam2world (V, 4, 4)``.
    """
    cam2world = torch.as_tensor(cam2world, dtype=torch.float32)
    if cam2world.ndim == 2:
        cam2world = cam2world[None]
    V = cam2world.shape[0]
    K = torch.as_tensor(K, dtype=torch.float32)
    K = K.expand(V, 3, 3) if K.ndim == 2 else K
    outs = [_render_one(scene, cam2world[i], K[i], int(height), int(width), shadows) for i in range(V)]
    img, depth, valid, normals, obj = (torch.stack(x).contiguous() for x in zip(*outs))
    return {"img": img, "depth": depth, "valid": valid, "normals": normals, "object_id": obj,
            "K": K.clone(), "cam2world": cam2world.clone()}



def render_view(scene: Scene, cam2world: Tensor, K: Tensor, height: int, width: int,
                shadows: bool = True) -> dict[str, Tensor]:
    """One view: ``render_views`` without the leading V axis (``img (H, W, 3)``, ``depth (H, W)``,
    ``valid (H, W)``, ``normals (H, W, 3)``, ``object_id (H, W)``, ``K (3, 3)``, ``cam2world (4, 4)``)."""
    out = render_views(scene, torch.as_tensor(cam2world, dtype=torch.float32)[None],
                       torch.as_tensor(K, dtype=torch.float32)[None], height, width, shadows)
    return {k: v[0] for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Keys (re-render a view exactly from a string; the oracle teacher uses these)
# ----------------------------------------------------------------------------------------------


def world_key(scene_seed: int, cam2world: Tensor, K: Tensor, height: int, width: int) -> str:
    """A compact JSON string that identifies one rendered view (``render_from_key`` inverts it)."""
    return json.dumps({
        "scene_seed": int(scene_seed),
        "cam2world": [round(float(x), 7) for x in torch.as_tensor(cam2world).reshape(-1)[:12]],
        "K": [round(float(x), 6) for x in torch.as_tensor(K).reshape(-1)[:6]],
        "height": int(height), "width": int(width),
    }, separators=(",", ":"))


#: the largest image side a world key may ask for (a guard against absurd allocations)
MAX_WORLD_KEY_SIDE = 4096


def parse_world_key(key: str) -> dict:
    """A ``world_key`` checked field by field: ``scene_seed`` a non-negative integer, ``cam2world``
    12 and ``K`` 6 finite numbers (positive focal lengths), ``height``/``width`` integers in
    [1, 4096]. Raises :class:`fin3r.errors.InputError` saying what is wrong (the key comes from a
    PNG text chunk: untrusted)."""
    from fin3r.errors import InputError

    def numbers(v, n):
        return (isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))

    try:
        k = json.loads(key) if isinstance(key, str) and len(key) < 4096 else None
    except ValueError as e:
        raise InputError(f"world key is not JSON ({e})") from None
    if not isinstance(k, dict):
        raise InputError(f"world key must be a JSON object of at most 4096 characters, got {str(key)[:60]!r}")
    seed = k.get("scene_seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise InputError(f"world key: scene_seed must be an integer in [0, 2**62), got {seed!r}")
    if not numbers(k.get("cam2world"), 12):
        raise InputError("world key: cam2world must be 12 finite numbers")
    if not numbers(k.get("K"), 6) or k["K"][0] <= 0 or k["K"][4] <= 0:
        raise InputError("world key: K must be 6 finite numbers with positive focal lengths")
    for name in ("height", "width"):
        v = k.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WORLD_KEY_SIDE:
            raise InputError(f"world key: {name} must be an integer in [1, {MAX_WORLD_KEY_SIDE}], got {v!r}")
    return k


def render_from_key(key: str, shadows: bool = True) -> dict[str, Tensor]:
    """Re-render the view a ``world_key`` names (same output as ``render_view``); a malformed key
    raises :class:`fin3r.errors.InputError` (:func:`parse_world_key`)."""
    k = parse_world_key(key)
    T = torch.eye(4)
    T[:3] = torch.tensor(k["cam2world"], dtype=torch.float32).reshape(3, 4)
    K = torch.eye(3)
    K[:2] = torch.tensor(k["K"], dtype=torch.float32).reshape(2, 3)
    return render_view(make_scene(k["scene_seed"]), T, K, k["height"], k["width"], shadows)


WORLD_KEY_PNG_CHUNK = "fin3r_world_key"


def save_world_image(path, img: Tensor, key: str) -> None:
    """Write a rendered image (``(H, W, 3)`` or ``(3, H, W)`` in [0, 1]) as an 8-bit PNG carrying its
    ``world_key`` in a text chunk, so ``fin3r label --teacher oracle`` can label exported world
    images (the oracle re-renders the ground truth from the key)."""
    from PIL import Image, PngImagePlugin

    img = torch.as_tensor(img)
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    info = PngImagePlugin.PngInfo()
    info.add_text(WORLD_KEY_PNG_CHUNK, key)
    arr = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path, pnginfo=info)


def export_world_images(folder, num_images: int, height: int, width: int, seed: int = 0,
                        split: str = "train") -> list:
    """Write the images of ``WorldMonoDataset(num_images, height, width, seed, split)`` as
    ``folder/world_NNNNNN.png`` with their keys (an image folder for ``fin3r label``, e.g. with
    the oracle teacher). Returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = WorldMonoDataset(num_images, height, width, seed=seed, split=split)
    paths = []
    for i in range(num_images):
        sample = ds[i]
        paths.append(folder / f"world_{i:06d}.png")
        save_world_image(paths[-1], sample["img"], sample["key"])
    return paths


def read_world_key(path) -> str | None:
    """The ``world_key`` stored in a PNG by :func:`save_world_image` (None if absent)."""
    from PIL import Image

    with Image.open(path) as im:
        return getattr(im, "text", {}).get(WORLD_KEY_PNG_CHUNK)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def scene_seed_for(seed: int, index: int, split: str) -> int:
    """The seed of scene ``index`` of a data set: train seeds are even, test seeds odd, so the
    two splits never share a scene, whatever ``seed`` and ``index``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return 2 * (int(seed) * 1_000_003 + int(index)) + (split == "test")


class _WorldBase(torch.utils.data.Dataset):
    def __init__(self, num_samples, height, width, seed, split, fov_x_deg, shadows, cache_size):
        self.num_samples, self.height, self.width = int(num_samples), int(height), int(width)
        self.seed, self.split, self.shadows = int(seed), split, shadows
        self.fov_x_deg = fov_x_deg
        scene_seed_for(seed, 0, split)  # validates split
        self.K = intrinsics_from_fov(self.width, self.height, fov_x_deg)
        self._cache: dict[int, dict] = {}
        self.cache_size = int(cache_size)

    def __len__(self) -> int:
        return self.num_samples

    def _cached(self, index: int, make):
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        if index in self._cache:
            return self._cache[index]
        sample = make(index)
        if len(self._cache) < self.cache_size:
            self._cache[index] = sample
        return sample

    def _views(self, scene_seed: int, cams: Tensor) -> dict[str, Tensor]:
        out = render_views(make_scene(scene_seed), cams, self.K, self.height, self.width, self.shadows)
        V = cams.shape[0]
        return {
            "img": out["img"].permute(0, 3, 1, 2).contiguous(),
            "depth": out["depth"],
            "valid": out["valid"],
            "K": out["K"],
            "cam2world": out["cam2world"],
            "normals": out["normals"],
            "key": [world_key(scene_seed, cams[i], self.K, self.height, self.width) for i in range(V)],
        }


class WorldMonoDataset(_WorldBase):
    """Monocular samples of the synthetic world with exact metric depth.

    Sample ``i`` is view ``i % views_per_scene`` of scene ``i // views_per_scene`` (scene seeds
    from ``scene_seed_for(seed, scene, split)``: train/test disjoint). Each view comes from its own
    camera cluster draw, so views of one scene differ in position and direction.

    Returns the sample dict (the contract of :mod:`fin3r.data.views`): ``img (3, H, W)`` float32 [0, 1], ``depth (H, W)`` planar
    metres (0 = invalid), ``valid (H, W)`` bool, ``K (3, 3)``, ``cam2world (4, 4)``,
    ``source="world"``, ``depth_kind="metric"``, plus ``normals (H, W, 3)`` (camera frame),
    ``scene_seed`` (int) and ``key`` (str, for ``render_from_key`` / the oracle teacher).
    Samples are deterministic; the first ``cache_size`` distinct ones are kept in memory.
    """

    def __init__(self, num_samples: int, height: int, width: int, seed: int = 0, split: str = "train",
                 views_per_scene: int = 4, fov_x_deg: float = 60.0, shadows: bool = True,
                 cache_size: int = 0):
        super().__init__(num_samples, height, width, seed, split, fov_x_deg, shadows, cache_size)
        self.views_per_scene = int(views_per_scene)

    def __getitem__(self, index: int) -> dict:
        return self._cached(index, self._make)

    def _make(self, index: int) -> dict:
        scene_idx, view = divmod(index, self.views_per_scene)
        scene_seed = scene_seed_for(self.seed, scene_idx, self.split)
        cams = sample_trajectory(make_scene(scene_seed), 1, seed=view)
        out = self._views(scene_seed, cams)
        sample = {k: v[0] for k, v in out.items()}
        sample.update(source="world", depth_kind="metric", scene_seed=scene_seed)
        return sample


class WorldViewsDataset(_WorldBase):
    """Multi-view (replay) samples of the synthetic world: ``num_views`` overlapping views of one
    scene with exact depth and poses.

    Sample ``i`` is scene ``scene_seed_for(seed, i, split)``; the views come from
    ``sample_trajectory(scene, num_views, seed=0, mode=mode)`` ("cluster" or "video").
    Keys as ``WorldMonoDataset`` with a leading ``S`` axis: ``img (S, 3, H, W)``, ``depth (S, H, W)``,
    ``valid (S, H, W)``, ``K (S, 3, 3)``, ``cam2world (S, 4, 4)`` (world frame; the loss expresses
    points in view 0's frame), ``normals (S, H, W, 3)``, ``key`` (list of S str), plus
    ``source="world"``, ``depth_kind="metric"``, ``scene_seed``.
    """

    def __init__(self, num_samples: int, num_views: int, height: int, width: int, seed: int = 0,
                 split: str = "train", mode: str = "cluster", fov_x_deg: float = 60.0,
                 shadows: bool = True, cache_size: int = 0):
        super().__init__(num_samples, height, width, seed, split, fov_x_deg, shadows, cache_size)
        self.num_views, self.mode = int(num_views), mode

    def __getitem__(self, index: int) -> dict:
        return self._cached(index, self._make)

    def _make(self, index: int) -> dict:
        scene_seed = scene_seed_for(self.seed, index, self.split)
        cams = sample_trajectory(make_scene(scene_seed), self.num_views, seed=0, mode=self.mode)
        sample = self._views(scene_seed, cams)
        sample.update(source="world", depth_kind="metric", scene_seed=scene_seed)
        return sample
