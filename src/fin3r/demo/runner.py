"""Fine-tuning the demo's variants through the training engine, in this process or in worker
processes, and evaluating each on the held-out pairs."""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch
from tqdm.auto import tqdm

from fin3r.demo.config import VARIANTS, DemoConfig
from fin3r.eval.world import evaluate_world
from fin3r.models import build_model, replay_loss
from fin3r.train.config import (
    DataConfig,
    DistillConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    ReplayConfig,
    TrainConfig,
)
from fin3r.train.engine import TrainHooks, train


def variant_train_config(cfg: DemoConfig, name: str, out_dir) -> TrainConfig:
    """The ``fin3r.train`` configuration of one demo variant (``"fin3r"`` or a :data:`VARIANTS` key):
    the same steps, seed, lr schedule and data for every variant; only the losses and the LoRA
    re-normalisation differ."""
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
                        replay="world" if replay_steps else "none", allow_no_replay=not spec["replay"]),
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
    ``eval_views``, ``pool``, ``out_dir``, ``threads``, ``figure_images``, ``figure_pairs`` and optionally
    ``queue`` (one item per optimizer step, for the parent's progress bar)."""
    torch.set_num_threads(job["threads"])
    base = job["base"]
    if isinstance(base, tuple):
        config, state = base
        base = build_model(dict(config))
        base.load_state_dict(state)
        base.eval()
    hooks = None
    if job.get("queue") is not None:
        q = job["queue"]
        hooks = TrainHooks(on_step=lambda step, record: q.put(1))
    t0 = time.time()
    model, res = finetune_variant(base, job["cfg"], job["name"], job["datasets"], job["out_dir"], hooks=hooks)
    seconds = time.time() - t0
    ev = evaluate_world(model, job["eval_views"], edge_pool=job["pool"])
    with torch.no_grad():
        fig = model.predict_mono(job["figure_images"]).depth
        pair = model.predict_views(job["figure_pairs"])  # for the before/after viewer
    last = res.history[-1] if res.history else {}
    return {
        "name": job["name"],
        "eval": ev,
        "figure_depth": fig,
        "figure_views": (pair.pts3d, pair.conf),
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
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    q = manager.Queue()
    bar = None
    if progress:
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
    return dataclasses.replace(cfg, progress=progress)


def measure_threads(model, batch: dict, candidates=(1, 2), reps: int = 3) -> tuple[int, dict]:
    """Time a training-like step (forward + backward of the replay loss on ``batch``) with each
    thread count; returns ``(fastest, {threads: seconds per step})``. On a busy 2-core machine
    two threads can be several times slower than one (OpenMP contention), so this is measured."""
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


__all__ = ["variant_train_config", "finetune_variant", "train_and_evaluate", "run_variants", "measure_threads"]
