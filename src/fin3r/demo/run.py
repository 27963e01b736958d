"""``fin3r demo``: base -> teacher labels -> fine-tuning of the variants -> evaluation -> report."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fin3r.data.world_views import LabelledViews, ReplayPairs, WorldViews, blur_depth, pair_batch, render_world_views, teacher_labels
from fin3r.demo.config import ABLATION_VARIANTS, MAIN_VARIANTS, DemoConfig, load_base, variant_label
from fin3r.demo.figure import write_figure
from fin3r.demo.view import write_demo_view
from fin3r.demo.report import build_report, report_markdown
from fin3r.demo.runner import measure_threads, run_variants, variant_train_config
from fin3r.eval.world import evaluate_world, floor_figures
from fin3r.io import write_json_atomic, write_text_atomic


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> dict:
    """``fin3r demo``: base -> teacher labels -> Fin3R fine-tuning (and the replay-only control,
    or the ablation's variants) -> evaluation of every model on the same held-out views ->
    ``report.json``, ``report.md``, ``figure.png`` and the before/after viewer ``view.html``
    (:mod:`fin3r.demo.view`) in ``cfg.out_dir``. Returns the report.

    ``echo`` receives one line per stage (the CLI prints them; the engine shows its own progress
    bars)."""
    clock = _Clock()
    threads_before = torch.get_num_threads()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base, card = load_base(cfg.base)
    recipe = card.get("recipe", {})
    pool = cfg.world.pool or int(recipe.get("pool", 8))
    names = ABLATION_VARIANTS if cfg.ablation else MAIN_VARIANTS

    with clock("render"):
        label_views, replay_views, eval_views, replay_depth = _render(cfg, pool, int(recipe.get("seed", 0)), echo)
    with clock("threads"):
        threads, thread_timings, parallel = _threads(cfg, base, replay_views, replay_depth, len(names), echo)
    with clock("teacher"):
        datasets = _datasets(cfg, label_views, replay_views, replay_depth, eval_views, echo)
    with clock("eval_base"):
        echo(f"[3/5] evaluating the base model on {eval_views.num_scenes} held-out pairs "
             f"({2 * eval_views.num_scenes} views)")
        results = {"base": evaluate_world(base, eval_views, edge_pool=pool, progress=cfg.progress)}
    with clock("train_and_eval"):
        runs, figure_images = _finetune(cfg, base, names, datasets, eval_views, pool, threads, parallel, out, echo)
    train_info = {}
    for name in names:
        results[name] = runs[name]["eval"]
        train_info[name] = dict(runs[name]["info"], label=variant_label(cfg, name))
        clock.timings[f"train_{name}"] = train_info[name]["seconds"]
    n_fig = figure_images.shape[0]
    with torch.no_grad():
        figure_depth = {"base": base.predict_mono(figure_images).depth}
        base_pair = base.predict_views(eval_views.img[:n_fig].float() / 255.0)
    figure_depth.update({name: runs[name]["figure_depth"] for name in names})
    figure_views = {"base": (base_pair.pts3d, base_pair.conf)}
    figure_views.update({name: runs[name]["figure_views"] for name in names})

    with clock("report"):
        echo("[5/5] report and figure")
        floor = floor_figures(eval_views, pool)
        report = build_report(cfg, card, results, train_info, floor, pool, threads, thread_timings, names)
        report["threads"]["parallel_runs"] = parallel
        write_figure(out / "figure.png", cfg, eval_views, figure_depth, results, names)
        labels = {"base": "base", "fin3r": "Fin3R", "replay_only": "control (replay only)"}
        labels.update({m: variant_label(cfg, m) for m in names if m not in labels})
        write_demo_view(out / "view.html", eval_views.img[:n_fig], eval_views.depth[:n_fig], eval_views.valid[:n_fig],
                        eval_views.K[:n_fig], eval_views.cam2world[:n_fig], figure_views, labels)
    report["timings_s"] = clock.timings
    report["total_s"] = round(time.time() - clock.start, 1)
    write_json_atomic(out / "report.json", report)  # strict JSON: NaN -> null with its reason
    write_text_atomic(out / "report.md", report_markdown(report))
    torch.set_num_threads(threads_before)
    return report


class _Clock:
    """Seconds per stage: ``with clock("name"): ...``."""

    def __init__(self) -> None:
        self.start = time.time()
        self.timings: dict[str, float] = {}
        self._name, self._t0 = "", 0.0

    def __call__(self, name: str) -> _Clock:
        self._name = name
        return self

    def __enter__(self) -> _Clock:
        self._t0 = time.time()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self._name] = round(time.time() - self._t0, 2)


def _render(cfg: DemoConfig, pool: int, base_seed: int, echo) -> tuple[WorldViews, WorldViews, WorldViews, torch.Tensor]:
    """Stage 1: the held-in views the teacher labels, the replay views (with the base's own
    coarse depth) and the held-out evaluation pairs."""
    w = cfg.world
    H, W = w.height, w.width
    echo(f"[1/5] rendering the synthetic world: {w.label_scenes}x{w.label_views} held-in views for the "
         f"teacher, {w.replay_scenes}x{w.replay_views} replay views, {w.eval_scenes} held-out pairs ({W}x{H})")
    label_views = render_world_views(w.label_scenes, w.label_views, H, W, w.seed, "train", w.kind, progress=cfg.progress)
    replay_views = render_world_views(w.replay_scenes, w.replay_views, H, W, base_seed, "train", w.kind,
                                      progress=cfg.progress)
    eval_views = render_world_views(w.eval_scenes, 2, H, W, w.seed, "test", w.kind, progress=cfg.progress)
    return label_views, replay_views, eval_views, blur_depth(replay_views.depth, replay_views.valid, pool)


def _threads(cfg: DemoConfig, base, replay_views: WorldViews, replay_depth, n_runs: int, echo) -> tuple[int, dict, int]:
    """``(torch threads, measured seconds per step by thread count, runs trained at once)``."""
    nb = min(cfg.finetune.batch_size, replay_views.num_scenes)
    probe = pair_batch(replay_views, torch.arange(nb), torch.zeros(nb, dtype=torch.long),
                       torch.ones(nb, dtype=torch.long), depth=replay_depth)
    if cfg.threads > 0:
        threads, thread_timings = cfg.threads, {}
    else:
        threads, thread_timings = measure_threads(base, probe)
    torch.set_num_threads(threads)
    if cfg.jobs > 0:
        parallel = min(cfg.jobs, n_runs)
    else:
        scaling = thread_timings.get(1, 1.0) / thread_timings.get(2, math.inf) if thread_timings else 1.0
        parallel = min(os.cpu_count() or 1, n_runs) if scaling < 1.8 else 1
    echo(f"      torch threads: {threads}" + (
        " (measured s/step: " + ", ".join(f"{k} thread(s) {v:.3f}" for k, v in thread_timings.items()) + ")"
        if thread_timings else " (set)") + f"; fine-tuning runs at once: {parallel}")
    return threads, thread_timings, parallel


def _datasets(cfg: DemoConfig, label_views, replay_views, replay_depth, eval_views, echo) -> dict:
    """Stage 2: the teacher's labels, and the engine's data sets (distillation, replay, held-out)."""
    echo(f"[2/5] teacher labels: '{cfg.teacher}' on {label_views.num_scenes * label_views.num_views} held-in images"
         + (" (the ORACLE teacher: the world's exact depth up to an unknown per-image scale)"
            if cfg.teacher == "oracle" else ""))
    t_depth, t_mask, t_kind = teacher_labels(cfg.teacher, label_views)
    w = cfg.world
    return {
        "mono": LabelledViews(label_views, t_depth, t_mask, t_kind),
        "replay": ReplayPairs(replay_views, replay_depth, w.replay_pairs, w.self_frac, cfg.seed),
        "heldout": eval_views.img[:16, 0].float() / 255.0,
    }


def _finetune(cfg: DemoConfig, base, names, datasets, eval_views, pool, threads, parallel, out: Path, echo):
    """Stage 4: every variant fine-tuned and evaluated; ``(runs by name, the figure's images)``."""
    f = cfg.finetune
    n_fig = min(cfg.figure_views, eval_views.num_scenes)
    figure_images = eval_views.img[:n_fig, 0].float() / 255.0
    for i, name in enumerate(names):
        tc = variant_train_config(cfg, name, out / name)
        echo(f"[4/5] fine-tuning {i + 1}/{len(names)}: {variant_label(cfg, name)} -- {f.steps} steps "
             f"({tc.data.mono_per_epoch // f.batch_size} distillation + {tc.data.replay_per_epoch // f.batch_size} "
             f"replay batches of {f.batch_size}), lr {f.lr:g}")
    if parallel > 1:
        echo(f"      {len(names)} runs, {parallel} at a time in worker processes (1 torch thread each)")
    jobs = [dict(base=base, cfg=cfg, name=name, datasets=datasets, eval_views=eval_views, pool=pool,
                 out_dir=out / name, threads=1 if parallel > 1 else threads, figure_images=figure_images,
                 figure_pairs=eval_views.img[:n_fig].float() / 255.0)
            for name in names]
    return run_variants(jobs, parallel, cfg.progress, f.steps * len(names)), figure_images


__all__ = ["run_demo"]
