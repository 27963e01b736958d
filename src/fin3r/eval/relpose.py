"""Two-view relative pose on ScanNet-1500-style pair lists (the paper's Table 2).

Pair lists (``docs/evaluation.md``), read by :func:`load_pairs`:

- ``superglue``: a text file, one pair a line ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)``
  (``scannet_test_pairs_with_gt.txt``); images at ``root/name``; K for the stored image size.
- ``loftr``: ``test.npz`` with ``name (N, 4)`` = (scene, sub-scene, frame0, frame1) and
  ``intrinsics.npz`` (``sceneXXXX_XX`` -> 3x3 K for 640x480 images); images
  ``root/sceneXXXX_XX/color/<frame>.jpg``, poses ``.../pose/<frame>.txt`` (camera-to-world);
  ``T_0to1 = inv(c2w_1) @ c2w_0``.
- ``roma``: ``test.npz`` with ``name`` and ``rel_pose (N, 12)`` (``T_0to1`` as 3x4); K from
  ``sceneXXXX_XX/intrinsic/intrinsic_color.txt`` (for the stored image size).

``T_0to1`` maps camera-0 coordinates to camera-1 coordinates (``x_1 = R x_0 + t``).

Solvers (``solver=``):

- ``pnp``: the pair (I0, I1) gives X^{2,1} -- view 1's points in view 0's frame on view 1's pixel
  grid; ``cv2.solvePnPRansac`` (SQPnP, 100 iterations, 5 px, seeded) with the GT intrinsics of
  view 1 rescaled to the model input returns world(=camera 0)-to-camera-1, i.e. ``T_0to1``.
- ``essential``: mutual nearest neighbours of the MASt3R descriptors on an 8-pixel grid (3-D
  point-map matches when a model has no descriptors), then LoFTR's essential-matrix estimate
  (normalized coordinates, threshold 0.5 px / mean focal, confidence 0.99999, the E with most
  ``recoverPose`` inliers). The translation has unit norm and an unobservable sign.
- ``cameras``: the model's own cameras (VGGT, CUT3R ``ViewsPrediction.cam2world`` in view 0's
  frame): ``T_0to1 = inv(cam2world_1) @ cam2world_0``.

Translation sign: the translation-direction error is reported both ways -- ``trans`` without and
``trans_sym`` with ``min(e, 180 - e)``. The AUC uses the symmetric error for the ``essential``
solver (the LoFTR/SuperGlue protocol) and the signed one for ``pnp`` and ``cameras``
(the Reloc3R protocol); the result records which in ``translation_sign``. A failed solve is an
infinite error (beyond every threshold).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fin3r.errors import InputError
from fin3r.eval.metrics import pose_auc, pose_errors
from fin3r.eval.model_io import model_input_size, resize_image
from fin3r.eval.report import save_result
from fin3r.geometry import invert_rigid, scale_intrinsics

log = logging.getLogger(__name__)

__all__ = [
    "Pair",
    "RelposeConfig",
    "load_pairs",
    "write_superglue_pairs",
    "solve_pnp",
    "solve_essential",
    "mutual_nn_matches",
    "evaluate_relpose",
    "SOLVERS",
]

SOLVERS = ("pnp", "essential", "cameras")


@dataclass
class Pair:
    """One evaluation pair: image paths, pixel intrinsics for ``K_size`` (``(H, W)``; None = the
    stored image size) and the GT ``T_0to1 (4, 4)``."""

    name0: str
    name1: str
    path0: Path
    path1: Path
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray
    K_size: tuple[int, int] | None = None


@dataclass
class RelposeConfig:
    """``fin3r eval relpose`` settings.

    Attributes:
        solver: ``pnp`` | ``essential`` | ``cameras`` (see the module doc).
        format: pair-list format ``auto`` | ``superglue`` | ``loftr`` | ``roma``.
        pairs_file: the pair list inside the benchmark folder (default per format).
        input_long_side: model input long side (default per family; the world export recommends).
        min_conf: PnP uses points with confidence >= this (default all).
        pnp_iters, pnp_reproj_px: RANSAC settings (DUSt3R's 100 / 5 px).
        match_stride: descriptor grid stride for the essential solver (MASt3R's 8).
        ransac_px: essential-matrix threshold in pixels (LoFTR's 0.5).
        thresholds: AUC thresholds in degrees.
        max_pairs: evaluate the first N pairs only.
        seed: RANSAC seed (``cv2.setRNGSeed``).
    """

    solver: str = "pnp"
    format: str = "auto"
    pairs_file: str | None = None
    input_long_side: int | None = None
    min_conf: float = 0.0
    pnp_iters: int = 100
    pnp_reproj_px: float = 5.0
    match_stride: int = 8
    ransac_px: float = 0.5
    thresholds: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0])
    max_pairs: int | None = None
    seed: int = 0


# --- pair lists ----------------------------------------------------------------------------------


def _need(path: Path, bench: str) -> Path:
    if not path.is_file():
        raise InputError(f"benchmark {bench}: missing file {path}")
    return path


def _read_matrix(path: Path, bench: str, shape=(4, 4)) -> np.ndarray:
    vals = np.array(_need(path, bench).read_text().split(), dtype=np.float64)
    if vals.size < shape[0] * shape[1]:
        raise InputError(f"benchmark {bench}: {path} holds {vals.size} numbers, expected {shape[0] * shape[1]}")
    return vals[: shape[0] * shape[1]].reshape(shape)


def write_superglue_pairs(path: str | Path, pairs: list[Pair]) -> None:
    """Write SuperGlue's text format (``rot0 = rot1 = 0``)."""
    lines = []
    for p in pairs:
        nums = [*np.asarray(p.K0).reshape(-1), *np.asarray(p.K1).reshape(-1), *np.asarray(p.T_0to1).reshape(-1)]
        lines.append(" ".join([p.name0, p.name1, "0", "0"] + [repr(float(x)) for x in nums]))
    Path(path).write_text("\n".join(lines) + "\n")


def _detect_format(root: Path) -> str:
    if (root / "pairs.txt").is_file() or (root / "scannet_test_pairs_with_gt.txt").is_file():
        return "superglue"
    if (root / "test.npz").is_file():
        with np.load(root / "test.npz") as z:
            return "roma" if "rel_pose" in z.files else "loftr"
    raise InputError(f"benchmark {root.name}: no pair list found in {root} (pairs.txt, "
                     "scannet_test_pairs_with_gt.txt or test.npz)")


def load_pairs(root: str | Path, fmt: str = "auto", pairs_file: str | None = None) -> list[Pair]:
    """Read a pair list in one of the layouts of the module doc."""
    root = Path(root)
    bench = root.name
    if not root.is_dir():
        raise InputError(f"benchmark {bench}: missing folder {root}")
    fmt = _detect_format(root) if fmt == "auto" else fmt
    pairs: list[Pair] = []
    if fmt == "superglue":
        f = root / (pairs_file or ("pairs.txt" if (root / "pairs.txt").is_file() else "scannet_test_pairs_with_gt.txt"))
        for i, line in enumerate(_need(f, bench).read_text().splitlines()):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 38:
                raise InputError(f"benchmark {bench}: {f} line {i + 1} has {len(parts)} fields, expected 38")
            nums = np.array(parts[4:38], dtype=np.float64)
            pairs.append(Pair(parts[0], parts[1], root / parts[0], root / parts[1], nums[:9].reshape(3, 3),
                              nums[9:18].reshape(3, 3), nums[18:34].reshape(4, 4)))
    elif fmt in ("loftr", "roma"):
        f = _need(root / (pairs_file or "test.npz"), bench)
        with np.load(f) as z:
            names = z["name"]
            rel = z["rel_pose"] if fmt == "roma" else None
        intr = None
        if fmt == "loftr":
            with np.load(_need(root / "intrinsics.npz", bench)) as z:
                intr = {k: z[k] for k in z.files}
        for i, (sc, sub, f0, f1) in enumerate(np.asarray(names).astype(int)):
            scene = f"scene{sc:04d}_{sub:02d}"
            n0, n1 = f"{scene}/color/{f0}.jpg", f"{scene}/color/{f1}.jpg"
            if fmt == "loftr":
                if scene not in intr:
                    raise InputError(f"benchmark {bench}: {root / 'intrinsics.npz'} has no entry {scene}")
                K = np.asarray(intr[scene], dtype=np.float64).reshape(3, 3)
                c0 = _read_matrix(root / scene / "pose" / f"{f0}.txt", bench)
                c1 = _read_matrix(root / scene / "pose" / f"{f1}.txt", bench)
                T = np.linalg.inv(c1) @ c0
                pairs.append(Pair(n0, n1, root / n0, root / n1, K, K, T, K_size=(480, 640)))
            else:
                K = _read_matrix(root / scene / "intrinsic" / "intrinsic_color.txt", bench)[:3, :3]
                T = np.eye(4)
                T[:3] = np.asarray(rel[i], dtype=np.float64).reshape(3, 4)
                pairs.append(Pair(n0, n1, root / n0, root / n1, K, K, T))
    else:
        raise InputError(f"unknown pair-list format {fmt!r} (auto|superglue|loftr|roma)")
    return pairs


# --- solvers -----------------------------------------------------------------------------------


def solve_pnp(pts_in_0: np.ndarray, K1: np.ndarray, mask: np.ndarray | None = None, iters: int = 100,
              reproj_px: float = 5.0) -> np.ndarray:
    """``T_0to1 (4, 4)`` from view 1's points in view 0's frame ``(H, W, 3)`` on view 1's pixel grid
    (pixel (i, j) at u=j, v=i) by SQPnP-RANSAC; NaN matrix on failure."""
    from fin3r.align.camera import solve_pnp_ransac

    res = solve_pnp_ransac(pts_in_0, K1, mask, iters=iters, reproj_px=reproj_px, min_points=6)
    return np.full((4, 4), np.nan) if res is None else res[0]


def solve_essential(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray, px_thr: float = 0.5,
                    conf: float = 0.99999) -> np.ndarray:
    """LoFTR's ``estimate_pose``: ``T_0to1`` with unit translation from pixel matches ``(N, 2)``;
    NaN matrix with fewer than 5 matches or no E."""
    if len(kpts0) < 5:
        return np.full((4, 4), np.nan)
    k0 = (kpts0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None]
    k1 = (kpts1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None]
    thr = px_thr / np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])
    E, mask = cv2.findEssentialMat(k0, k1, np.eye(3), threshold=thr, prob=conf, method=cv2.RANSAC)
    if E is None:
        return np.full((4, 4), np.nan)
    best, best_n = None, 0
    for e in np.split(E, len(E) // 3):
        n, R, t, _ = cv2.recoverPose(e, k0, k1, np.eye(3), 1e9, mask=mask)
        if n > best_n:
            best_n, best = n, (R, t[:, 0])
    if best is None:
        return np.full((4, 4), np.nan)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = best
    return T


def mutual_nn_matches(feat0: Tensor, feat1: Tensor, stride: int = 8, metric: str = "dot") -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours between two ``(H, W, D)`` feature maps sampled every ``stride``
    pixels (``metric="dot"``: descriptors, highest similarity; ``"l2"``: 3-D points, closest).
    Returns pixel coordinates ``(N, 2)`` (u, v) in each image."""
    H, W, D = feat0.shape
    off = stride // 2
    ys, xs = torch.meshgrid(torch.arange(off, H, stride), torch.arange(off, W, stride), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    f0 = feat0[ys, xs].float()
    f1 = feat1[ys, xs].float()
    if metric == "dot":
        score = f0 @ f1.T
    else:
        score = -torch.cdist(f0, f1)
    nn01 = score.argmax(1)
    nn10 = score.argmax(0)
    mutual = nn10[nn01] == torch.arange(len(nn01))
    i0 = torch.nonzero(mutual).squeeze(-1)
    i1 = nn01[i0]
    uv0 = torch.stack([xs[i0], ys[i0]], -1).double().numpy()
    uv1 = torch.stack([xs[i1], ys[i1]], -1).double().numpy()
    return uv0, uv1


# --- evaluation ----------------------------------------------------------------------------------


def _load_rgb(path: Path, bench: str) -> Tensor:
    _need(path, bench)
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255.0


def _estimate(model, pair: Pair, config: RelposeConfig, bench: str, long_side: int | None) -> np.ndarray:
    img0, img1 = _load_rgb(pair.path0, bench), _load_rgb(pair.path1, bench)
    H, W = img0.shape[-2:]
    family, patch = getattr(model, "family", ""), int(getattr(model, "patch_size", 16))
    h, w = model_input_size(H, W, family, patch, long_side)
    x = torch.stack([resize_image(img0[None], (h, w))[0], resize_image(img1[None], (h, w))[0]])[None]
    dev = next(model.parameters()).device
    with torch.no_grad():
        pred = model.predict_views(x.to(dev))
    Ks = []
    for K, img in ((pair.K0, img0), (pair.K1, img1)):
        kh, kw = pair.K_size or tuple(img.shape[-2:])
        Kt = torch.as_tensor(K, dtype=torch.float64)
        Ks.append(scale_intrinsics(Kt, w / kw, h / kh).numpy())
    if config.solver == "pnp":
        pts = pred.pts3d[0, 1].double().cpu().numpy()
        mask = (pred.conf[0, 1] >= config.min_conf).cpu().numpy()
        return solve_pnp(pts, Ks[1], mask, config.pnp_iters, config.pnp_reproj_px)
    if config.solver == "essential":
        if pred.desc is not None:
            uv0, uv1 = mutual_nn_matches(pred.desc[0, 0].cpu(), pred.desc[0, 1].cpu(), config.match_stride, "dot")
        else:  # DUSt3R: reciprocal 3-D matches between X^{1,1} and X^{2,1}
            uv0, uv1 = mutual_nn_matches(pred.pts3d[0, 0].cpu(), pred.pts3d[0, 1].cpu(), config.match_stride, "l2")
        return solve_essential(uv0, uv1, Ks[0], Ks[1], config.ransac_px)
    if config.solver == "cameras":
        if pred.cam2world is None:
            raise InputError(f"solver 'cameras' needs a model with a camera head (VGGT, CUT3R), not {family or type(model).__name__}")
        c2w = pred.cam2world[0].double().cpu()
        return (invert_rigid(c2w[1]) @ c2w[0]).numpy()
    raise InputError(f"unknown solver {config.solver!r}; known: {', '.join(SOLVERS)}")


def evaluate_relpose(
    model,
    root: str | Path,
    benchmark: str = "scannet1500",
    out_dir: str | Path | None = None,
    config: RelposeConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Relative pose of every pair of ``root/benchmark`` with ``config.solver``.

    Returns ``{"task": "relpose", "model", "solver", "translation_sign", "benchmarks": {benchmark:
    {"auc@5", "auc@10", "auc@20", "auc_sym@..", "auc_signed@..", "median_rot", "median_trans",
    "num_pairs", "num_failed", ...}}, "mean": {...}, "records": {benchmark: [per pair]}}`` (AUC as
    fractions). With ``out_dir``: ``relpose.json``, ``relpose_pairs.csv`` and ``relpose.md``; a
    finished run with the same settings and a non-empty ``model_tag`` is read back (``resume``)."""
    from tqdm.auto import tqdm

    config = config or RelposeConfig()
    if config.solver not in SOLVERS:
        raise InputError(f"unknown solver {config.solver!r}; known: {', '.join(SOLVERS)}")
    folder = Path(root) / benchmark
    out = Path(out_dir) if out_dir is not None else None
    settings = dict(config=asdict(config), model=model_tag, benchmark=benchmark)
    if resume and model_tag and out is not None and (out / "relpose.json").is_file():
        saved = json.loads((out / "relpose.json").read_text())
        if saved.get("settings") == settings:
            return saved
    pairs = load_pairs(folder, config.format, config.pairs_file)
    if config.max_pairs is not None:
        pairs = pairs[: config.max_pairs]
    spec_file = folder / "benchmark.json"
    long_side = config.input_long_side
    if long_side is None and spec_file.is_file():
        long_side = json.loads(spec_file.read_text()).get("input_long_side")
    cv2.setRNGSeed(config.seed)
    symmetric = config.solver == "essential"
    records = []
    t_fwd = 0.0
    for p in tqdm(pairs, desc=f"relpose {benchmark}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        T = _estimate(model, p, config, benchmark, long_side)
        t_fwd += time.perf_counter() - t0
        e = pose_errors(torch.as_tensor(T), torch.as_tensor(p.T_0to1))
        e_sym = pose_errors(torch.as_tensor(T), torch.as_tensor(p.T_0to1), symmetric=True)
        records.append({"name0": p.name0, "name1": p.name1, "rot": float(e["rot"]), "trans": float(e["trans"]),
                        "trans_sym": float(e_sym["trans"]), "failed": not bool(np.isfinite(T).all())})
    err_signed = [max(r["rot"], r["trans"]) for r in records]
    err_sym = [max(r["rot"], r["trans_sym"]) for r in records]
    th = config.thresholds
    s = {}
    for tag, errs in (("signed", err_signed), ("sym", err_sym)):
        for t, a in zip(th, pose_auc(errs, th)):
            s[f"auc_{tag}@{t:g}"] = a
    chosen = "sym" if symmetric else "signed"
    for t in th:
        s[f"auc@{t:g}"] = s[f"auc_{chosen}@{t:g}"]
    finite = [r for r in records if not r["failed"]]
    s["median_rot"] = float(np.median([r["rot"] for r in finite])) if finite else float("nan")
    s["median_trans"] = float(np.median([r["trans_sym" if symmetric else "trans"] for r in finite])) if finite else float("nan")
    s.update(num_pairs=len(records), num_failed=len(records) - len(finite), forward_time_s=t_fwd)
    sign = ("min(e, 180 - e) (essential matrix: the sign of t is unobservable)" if symmetric
            else "signed (no min(e, 180 - e)): the solver recovers the direction of t")
    result = {"task": "relpose", "model": model_tag, "solver": config.solver, "translation_sign": sign,
              "settings": settings, "aggregation": "AUC of the cumulative error curve over all pairs (SuperGlue)", "benchmarks": {benchmark: s}, "mean": {k: v for k, v in s.items() if k.startswith("auc")},
              "records": {benchmark: records}}
    if out is not None:
        save_result(out / "relpose.json", result)
        import csv

        with open(out / "relpose_pairs.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["name0"])
            wr.writeheader()
            wr.writerows(records)
        (out / "relpose.md").write_text(relpose_table(result))
    return result


def relpose_table(result: dict) -> str:
    """The paper's Table 2 layout: AUC@5/10/20 (x 100) per benchmark."""
    rows = [f"| model | benchmark | solver | AUC@5↑ | AUC@10↑ | AUC@20↑ | failed |", "|---|---|---|---|---|---|---|"]
    for name, s in result["benchmarks"].items():
        aucs = " | ".join(f"{100 * s.get(f'auc@{t}', float('nan')):.2f}" for t in (5, 10, 20))
        rows.append(f"| {result.get('model') or 'model'} | {name} | {result['solver']} | {aucs} | {s['num_failed']}/{s['num_pairs']} |")
    rows += ["", f"Translation error: {result['translation_sign']}. Aggregation: "
             f"{result.get('aggregation', 'AUC over all pairs')}."]
    return "\n".join(rows) + "\n"
