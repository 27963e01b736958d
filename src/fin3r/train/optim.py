"""The optimisation side of a training step: AdamW on the trainable (LoRA) tensors, the learning
-rate schedule (linear warm-up, then half-cycle cosine), and :func:`optimizer_step`, which runs one
optimizer step over a window of accumulated micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fin3r.train.config import OptimConfig
from fin3r.train.data import to_device
from fin3r.train.distributed import DistContext, all_finite
from fin3r.train.precision import autocast


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then half-cycle cosine to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """How long a run is: ``steps_per_epoch`` optimizer steps (``accum`` micro-batches each),
    ``total_steps`` over all epochs (capped by ``max_steps``), ``warmup`` steps."""

    accum: int
    steps_per_epoch: int
    total_steps: int
    warmup: int


def make_schedule(batches_per_epoch: int, optim: OptimConfig, max_steps: int = 0) -> Schedule:
    accum = max(1, optim.accum_steps)
    per_epoch = math.ceil(batches_per_epoch / accum)
    total = per_epoch * optim.epochs
    if max_steps > 0:
        total = min(total, max_steps)
    return Schedule(accum, per_epoch, total, int(round(optim.warmup_epochs * per_epoch)))


def build_optimizer(params: list[nn.Parameter], optim: OptimConfig, schedule: Schedule):
    """``(AdamW, LambdaLR)`` for ``params`` (the LR follows :func:`lr_at`)."""
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, schedule.total_steps, schedule.warmup, optim.lr, optim.min_lr) / optim.lr)
    return optimizer, scheduler


@dataclass
class StepResult:
    """What one optimizer step did. ``finite``: ``False`` = a non-finite loss or gradient norm on
    some rank, the update was skipped on every rank. ``loss``: the window's mean loss; ``lr``: the
    rate the step used; ``samples``: this rank's samples; ``micro``: ``(source, loss, stats)`` of
    every micro-batch, in order."""

    finite: bool
    loss: float
    lr: float
    grad_norm: float
    samples: int
    micro: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)

    def record(self) -> dict[str, float]:
        """The per-source losses and statistics of the step (a later micro-batch of a source wins)."""
        rec: dict[str, float] = {}
        for source, loss, stats in self.micro:
            rec[f"loss_{source}"] = loss
            rec.update({f"{source}_{k}": v for k, v in stats.items()})
        return rec


def optimizer_step(
    loss_module: nn.Module,
    window: list[tuple[str, dict[str, Any]]],
    *,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    ctx: DistContext,
) -> StepResult:
    """One optimizer step over ``window`` (``[(source, batch), ...]``, the accumulated micro-batches).

    Forward + backward of each micro-batch (mean over the window; DDP synchronises gradients on
    the last one only), gradient clipping at ``grad_clip`` (0 = off), AdamW through the grad scaler,
    then the scheduler. A non-finite loss or gradient norm on any rank skips the update on every
    rank (the scheduler still steps, so all ranks stay on the same schedule).
    """
    optimizer.zero_grad(set_to_none=True)
    result = StepResult(finite=True, loss=0.0, lr=optimizer.param_groups[0]["lr"], grad_norm=float("nan"), samples=0)
    for i, (source, batch) in enumerate(window):
        batch = to_device(batch, device)
        last = i == len(window) - 1
        no_sync = loss_module.no_sync() if (ctx.distributed and not last) else contextlib.nullcontext()
        with no_sync:
            with autocast(device, amp_dtype):
                loss, stats = loss_module(source, batch)
            ok = all_finite(loss.detach(), ctx)
            if ok and result.finite:
                scaler.scale(loss / len(window)).backward()
            result.finite = result.finite and ok
        value = float(loss.detach())
        result.loss += value / len(window)
        result.samples += batch["img"].shape[0]
        result.micro.append((source, value, stats))
    if result.finite:
        scaler.unscale_(optimizer)
        norm: Tensor = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        result.grad_norm = float(norm)
        result.finite = all_finite(norm.detach(), ctx)
    if result.finite:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped first step warns "scheduler before optimizer"
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return result


__all__ = ["Schedule", "StepResult", "build_optimizer", "lr_at", "make_schedule", "optimizer_step"]
