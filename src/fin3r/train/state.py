"""The resumable state of a training run (:class:`TrainState`) and how it is saved and restored.

A checkpoint (``out_dir/checkpoints/last.pt``, format in :mod:`fin3r.train.checkpointing`) holds
the run position (:class:`TrainState`'s fields), the trainable tensors, the optimizer, scheduler
and grad-scaler states, every rank's RNG state, the whole config, and -- apart -- the config that
shapes the trainable tensors (:data:`SHAPING_KEYS`).

Restoring checks before it changes anything: a checkpoint made with another model or another
LoRA mode/rank/targets is refused with one line naming the key and both values; a missing, extra,
mis-shaped or non-finite tensor is refused naming the tensor. Under ``torchrun`` only rank 0 reads
the file and broadcasts it, so the other nodes need not see rank 0's disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.config import to_dict
from fin3r.errors import CheckpointError
from fin3r.train.checkpointing import capture_rng, load_training_state, restore_rng, save_training_state
from fin3r.train.config import TrainConfig
from fin3r.train.distributed import DistContext, broadcast_from_main, gather_to_all

log = logging.getLogger(__name__)

#: config keys that shape the trainable tensors (or what they mean): resuming across a change is refused
SHAPING_KEYS = ("model.name", "lora.mode", "lora.rank", "lora.targets")
#: run-control keys a resume may change without a warning
RUN_CONTROL_KEYS = ("out_dir", "progress", "tensorboard", "log_every", "max_steps")
_POSITION = ("step", "epoch", "batch_in_epoch", "skipped", "nonfinite_streak")


def _dotted(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def shaping_config(config: TrainConfig) -> dict[str, Any]:
    """``{key: value}`` of :data:`SHAPING_KEYS` for ``config``."""
    plain = to_dict(config)
    return {k: _dotted(plain, k) for k in SHAPING_KEYS}


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (:data:`RUN_CONTROL_KEYS` ignored)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RUN_CONTROL_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


@dataclass
class TrainState:
    """Where a run stands. ``step``: optimizer steps taken (skipped ones included); ``epoch`` and
    ``batch_in_epoch``: the next batch to train on; ``skipped``: steps skipped for a non-finite
    loss or gradient, ``nonfinite_streak`` of them in a row; ``history``: one record per finished
    epoch; ``base_feature_norm``: the base model's encoder feature norms."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: int = 0
    nonfinite_streak: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    base_feature_norm: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path, *, trainable: dict[str, Tensor], optimizer: Any, scheduler: Any, scaler: Any,
             config: TrainConfig, ctx: DistContext, sampler_state: dict[str, Any] | None = None) -> None:
        """Write the checkpoint (atomically, rank 0 only). Every rank must call it: the RNG states
        of all ranks are gathered to rank 0."""
        rngs = gather_to_all(capture_rng(), ctx)
        if not ctx.main:
            return
        save_training_state(path, {
            **{k: getattr(self, k) for k in _POSITION},
            "history": self.history, "base_feature_norm": self.base_feature_norm,
            "trainable": {n: p.detach().cpu().clone() for n, p in trainable.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rngs, "config": to_dict(config), "shaping_config": shaping_config(config),
            "sampler": sampler_state or {},  # informational: the engine resumes from epoch/batch_in_epoch
        })

    @classmethod
    def restore(cls, path: str | Path, *, trainable: dict[str, Tensor], optimizer: Any, scheduler: Any, scaler: Any,
                config: TrainConfig, ctx: DistContext) -> TrainState:
        """Check the checkpoint at ``path`` against this run, then load it into ``trainable``, the
        optimizer, scheduler, scaler and the RNGs; returns the run position. Raises
        :class:`~fin3r.errors.CheckpointError` (one line) when it does not fit."""
        raw: Any = None
        if ctx.main:
            try:
                raw = load_training_state(path)
            except CheckpointError as e:
                raw = e
        raw = broadcast_from_main(raw, ctx)
        if isinstance(raw, Exception):
            raise CheckpointError(str(raw))
        check_fits(raw, path, trainable, config)
        try:
            with torch.no_grad():
                for n, t in raw["trainable"].items():
                    trainable[n].copy_(t)
            optimizer.load_state_dict(raw["optimizer"])
            scheduler.load_state_dict(raw["scheduler"])
            scaler.load_state_dict(raw["scaler"])
            restore_rng(raw["rng"][min(ctx.rank, len(raw["rng"]) - 1)])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{path}: the optimizer, scheduler or RNG state does not fit this run "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        state = cls(**{k: int(raw[k]) for k in _POSITION})
        # epochs finished before the checkpoint's position (a max_steps-cut epoch is re-run and re-logged)
        state.history = [r for r in raw.get("history", []) if int(r.get("epoch", -1)) < state.epoch]
        state.base_feature_norm = dict(raw.get("base_feature_norm", {}))
        if ctx.main:
            log.info("resumed from %s at epoch %d, batch %d, step %d", path, state.epoch, state.batch_in_epoch,
                     state.step)
            changed = changed_keys(raw.get("config", {}), to_dict(config))
            if changed:
                log.warning("resuming with a different config (%s): the run will not reproduce an "
                            "uninterrupted one", ", ".join(changed[:8]))
        return state


def check_fits(raw: dict[str, Any], path: str | Path, trainable: dict[str, Tensor], config: TrainConfig) -> None:
    """Raise :class:`~fin3r.errors.CheckpointError` naming the first thing in checkpoint ``raw``
    that does not fit this run: a shaping config key, a position field, a trainable tensor."""
    recorded = raw.get("shaping_config")
    if not isinstance(recorded, dict):  # checkpoints written before the key existed: the whole config
        recorded = {k: _dotted(raw.get("config", {}), k) for k in SHAPING_KEYS}
    for key, now in shaping_config(config).items():
        if key in recorded and recorded[key] != now:
            raise CheckpointError(f"{path}: the checkpoint was trained with {key}={recorded[key]!r}, this run has "
                                  f"{key}={now!r}; resume with the checkpoint's value or start a new out_dir")
    for k in _POSITION:
        if not isinstance(raw.get(k), int) or raw[k] < 0:
            raise CheckpointError(f"{path}: malformed training checkpoint ({k} = {raw.get(k)!r})")
    stored = raw.get("trainable")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: malformed training checkpoint (no trainable tensors)")
    missing = sorted(set(trainable) - set(stored))
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} of {len(trainable)} trainable tensors are missing "
                              f"(first: {missing[0]})")
    extra = sorted(set(stored) - set(trainable))
    if extra:
        raise CheckpointError(f"{path}: trainable tensor {extra[0]!r} is not in this model "
                              f"({len(extra)} unknown tensors)")
    for name, param in trainable.items():
        t = stored[name]
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise CheckpointError(f"{path}: trainable tensor {name!r} is not a floating-point tensor")
        if t.shape != param.shape:
            raise CheckpointError(f"{path}: trainable tensor {name!r} has shape {tuple(t.shape)}, this model "
                                  f"expects {tuple(param.shape)}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: trainable tensor {name!r} holds non-finite values")


__all__ = ["RUN_CONTROL_KEYS", "SHAPING_KEYS", "TrainState", "changed_keys", "check_fits", "shaping_config"]
