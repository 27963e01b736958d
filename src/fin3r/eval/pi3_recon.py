"""Point-map reconstruction as pi3 reports it (its ``mv_recon`` evaluation): 7-Scenes, NRGBD, DTU
and ETH3D in pi3's evaluation layout; Umeyama Sim(3), ICP, Acc / Comp / NC with normals estimated
from the point clouds.

Layouts under one data root (pi3's ``data/``)::

    7scenes/<scene>/TestSplit.txt                 "sequenceN" lines -> sequence <scene>/seq-0N
    7scenes/<scene>/seq-XX/frame-XXXXXX.color.png, .depth.proj.png (uint16 mm, 65535 invalid),
                           .pose.txt (4x4 camera-to-world); K: fx = fy = 525, (cx, cy) = (320, 240)
    nrgbd/<scene>/images/img<i>.png, depth/depth<i>.png (uint16 mm), poses.txt (4x4 blocks,
                           OpenGL camera-to-world: columns 1, 2 negated); fx = fy = 554.256, (320, 240)
    dtu/scan<N>/images/XXXXXXXX.jpg, depths/XXXXXXXX.npy (float), binary_masks/XXXXXXXX.png,
                           cams/XXXXXXXX_cam.txt (MVSNet: "extrinsic" 4x4 world-to-camera,
                           "intrinsic" 3x3); the 22 scans of the MVSNet test split
    eth3d/<scene>/images/custom_undistorted/<name>.JPG, ground_truth_depth/custom_undistorted/<name>.JPG
                           (raw float32, image size), custom_undistorted_cam/<name>.npz
                           (``intrinsics`` 3x3, ``extrinsics`` world-to-camera)

Per frame (pi3's readers): the image is resized to the depth size; 7-Scenes and NRGBD depth in
metres is invalid above 10 m and below 1 mm; DTU depth is multiplied by its mask (thresholded at
0.5, resized nearest, eroded by a 10 x 10 kernel); ETH3D non-finite depth is invalid. Image, depth
(nearest) and intrinsics (pixel-centre convention) are resized to width ``load_size`` (518) and
height ``round(H * 518 / W / 14) * 14``; GT points are the depth unprojected at integer pixel
coordinates and taken to the world frame; valid pixels have depth > 1e-4.

Frames: every ``kf_every``-th from 0 (pi3's sequence-id maps: 7-Scenes 200 "sparse" / 40 "dense",
NRGBD 500 / 100, DTU 5, ETH3D 5), or the lists of a sequence-id map JSON ``{sequence: [ids]}``.

Per sequence (:func:`pi3_reconstruction_metrics`): the predicted points of every frame (one
forward for the whole sequence, resized bilinearly with antialiasing to the GT size) are fitted
to the GT by Umeyama's Sim(3) on every valid pixel, refined by point-to-point ICP (threshold 0.1,
DTU 100; :func:`~fin3r.eval.registration.icp_point_to_point`), normals of both clouds are
estimated from the clouds (k = 30 PCA; :func:`~fin3r.eval.registration.estimate_normals`), and
``acc``, ``comp`` (mean and median distance), ``nc1``, ``nc2``, ``nc`` (absolute cosine to the
nearest neighbour's normal) are computed. Sequences are averaged with equal weight.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fin3r.errors import InputError
from fin3r.eval.alignment import umeyama_sim3
from fin3r.eval.metrics import accuracy_completeness, key_average
from fin3r.eval.model_io import predict_views_resized
from fin3r.eval.registration import estimate_normals, icp_point_to_point
from fin3r.eval.report import save_result

__all__ = [
    "PI3_DATASETS",
    "DTU_TEST_SCANS",
    "Pi3ReconConfig",
    "list_pi3_sequences",
    "read_pi3_frames",
    "pi3_reconstruction_metrics",
    "evaluate_pi3_pointmap",
]

#: dataset -> (folder under the data root, default kf_every, ICP threshold)
PI3_DATASETS = {"7scenes": ("7scenes", 200, 0.1), "nrgbd": ("nrgbd", 500, 0.1), "dtu": ("dtu", 5, 100.0),
                "eth3d": ("eth3d", 5, 0.1)}
DTU_TEST_SCANS = (1, 4, 9, 10, 11, 12, 13, 15, 23, 24, 29, 32, 33, 34, 48, 49, 62, 75, 77, 110, 114, 118)
_K_7SCENES = (525.0, 525.0, 320.0, 240.0)
_K_NRGBD = (554.2562584220408, 554.2562584220408, 320.0, 240.0)
RECON_KEYS = ("acc", "acc_med", "comp", "comp_med", "nc", "nc_med", "nc1", "nc1_med", "nc2", "nc2_med")


@dataclass
class Pi3ReconConfig:
    """``fin3r eval pointmap --protocol pi3`` settings.

    Attributes:
        kf_every: frame stride (default: the data set's, see the module doc).
        seq_id_map: a JSON ``{sequence: [frame ids]}`` (pi3's maps) instead of the stride.
        load_size: GT width (pi3: 518).
        icp_threshold: ICP distance (default: 100 for DTU, else 0.1; 0 = no ICP).
        knn: neighbours of the normal estimation (Open3D's default 30).
        max_sequences: evaluate only the first N sequences.
        input_long_side: model input long side (default per family).
    """

    kf_every: int | None = None
    seq_id_map: str | None = None
    load_size: int = 518
    icp_threshold: float | None = None
    knn: int = 30
    max_sequences: int | None = None
    input_long_side: int | None = None


def _sorted_numbered(folder: Path, prefix: str, suffix: str) -> list[Path]:
    files = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)] if folder.is_dir() else []
    try:
        return sorted(files, key=lambda p: int(p.name[len(prefix) : -len(suffix)]))
    except ValueError:
        raise InputError(f"{folder}: unexpected file names (want {prefix}<number>{suffix})") from None


def _base(root: str | Path, dataset: str) -> Path:
    if dataset not in PI3_DATASETS:
        raise InputError(f"unknown pi3 reconstruction data set {dataset!r}; known: {', '.join(PI3_DATASETS)}")
    base = Path(root) / PI3_DATASETS[dataset][0]
    if not base.is_dir():
        raise InputError(f"data set {dataset}: missing folder {base}")
    return base


def list_pi3_sequences(root: str | Path, dataset: str) -> list[str]:
    """The sequences pi3 evaluates (see the module doc), in its (sorted) order."""
    base = _base(root, dataset)
    if dataset == "7scenes":
        seqs = []
        for scene in sorted(p.name for p in base.iterdir() if p.is_dir()):
            split = base / scene / "TestSplit.txt"
            if not split.is_file():
                raise InputError(f"data set 7scenes: missing file {split}")
            for line in split.read_text().split():
                if not line.startswith("sequence") or not line[len("sequence"):].isdigit():
                    raise InputError(f"{split}: unexpected line {line!r} (want sequenceN)")
                seqs.append(f"{scene}/seq-{int(line[len('sequence'):]):02d}")
        return sorted(seqs)
    if dataset == "dtu":
        return sorted(f"scan{n}" for n in DTU_TEST_SCANS)
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _frame_files(base: Path, dataset: str, seq: str) -> list[tuple]:
    """Per frame of a sequence, the files pi3 reads, in frame order."""
    folder = base / seq
    if not folder.is_dir():
        raise InputError(f"data set {dataset}: missing sequence folder {folder}")
    if dataset == "7scenes":
        rgbs = _sorted_numbered(folder, "frame-", ".color.png")
        return [(p, p.with_name(p.name.replace(".color.png", ".depth.proj.png")),
                 p.with_name(p.name.replace(".color.png", ".pose.txt"))) for p in rgbs]
    if dataset == "nrgbd":
        return [(p, folder / "depth" / f"depth{p.name[3:-4]}.png") for p in _sorted_numbered(folder / "images", "img", ".png")]
    if dataset == "dtu":
        imgs = sorted((folder / "images").glob("*.jpg"))
        return [(p, folder / "depths" / f"{p.stem}.npy", folder / "binary_masks" / f"{p.stem}.png",
                 folder / "cams" / f"{p.stem}_cam.txt") for p in imgs]
    imgs = sorted((folder / "images" / "custom_undistorted").glob("*.JPG"))
    return [(p, folder / "ground_truth_depth" / "custom_undistorted" / p.name,
             folder / "custom_undistorted_cam" / f"{p.stem}.npz") for p in imgs]


def _require(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            raise InputError(f"missing file {p}")


def _read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        vals = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: not a whitespace-separated matrix") from None
    if vals.size != shape[0] * shape[1]:
        raise InputError(f"{path}: expected {shape[0]}x{shape[1]} numbers, got {vals.size}")
    return vals.reshape(shape)


def _read_mvsnet_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MVSNet ``*_cam.txt``: ``(world-to-camera 4x4, K 3x3)``."""
    words = path.read_text().split()
    try:
        w2c = np.array(words[1:17], dtype=np.float64).reshape(4, 4)
        K = np.array(words[18:27], dtype=np.float64).reshape(3, 3)
    except ValueError:
        raise InputError(f"{path}: not an MVSNet camera file") from None
    return w2c, K


def _resize_image(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """pi3's resize: LANCZOS when shrinking, BICUBIC otherwise (``size = (w, h)``)."""
    scale = max(size[0] / img.size[0], size[1] / img.size[1])
    return img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def _to_load_size(img: Image.Image, depth: np.ndarray, K: np.ndarray, width: int):
    h_in, w_in = depth.shape
    out = (width, int(round(h_in * (width / w_in) / 14) * 14))
    img = _resize_image(img, out)
    depth = cv2.resize(depth, out, interpolation=cv2.INTER_NEAREST)
    K = K.copy()
    K[:2, 2] += 0.5
    K[:2, :] *= max(out[0] / w_in, out[1] / h_in)
    K[:2, 2] -= 0.5
    return img, depth, K


def _unproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    cam = np.stack([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth], -1)
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (cam - t) @ R  # R^T (x - t): camera -> world


def read_pi3_frames(root: str | Path, dataset: str, seq: str, ids: list[int] | None = None,
                    load_size: int = 518) -> dict[str, Tensor]:
    """Frames ``ids`` (default: all) of a sequence as pi3's readers build them (module doc):
    ``images (N, 3, h, w)`` in [0, 1], ``points (N, h, w, 3)`` float64 world, ``valid (N, h, w)``."""
    base = _base(root, dataset)
    files = _frame_files(base, dataset, seq)
    ids = list(range(len(files))) if ids is None else [int(i) for i in ids]
    if not files or any(i < 0 or i >= len(files) for i in ids):
        raise InputError(f"data set {dataset}: sequence {seq} has {len(files)} frames; asked for {ids}")
    poses = None
    if dataset == "nrgbd":
        pf = base / seq / "poses.txt"
        _require(pf)
        vals = np.array(pf.read_text().split(), dtype=np.float64)
        if vals.size % 16:
            raise InputError(f"{pf}: not a list of 4x4 matrices")
        poses = vals.reshape(-1, 4, 4).copy()
        poses[:, :, 1:3] *= -1.0  # OpenGL -> OpenCV
    images, points, valids = [], [], []
    for i in ids:
        f = files[i]
        _require(*f)
        with Image.open(f[0]) as im:
            img = im.convert("RGB")
        if dataset in ("7scenes", "nrgbd"):
            with Image.open(f[1]) as im:
                raw = np.array(im)
            if dataset == "7scenes":
                raw = np.where(raw == 65535, 0, raw)
            depth = raw.astype(np.float32) / 1000.0
            depth[depth > 10] = 0
            depth[depth < 1e-3] = 0
            fx, fy, cx, cy = _K_7SCENES if dataset == "7scenes" else _K_NRGBD
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float32)
            if dataset == "7scenes":
                c2w = _read_matrix(f[2], (4, 4))
            else:
                if i >= len(poses):
                    raise InputError(f"{base / seq / 'poses.txt'}: no pose for frame {i}")
                c2w = poses[i]
            w2c = np.linalg.inv(c2w)
        elif dataset == "dtu":
            depth = np.nan_to_num(np.load(f[1], allow_pickle=False).astype(np.float32), nan=0.0)
            mask = cv2.imread(str(f[2]), cv2.IMREAD_UNCHANGED)
            if mask is None:
                raise InputError(f"{f[2]}: cannot read the mask")
            mask = (mask / 255.0).astype(np.float32)
            if mask.ndim == 3:
                mask = mask[..., 0]
            mask[mask > 0.5] = 1.0
            mask[mask < 0.5] = 0.0
            mask = cv2.resize(mask, (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_NEAREST)
            depth = depth * cv2.erode(mask, np.ones((10, 10), np.uint8), iterations=1)
            w2c, K = _read_mvsnet_cam(f[3])
        else:
            width, height = img.size
            raw = np.fromfile(f[1], dtype=np.float32)
            if raw.size != width * height:
                raise InputError(f"{f[1]}: {raw.size} floats for a {width}x{height} image")
            depth = raw.reshape(height, width).copy()
            depth[~np.isfinite(depth)] = -1
            with np.load(f[2], allow_pickle=False) as cam:
                K, w2c = np.asarray(cam["intrinsics"], np.float64), np.asarray(cam["extrinsics"], np.float64)
            if w2c.shape == (3, 4):
                w2c = np.vstack([w2c, [0, 0, 0, 1]])
        if depth.ndim != 2:
            raise InputError(f"{f[1]}: depth must be 2-D, got shape {depth.shape}")
        img = _resize_image(img, (depth.shape[1], depth.shape[0]))
        img, depth, K = _to_load_size(img, depth, np.asarray(K, np.float64), load_size)
        pts = _unproject(depth.astype(np.float64), K, w2c)
        valid = (depth > 1e-4) & np.isfinite(pts).all(-1)
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0)
        points.append(torch.from_numpy(pts))
        valids.append(torch.from_numpy(valid))
    return {"images": torch.stack(images), "points": torch.stack(points), "valid": torch.stack(valids)}


def pi3_reconstruction_metrics(pred: Tensor, gt: Tensor, valid: Tensor, icp_threshold: float = 0.1,
                               knn: int = 30) -> dict[str, float]:
    """pi3's per-sequence figures of ``pred (N, H, W, 3)`` against ``gt (N, H, W, 3)`` on
    ``valid (N, H, W)``: Sim(3) Umeyama, ICP (``icp_threshold``; 0 = none), normals from the
    clouds, then :func:`~fin3r.eval.metrics.accuracy_completeness` (see the module doc)."""
    p, g = pred[valid].double(), gt[valid].double()
    s, R, t = umeyama_sim3(p, g)
    p = s.double() * p @ R.double().T + t.double()
    if icp_threshold > 0:
        T = icp_point_to_point(p, g, icp_threshold)
        p = p @ T[:3, :3].T + T[:3, 3]
    return accuracy_completeness(p, g, estimate_normals(p, knn), estimate_normals(g, knn))


def _frame_ids(n: int, seq: str, config: Pi3ReconConfig, kf_default: int, id_map: dict | None) -> list[int]:
    if id_map is not None:
        if seq not in id_map:
            raise InputError(f"sequence-id map has no entry for {seq}")
        return [int(i) for i in id_map[seq]]
    return list(range(0, n, max(1, config.kf_every or kf_default)))


def evaluate_pi3_pointmap(
    model,
    root: str | Path,
    dataset: str,
    out_dir: str | Path | None = None,
    config: Pi3ReconConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
) -> dict:
    """pi3's point-map evaluation of ``model`` on ``dataset`` (module doc).

    ``model``: a Reconstructor (its multi-view points, view 0's frame) or a callable
    ``images (N, 3, H, W) -> points (N, h, w, 3)``. Returns ``{"task": "pointmap", "protocol":
    "pi3", "benchmarks": {dataset: means}, "mean", "records": {dataset: per sequence}}``."""
    from tqdm.auto import tqdm

    config = config or Pi3ReconConfig()
    _, kf_default, thr_default = PI3_DATASETS.get(dataset, (None, 1, 0.1))
    seqs = list_pi3_sequences(root, dataset)[: config.max_sequences]
    id_map = None
    if config.seq_id_map:
        try:
            id_map = json.loads(Path(config.seq_id_map).read_text())
        except (OSError, json.JSONDecodeError):
            raise InputError(f"{config.seq_id_map}: not a readable sequence-id map JSON") from None
        if not isinstance(id_map, dict):
            raise InputError(f"{config.seq_id_map}: a sequence-id map is a JSON object {{sequence: [ids]}}")
    threshold = thr_default if config.icp_threshold is None else config.icp_threshold
    records = []
    t_fwd = 0.0
    base = _base(root, dataset)
    for seq in tqdm(seqs, desc=f"pointmap {dataset}", disable=not progress, leave=False):
        ids = _frame_ids(len(_frame_files(base, dataset, seq)), seq, config, kf_default, id_map)
        data = read_pi3_frames(root, dataset, seq, ids, config.load_size)
        H, W = data["images"].shape[-2:]
        t0 = time.perf_counter()
        if hasattr(model, "predict_views"):
            pred, _ = predict_views_resized(model, data["images"], config.input_long_side)
            pts = pred.pts3d[0].float().cpu()
        else:
            pts = model(data["images"]).float().cpu()
        t_fwd += time.perf_counter() - t0
        pts = F.interpolate(pts.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False,
                            antialias=True).permute(0, 2, 3, 1)
        if not bool(data["valid"].any()):
            raise InputError(f"data set {dataset}: sequence {seq} has no valid GT pixel")
        m = pi3_reconstruction_metrics(pts, data["points"], data["valid"], threshold, config.knn)
        records.append({"scene": seq, "frames": " ".join(map(str, ids)), **m})
    summary = key_average([{k: r[k] for k in RECON_KEYS if k in r} for r in records])
    summary.update(num_reconstructions=len(records), forward_time_s=t_fwd)
    result = {"task": "pointmap", "protocol": "pi3", "model": model_tag, "config": {**asdict(config), "align": "umeyama+icp"},
              "aggregation": "mean over sequences (pi3)", "benchmarks": {dataset: summary},
              "mean": {k: summary.get(k) for k in RECON_KEYS}, "records": {dataset: records}}
    if out_dir is not None:
        save_result(Path(out_dir) / "pointmap.json", result)
    return result
