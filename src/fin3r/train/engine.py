"""The Fin3R training loop: encoder-only LoRA, monocular distillation mixed with multi-view replay.

One short, linear loop (nanoGPT style), used by ``fin3r train`` and -- as a Python function -- by
the demo::

    from fin3r.train import TrainConfig, TrainHooks, train
    from fin3r.config import load_config
    result = train(load_config(TrainConfig, "configs/world_tiny.yaml", ["optim.epochs=2"]))
    result.model          # the adapted model (LoRA layers in place), eval mode
    result.adapter_path   # out_dir/adapter.safetensors

What one optimizer step does (:func:`fin3r.train.optim.optimizer_step`):

1. take ``accum_steps`` single-source batches of the epoch's plan (``mono`` or a replay source);
2. ``mono``: ``predict_mono`` -> :func:`fin3r.losses.mono_distillation_loss` against the teacher
   label; replay: ``predict_views`` -> :func:`fin3r.models.replay_loss` (the family's own criterion);
3. backward (DDP all-reduces the LoRA gradients across ranks), clip, AdamW, scheduler;
4. a non-finite loss (or gradient norm) skips the step on every rank and is counted; after
   ``max_nonfinite`` in a row the run stops with a clear error.

Everything but the LoRA matrices is frozen and the whole model runs in eval mode (dropout and
drop-path off: the frozen decoder and heads are deterministic). The pieces live beside this file:
``data.py`` (data sets, the per-epoch plan, batches), ``model.py`` (base + LoRA + loss),
``optim.py`` (AdamW, schedule, the step), ``precision.py`` (autocast), ``state.py`` (the resumable
:class:`~fin3r.train.state.TrainState`: a run killed at any point and resumed ends bit-identical
on the CPU with a fixed seed), ``distributed.py`` (``torchrun``: one share of the mixture per
rank, rank 0 the one writer), ``logging.py`` (metrics).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fin3r.config import save_config, to_dict
from fin3r.data.skips import SkipLedger
from fin3r.diagnose import encoder_feature_norms
from fin3r.errors import Fin3rError
from fin3r.lora import save_adapter
from fin3r.train.config import TrainConfig
from fin3r.train.data import (accumulation_windows, build_datasets, check_same_data, collate, epoch_plan,
                              load_batches, make_sampler, set_data_epoch)
from fin3r.train.distributed import (DistContext, barrier, broadcast_from_main, resolve_device, setup_distributed,
                                     teardown, wrap_ddp)
from fin3r.train.logging import MetricsLogger
from fin3r.train.model import LossModule, adapter_base_name, inject_encoder_lora, load_base_model, set_train_mode
from fin3r.train.optim import build_optimizer, lr_at, make_schedule, optimizer_step
from fin3r.train.precision import autocast, autocast_dtype, store_frozen_in_bf16
from fin3r.train.state import TrainState

log = logging.getLogger(__name__)


class TrainingDiverged(Fin3rError):
    """Too many non-finite losses in a row."""


@dataclass
class TrainHooks:
    """Callbacks into the loop (called on rank 0 only).

    ``on_step(step, record)``: after every optimizer step, ``record`` = the step's metrics.
    ``on_epoch_end(epoch, model, record) -> dict | None``: after every epoch (after the feature
    norms are measured); a returned dict (e.g. evaluation metrics) is merged into the epoch record
    that is logged and kept in :attr:`TrainResult.history`. ``model`` is the adapted model in eval
    mode; the hook must not change its parameters.
    """

    on_step: Callable[[int, dict[str, float]], None] | None = None
    on_epoch_end: Callable[[int, nn.Module, dict[str, float]], dict[str, float] | None] | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the adapted model (LoRA layers in place, unmerged), eval mode, on the train device.
        adapter_path: the final adapter (``out_dir/adapter.safetensors``; ``None`` on ranks > 0).
        out_dir: the run folder (``config.yaml``, ``metrics.jsonl``, ``metrics_*.csv``,
            ``checkpoints/last.pt``, ``adapter_epoch*.safetensors``).
        steps: optimizer steps taken (skipped ones included), ``epochs``: epochs completed.
        skipped_steps: steps skipped for a non-finite loss or gradient.
        history: one record per epoch (losses, feature norms, hook metrics).
        base_feature_norm: the feature norms of the base model before training
            (``{"feat_norm": ..., "feat_norm_prenorm": ...}``).
        trainable_params: number of trainable parameters.
    """

    model: nn.Module
    adapter_path: Path | None
    out_dir: Path
    steps: int
    epochs: int
    skipped_steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    base_feature_norm: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    datasets: dict[str, Any] | None = None,
    hooks: TrainHooks | None = None,
    resume: bool | str | os.PathLike = False,
) -> TrainResult:
    """Run Fin3R training as ``config`` says; returns a :class:`TrainResult`.

    Args:
        config: the run (``fin3r.config.load_config(TrainConfig, path, overrides)``).
        model: a base model to adapt instead of ``config.model`` (e.g. the demo's in-memory base;
            it is modified in place: LoRA layers are injected). Must not already hold LoRA layers.
        datasets: ``{"mono", "replay", "heldout"}`` instead of the ones ``config.data`` builds
            (``heldout``: ``(N, 3, H, W)`` images for the feature-norm signal, or ``None``).
        hooks: :class:`TrainHooks` (evaluation, progress reporting).
        resume: ``True`` = continue from ``out_dir/checkpoints/last.pt`` if it exists; a path =
            continue from that checkpoint.
    """
    ctx = setup_distributed("cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    try:
        return _train(config, ctx, model, datasets, hooks or TrainHooks(), resume)
    finally:
        teardown(ctx)


def _train(config: TrainConfig, ctx: DistContext, model: nn.Module | None, datasets: dict[str, Any] | None,
           hooks: TrainHooks, resume: bool | str | os.PathLike) -> TrainResult:
    device = resolve_device(config.device, ctx)
    amp_dtype = autocast_dtype(config.precision, device)
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    # --- model: the base (its feature norms measured first), then encoder LoRA, the same on every rank
    torch.manual_seed(config.seed)
    base = (model if model is not None else load_base_model(config)).to(device)
    datasets = datasets if datasets is not None else build_datasets(config)
    check_same_data(datasets, ctx)
    heldout = datasets["heldout"].to(device) if datasets.get("heldout") is not None else None
    base_norms = encoder_feature_norms(base.eval(), heldout) if heldout is not None and ctx.main else {}
    torch.manual_seed(config.seed)  # LoRA init independent of what ran before
    targets = inject_encoder_lora(base, config)
    base = base.to(device)
    set_train_mode(base)
    _set_memory_savers(base, config, amp_dtype, ctx)
    trainable = {n: p for n, p in base.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    loss_module = wrap_ddp(LossModule(base, config), device, ctx)
    if ctx.main:
        log.info("LoRA on %d encoder layers (%s...), %d trainable parameters", len(targets), targets[0],
                 sum(p.numel() for p in params))

    # --- schedule, optimizer, and the state a checkpoint restores ------------------------------
    sampler = make_sampler(datasets, config, ctx)
    batches_per_epoch = len(epoch_plan(sampler, 0, ctx))
    if not batches_per_epoch:
        raise Fin3rError("the data mixture yields no batch per epoch (check data.*_per_epoch and batch_size)")
    schedule = make_schedule(batches_per_epoch, config.optim, config.max_steps)
    optimizer, scheduler = build_optimizer(params, config.optim, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    parts = dict(trainable=trainable, optimizer=optimizer, scheduler=scheduler, scaler=scaler, config=config, ctx=ctx)
    state = TrainState(base_feature_norm=base_norms)
    metrics = MetricsLogger(out_dir, enabled=ctx.main, tensorboard=config.tensorboard)
    resume_path = ckpt_path if resume is True else (Path(resume) if resume else None)
    if resume_path is not None and broadcast_from_main(resume_path.is_file() if ctx.main else None, ctx):
        state = TrainState.restore(resume_path, **parts)
        metrics.truncate(state.step, state.epoch)  # steps after the checkpoint are re-run: log them once
    elif resume_path is not None and resume is not True:
        raise Fin3rError(f"--resume: checkpoint not found: {resume_path}")

    def checkpoint() -> None:
        position = {**sampler.state_dict(consumed_samples=state.batch_in_epoch * config.data.batch_size),
                    "epoch": state.epoch}
        state.save(ckpt_path, **parts, sampler_state=position)

    eval_dtype = amp_dtype if config.frozen_weights == "bf16" else None  # bf16-stored weights need autocast
    report = _Reporter(config, ctx, metrics, hooks, device, eval_dtype, total_steps=schedule.total_steps,
                       initial=state.step)
    bad_samples = SkipLedger(config.data.max_bad_fraction)  # skipped data entries, per epoch
    # --- epochs ---------------------------------------------------------------------------------
    while state.epoch < config.optim.epochs and state.step < schedule.total_steps:
        plan = epoch_plan(sampler, state.epoch, ctx)
        set_data_epoch(datasets, state.epoch)
        epoch_losses: dict[str, list[float]] = {}
        batches = bad_samples.watch(load_batches(datasets, plan[state.batch_in_epoch:], config.data.num_workers),
                                    state.epoch)
        for window in accumulation_windows(batches, schedule.accum):
            step = optimizer_step(loss_module, window, params=params, optimizer=optimizer, scheduler=scheduler,
                                  scaler=scaler, grad_clip=config.optim.grad_clip, device=device,
                                  amp_dtype=amp_dtype, ctx=ctx)
            state.step += 1
            state.batch_in_epoch += len(window)
            state.skipped += not step.finite
            state.nonfinite_streak = 0 if step.finite else state.nonfinite_streak + 1
            if not step.finite:
                _report_nonfinite(state, config, ctx)
            for source, loss, _ in step.micro:
                epoch_losses.setdefault(source, []).append(loss)
            report.step(state, step)
            if config.ckpt_every > 0 and state.step % config.ckpt_every == 0 and state.batch_in_epoch < len(plan):
                checkpoint()
            if state.step >= schedule.total_steps:
                break
        finished = state.batch_in_epoch >= len(plan)  # else: stopped by max_steps inside the epoch
        report.epoch_end(state, base, heldout, epoch_losses, bad_samples.end_epoch(state.epoch))
        if finished:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        checkpoint()
        if not finished:
            break

    report.close()
    base.eval()
    adapter_path = None
    if ctx.main:
        adapter_path = out_dir / "adapter.safetensors"
        save_adapter(base, adapter_path, base_name=adapter_base_name(config), step=state.step, epochs=state.epoch,
                     train_config=to_dict(config))
    barrier(ctx)
    return TrainResult(model=base, adapter_path=adapter_path, out_dir=out_dir, steps=state.step, epochs=state.epoch,
                       skipped_steps=state.skipped, history=state.history, base_feature_norm=state.base_feature_norm,
                       trainable_params=sum(p.numel() for p in params))


def _set_memory_savers(model: nn.Module, config: TrainConfig, amp_dtype: torch.dtype | None,
                       ctx: DistContext) -> None:
    """``grad_checkpointing``: checkpoint the model's blocks; ``frozen_weights: bf16``: store their
    frozen weights in bf16 (needs autocast)."""
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.frozen_weights == "bf16":
        if amp_dtype is None:
            raise Fin3rError("frozen_weights=bf16 needs autocast: set precision to bf16 or fp16 "
                             f"(precision={config.precision} runs fp32 here)")
        saved = store_frozen_in_bf16(model.checkpoint_blocks())
        if ctx.main:
            log.info("frozen block weights stored in bf16: %.2f GiB saved", saved / 2**30)


def _report_nonfinite(state: TrainState, config: TrainConfig, ctx: DistContext) -> None:
    """Warn about a skipped step; raise :class:`TrainingDiverged` after ``max_nonfinite`` in a row."""
    if ctx.main:
        log.warning("step %d: non-finite loss or gradient, skipped (%d in a row)", state.step, state.nonfinite_streak)
    if state.nonfinite_streak >= config.max_nonfinite:
        raise TrainingDiverged(
            f"training diverged: {state.nonfinite_streak} non-finite losses/gradients in a row at step {state.step} "
            f"(epoch {state.epoch}); lower optim.lr, check the data, or raise max_nonfinite")


class _Reporter:
    """Rank 0's side of the loop: the progress bar, step and epoch records (metrics files, hooks),
    the per-epoch feature norms and adapter snapshots. Every method is a no-op on other ranks."""

    def __init__(self, config: TrainConfig, ctx: DistContext, metrics: MetricsLogger, hooks: TrainHooks,
                 device: torch.device, eval_dtype: torch.dtype | None, total_steps: int, initial: int):
        self.config, self.ctx, self.metrics, self.hooks = config, ctx, metrics, hooks
        self.device, self.eval_dtype = device, eval_dtype
        self.total_steps = total_steps
        self.bar = None
        if ctx.main and config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc="fin3r train", unit="step", dynamic_ncols=True)
        self.t_last, self.samples_since = time.perf_counter(), 0

    def step(self, state: TrainState, step: Any) -> None:
        self.samples_since += step.samples * self.ctx.world_size
        if not self.ctx.main:
            return
        now = time.perf_counter()
        sps = self.samples_since / max(now - self.t_last, 1e-9)
        record = {"kind": "step", "step": state.step, "epoch": state.epoch, "loss": step.loss, "lr": step.lr,
                  "grad_norm": step.grad_norm, "samples_per_s": sps, "skipped": state.skipped, **step.record()}
        if state.step % max(1, self.config.log_every) == 0 or state.step == self.total_steps:
            self.metrics.log(record)
            self.t_last, self.samples_since = now, 0
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{step.loss:.4f}", lr=f"{step.lr:.2e}", sps=f"{sps:.1f}")
        if self.hooks.on_step is not None:
            self.hooks.on_step(state.step, record)

    def epoch_end(self, state: TrainState, model: nn.Module, heldout: torch.Tensor | None,
                  losses: dict[str, list[float]], data_figures: dict[str, Any] | None = None) -> None:
        """The epoch record (mean loss per source, ``data_figures`` such as the bad-sample counts,
        feature norms, hook metrics), logged and kept in ``state.history``; the epoch's adapter
        snapshot."""
        if not self.ctx.main:
            return
        record: dict[str, Any] = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "skipped": state.skipped}
        record.update({f"loss_{s}": sum(v) / len(v) for s, v in losses.items()})
        record.update(data_figures or {})
        model.eval()
        with autocast(self.device, self.eval_dtype):
            if heldout is not None:
                record.update(encoder_feature_norms(model, heldout))
            if self.hooks.on_epoch_end is not None:
                record.update(self.hooks.on_epoch_end(state.epoch, model, dict(record)) or {})
        set_train_mode(model)
        self.metrics.log(record)
        state.history.append(record)
        save_adapter(model, Path(self.config.out_dir) / f"adapter_epoch{state.epoch:03d}.safetensors",
                     base_name=adapter_base_name(self.config), epoch=state.epoch, step=state.step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()


__all__ = ["TrainHooks", "TrainResult", "TrainingDiverged", "build_datasets", "collate", "epoch_plan",
           "inject_encoder_lora", "load_base_model", "lr_at", "make_sampler", "train"]
