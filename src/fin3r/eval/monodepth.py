"""Monocular geometry evaluation on MoGe's benchmarks (the paper's Table 1).

For each benchmark (default: the paper's seven -- NYUv2, KITTI, ETH3D, iBims-1, DDAD, DIODE,
HAMMER) every instance of its split is loaded at the benchmark's fixed resolution
(:mod:`fin3r.eval.moge_layout`), the model predicts at its own input size, the prediction is
resized back, and :func:`~fin3r.eval.mono_scoring.score_mono` scores every alignment variant.
Figures are averaged per benchmark over images, then over benchmarks (unweighted; each metric over
the benchmarks that have it), as MoGe does. Instances without a valid GT pixel are excluded and
counted (``num_excluded``), never scored as 0 or NaN.

Python API (the CLI and the demo call this)::

    from fin3r.eval.monodepth import evaluate_monodepth, MonodepthConfig
    res = evaluate_monodepth(model, "data/eval", ["NYUv2", "KITTI"], out_dir="eval_out")
    res["mean"]["depth_scale_invariant"]["rel"]          # mean over benchmarks (fraction)
    res["benchmarks"]["NYUv2"]["depth_scale_invariant"]  # {"rel", "delta1", ...}
    res["records"]["NYUv2"][0]                           # one image: name, valid_pixels, metrics

``model`` is a Reconstructor or any ``predict(image (3, H, W)) -> {MoGe key: map}`` callable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fin3r.errors import InputError
from fin3r.eval.cut3r_depth import Cut3rDepthSettings, pixel_weighted_mean
from fin3r.eval.metrics import key_average
from fin3r.eval.model_io import MonoPredictor, mono_predictor
from fin3r.eval.moge_layout import list_instances, load_instance
from fin3r.eval.mono_scoring import DEPTH_VARIANTS, MonoGT, score_mono
from fin3r.eval.report import save_result
from fin3r.io import read_json, write_csv_atomic, write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "BenchmarkSpec",
    "read_benchmark_json",
    "MonodepthConfig",
    "MOGE_BENCHMARKS",
    "PAPER_BENCHMARKS",
    "resolve_benchmark",
    "evaluate_benchmark",
    "evaluate_monodepth",
]


@dataclass
class BenchmarkSpec:
    """One benchmark of MoGe's layout: folder (relative to the data root), evaluation size, split,
    ``depth_unit`` (set = metric GT), MoGe's far-depth drop factor, and optionally the model input
    long side it recommends (used unless ``MonodepthConfig.input_long_side`` is set)."""

    path: str
    width: int
    height: int
    split: str = ".index.txt"
    depth_unit: float | None = None
    drop_max_depth: float = 1000.0
    input_long_side: int | None = None  # recommended model input size (the world export sets it)
    include_segmentation: bool = False  # reads segmentation.png: local point metrics
    has_sharp_boundary: bool = False  # boundary F1


#: MoGe ``configs/eval/all_benchmarks.json`` (folder names as in its HF data set)
MOGE_BENCHMARKS: dict[str, BenchmarkSpec] = {
    "NYUv2": BenchmarkSpec("NYUv2", 640, 480, depth_unit=1.0),
    "KITTI": BenchmarkSpec("KITTI", 750, 375, depth_unit=1.0),
    "ETH3D": BenchmarkSpec("ETH3D", 2048, 1365, depth_unit=1.0, include_segmentation=True),
    "iBims-1": BenchmarkSpec("iBims-1", 640, 480, depth_unit=1.0, include_segmentation=True, has_sharp_boundary=True),
    "GSO": BenchmarkSpec("GSO", 512, 512),
    "Sintel": BenchmarkSpec("Sintel", 872, 436, include_segmentation=True, has_sharp_boundary=True),
    "DDAD": BenchmarkSpec("DDAD", 1400, 700, depth_unit=1.0, include_segmentation=True),
    "DIODE": BenchmarkSpec("DIODE", 1024, 768, depth_unit=1.0, include_segmentation=True),
    "Spring": BenchmarkSpec("Spring", 1920, 1080, has_sharp_boundary=True),
    "HAMMER": BenchmarkSpec("HAMMER", 1664, 832, depth_unit=1.0, has_sharp_boundary=True),
}

#: how each figure of a monodepth result is aggregated (stated in every result and table)
AGGREGATION = {
    "images": "mean over images (MoGe), except depth_median: mean over images weighted by valid pixels (CUT3R)",
    "benchmarks": "unweighted mean over benchmarks, each metric over the benchmarks that have it (MoGe)",
}

#: the seven metric benchmarks of the paper's Table 1 (docs/evaluation.md)
PAPER_BENCHMARKS = ("NYUv2", "KITTI", "ETH3D", "iBims-1", "DDAD", "DIODE", "HAMMER")


@dataclass
class MonodepthConfig:
    """``fin3r eval monodepth`` settings (YAML-loadable with ``fin3r.config.load_config``).

    Attributes:
        benchmarks: benchmark names; ``world`` is the exported synthetic-world benchmark.
        specs: extra or overriding benchmark specs by name (a benchmark folder may also carry a
            ``benchmark.json`` with the same fields, as the world export writes).
        variants: alignment variants and MoGe's other figures to score (see
            ``fin3r.eval.mono_scoring``; ``boundary`` only on sharp-boundary benchmarks, ``fov_x``
            only for predictions with intrinsics).
        points: also predict point maps and score the ``points_*`` variants and ``local_points``
            on segmented benchmarks (slower: the affine point fits are the most expensive part).
        full_metrics: also delta2/3, delta103, sq_rel, rmse, log_rmse.
        input_long_side: model input long side (VGGT: width); default per family (512 / 518).
        metric: report ``depth_metric`` (default: MASt3R only).
        max_images: evaluate only the first N instances of each split (quick checks).
        table_variant: the variant of the Markdown table (the paper's: scale-invariant depth).
        median_max_depth: CUT3R's ``max_depth`` for the ``depth_median`` variant (GT at or above
            it is invalid there; CUT3R: 70 for Sintel and Bonn, none for KITTI and NYU).
        median_post_clip_max: CUT3R's clipping of the aligned ``depth_median`` prediction
            (CUT3R: 70 for Sintel).
        fov: also ask the model for its intrinsics (a second, multi-view forward) and report
            MoGe's ``fov_x`` (models that predict intrinsics: VGGT, CUT3R).
    """

    benchmarks: list[str] = field(default_factory=lambda: list(PAPER_BENCHMARKS))
    specs: dict[str, BenchmarkSpec] = field(default_factory=dict)
    variants: list[str] = field(default_factory=lambda: list(DEPTH_VARIANTS) + ["boundary", "fov_x"])
    points: bool = False
    full_metrics: bool = False
    input_long_side: int | None = None
    metric: bool | None = None
    max_images: int | None = None
    table_variant: str = "depth_scale_invariant"
    median_max_depth: float | None = None
    median_post_clip_max: float | None = None
    fov: bool = False


#: ``benchmark.json`` keys that are recorded but not used
BENCHMARK_JSON_INFO_KEYS = ("source", "seed", "description")


def read_benchmark_json(path: str | Path) -> dict:
    """Read and check a benchmark's ``benchmark.json`` (``docs/evaluation.md``): a JSON object with
    the :class:`BenchmarkSpec` fields -- ``width``, ``height`` (evaluation size, positive
    integers; required), ``depth_unit`` (a positive number: the GT is metric, metres = stored
    depth x depth_unit; ``null``: the GT is known up to scale, no ``depth_metric`` score),
    ``split`` (index file, default ``.index.txt``), ``drop_max_depth`` (positive number, default
    1000), ``input_long_side`` (positive integer or ``null``), ``path`` -- plus the informational
    ``source``, ``seed``, ``description``. Anything else is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    known = set(BenchmarkSpec.__dataclass_fields__) | set(BENCHMARK_JSON_INFO_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("width", "height"):
        if key not in data:
            raise InputError(f"{path}: missing {key!r} (the evaluation size in pixels)")

    def positive(key: str, integer: bool, nullable: bool) -> None:
        v = data.get(key)
        if v is None and (nullable or key not in data):
            return
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not v > 0:
            kind = "a positive integer" if integer else "a positive number"
            raise InputError(f"{path}: {key!r} must be {kind}{' or null' if nullable else ''}, got {v!r}")

    positive("width", True, False)
    positive("height", True, False)
    positive("depth_unit", False, True)
    positive("drop_max_depth", False, False)
    positive("input_long_side", True, True)
    for key in ("split", "path"):
        if key in data and not isinstance(data[key], str):
            raise InputError(f"{path}: {key!r} must be a string")
    return data


def resolve_benchmark(root: str | Path, name: str, config: MonodepthConfig | None = None) -> tuple[Path, BenchmarkSpec]:
    """The folder and spec of benchmark ``name`` under ``root``: ``config.specs`` first, then MoGe's
    table, with a ``benchmark.json`` in the folder overriding their fields (:func:`read_benchmark_json`).
    A benchmark that is neither in ``config.specs`` nor in MoGe's table needs its ``benchmark.json``."""
    config = config or MonodepthConfig()
    spec = config.specs.get(name) or MOGE_BENCHMARKS.get(name)
    folder = Path(root) / (spec.path if spec else name)
    meta = folder / "benchmark.json"
    if meta.is_file():
        data = read_benchmark_json(meta)
        base = asdict(spec) if spec else {"path": name}
        base.update({k: v for k, v in data.items() if k in BenchmarkSpec.__dataclass_fields__})
        spec = BenchmarkSpec(**base)
    if spec is None:
        known = ", ".join(list(MOGE_BENCHMARKS) + ["world"])
        hint = (f"; export it with `fin3r eval world --out {root}`" if name == "world" else
                "; a custom benchmark needs its benchmark.json (`fin3r data moge-benchmark` writes one)")
        raise InputError(f"unknown benchmark {name!r} (no {meta}); known: {known}{hint}")
    if not folder.is_dir():
        raise InputError(f"benchmark {name}: missing folder {folder}")
    return folder, spec


def _predictor(model, config: MonodepthConfig, spec: BenchmarkSpec) -> MonoPredictor:
    if hasattr(model, "predict_mono"):
        long_side = config.input_long_side or spec.input_long_side
        return mono_predictor(model, long_side, config.metric, config.points, intrinsics=config.fov)
    if callable(model):
        return model
    raise TypeError("model must be a Reconstructor or a callable image -> dict of maps")


def _signature(name: str, spec: BenchmarkSpec, config: MonodepthConfig, model_tag: str) -> str:
    payload = dict(benchmark=name, spec=asdict(spec), variants=sorted(config.variants), points=config.points,
                   full=config.full_metrics, long_side=config.input_long_side, metric=config.metric,
                   max_images=config.max_images, model=model_tag, median_max_depth=config.median_max_depth,
                   median_post_clip_max=config.median_post_clip_max, fov=config.fov)
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _flat(metrics: dict) -> dict[str, float]:
    return {f"{v}.{k}": x for v, m in metrics.items() for k, x in m.items()}


def evaluate_benchmark(
    predict: MonoPredictor,
    folder: Path,
    spec: BenchmarkSpec,
    name: str,
    config: MonodepthConfig,
    progress: bool = True,
) -> dict:
    """Evaluate one benchmark: ``{"summary": {...}, "records": [...], "excluded": [...]}``.

    ``summary`` holds the per-variant means plus ``num_images``, ``num_excluded``,
    ``forward_time_s`` (model + resizes) and ``metric_time_s`` (alignment + metrics)."""
    from tqdm.auto import tqdm

    names = list_instances(folder, spec.split, benchmark=name)
    if config.max_images is not None:
        names = names[: config.max_images]
    variants = list(config.variants)
    if config.points:
        variants += [v for v in ("points_metric", "points_scale_invariant", "points_affine_invariant", "local_points")
                     if v not in variants]
    records, excluded = [], []
    t_fwd = t_met = 0.0
    median_settings = Cut3rDepthSettings(config.median_max_depth, config.median_post_clip_max)
    for inst_name in tqdm(names, desc=f"monodepth {name}", disable=not progress, leave=False):
        inst = load_instance(folder, inst_name, spec.width, spec.height, spec.depth_unit, spec.drop_max_depth, name,
                             include_segmentation=spec.include_segmentation and "local_points" in variants)
        n_valid = int(inst.mask.sum())
        if n_valid == 0:
            excluded.append(inst_name)
            log.warning("benchmark %s: instance %s has no valid GT pixel; excluded", name, inst_name)
            continue
        t0 = time.perf_counter()
        pred = predict(inst.image)
        t1 = time.perf_counter()
        gt = MonoGT(inst.depth, inst.mask, inst.points, inst.is_metric, inst.edge, intrinsics=inst.intrinsics,
                    segmentation=inst.segmentation, segment_ids=inst.segment_ids,
                    has_sharp_boundary=spec.has_sharp_boundary)
        metrics = score_mono(pred, gt, variants=variants, full=config.full_metrics, median_settings=median_settings)
        t2 = time.perf_counter()
        t_fwd += t1 - t0
        t_met += t2 - t1
        records.append({"name": inst_name, "valid_pixels": n_valid, **metrics})
    summary = key_average([{k: v for k, v in r.items() if isinstance(v, dict)} for r in records])
    median = [r["depth_median"] for r in records if "depth_median" in r]
    if median:  # CUT3R's aggregate: weighted by each image's valid pixels, not a per-image mean
        keys = [k for k in median[0] if k != "valid_pixels"]
        summary["depth_median"] = pixel_weighted_mean(median, keys)
    summary.update(num_images=len(records), num_excluded=len(excluded), forward_time_s=t_fwd, metric_time_s=t_met)
    return {"summary": summary, "records": records, "excluded": excluded}


def write_records_csv(path: Path, records: Sequence[dict]) -> None:
    """Per-image CSV: ``name, valid_pixels, <variant>.<metric>...``."""
    cols: list[str] = []
    rows = []
    for r in records:
        flat = {"name": r["name"], "valid_pixels": r["valid_pixels"], **_flat({k: v for k, v in r.items() if isinstance(v, dict)})}
        for c in flat:
            if c not in cols:
                cols.append(c)
        rows.append(flat)

    write_csv_atomic(path, cols, rows)


def evaluate_monodepth(
    model,
    root: str | Path,
    benchmarks: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    config: MonodepthConfig | None = None,
    model_tag: str = "",
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Evaluate ``model`` on MoGe-layout benchmarks under ``root``.

    Args:
        model: a Reconstructor (optionally with an adapter loaded) or a ``predict`` callable.
        root: folder holding one sub-folder per benchmark.
        benchmarks: names, or one comma-separated string (default ``config.benchmarks``).
        out_dir: where to write ``monodepth/<bench>.json``, ``<bench>.csv`` (per image),
            ``monodepth.json`` and ``monodepth.md``; a benchmark whose JSON exists with the same
            settings and ``model_tag`` is read back instead of re-evaluated (``resume``).
        model_tag: names the model/adapter in the outputs and the resume signature; without a
            tag nothing is resumed (the weights themselves are not hashed).

    Returns:
        ``{"benchmarks": {name: summary}, "mean": {...}, "records": {name: [per image]},
        "excluded": {name: [instance]}, "config": {...}, "model": model_tag}``.
    """
    config = config or MonodepthConfig()
    if isinstance(benchmarks, str):
        benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    names = list(benchmarks or config.benchmarks)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        (out / "monodepth").mkdir(parents=True, exist_ok=True)
    result: dict = {"task": "monodepth", "model": model_tag, "config": asdict(config), "aggregation": AGGREGATION,
                    "benchmarks": {}, "records": {}, "excluded": {}}
    for name in names:
        folder, spec = resolve_benchmark(root, name, config)
        sig = _signature(name, spec, config, model_tag)
        bench_json = out / "monodepth" / f"{name}.json" if out is not None else None
        if resume and model_tag and bench_json is not None and bench_json.is_file():
            saved = read_json(bench_json)
            if saved.get("signature") == sig:
                log.info("benchmark %s: read back from %s", name, bench_json)
                result["benchmarks"][name] = saved["summary"]
                result["records"][name] = saved["records"]
                result["excluded"][name] = saved["excluded"]
                continue
        res = evaluate_benchmark(_predictor(model, config, spec), folder, spec, name, config, progress)
        result["benchmarks"][name] = res["summary"]
        result["records"][name] = res["records"]
        result["excluded"][name] = res["excluded"]
        if bench_json is not None:
            save_result(bench_json, {"signature": sig, "benchmark": name, **res})
            write_records_csv(bench_json.with_suffix(".csv"), res["records"])
    metric_keys = [{k: v for k, v in s.items() if isinstance(v, dict)} for s in result["benchmarks"].values()]
    result["mean"] = key_average(metric_keys)
    result["mean"]["num_benchmarks"] = len(metric_keys)
    if out is not None:
        from fin3r.eval.report import monodepth_table

        summary = {k: result[k] for k in ("task", "model", "config", "aggregation", "benchmarks", "mean", "excluded")}
        save_result(out / "monodepth.json", summary)
        write_text_atomic(out / "monodepth.md", monodepth_table(summary, config.table_variant))
    return result

