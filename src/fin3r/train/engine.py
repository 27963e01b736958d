"""The Fin3R training loop: encoder-only LoRA, monocular distillation mixed with multi-view replay.

One short, linear loop (nanoGPT style), used by ``fin3r train`` and -- as a Python function -- by
the demo::

    from fin3r.train import TrainConfig, TrainHooks, train
    from fin3r.config import load_config
    result = train(load_config(TrainConfig, "configs/world_tiny.yaml", ["optim.epochs=2"]))
    result.model          # the adapted model (LoRA layers in place), eval mode
    result.adapter_path   # out_dir/adapter.safetensors

What one optimizer step does:

1. draw ``accum_steps`` single-source batches from the mixture (``mono`` or ``replay``);
2. ``mono``: ``predict_mono`` -> :func:`fin3r.losses.mono_distillation_loss` against the teacher
   label (``depth``/``valid``/``depth_kind`` of the sample); ``replay``: ``predict_views`` ->
   :func:`fin3r.models.registry.replay_loss` (the family's own criterion);
3. backward (DDP all-reduces the LoRA gradients across ranks), clip, AdamW, scheduler;
4. a non-finite loss (or gradient norm) skips the step on every rank and is counted; after
   ``max_nonfinite`` in a row the run stops with a clear error.

Everything but the LoRA matrices is frozen and the whole model runs in eval mode (dropout and
drop-path off: the frozen decoder and heads are deterministic). Resumable checkpoints hold the
trainable tensors, optimizer, scheduler, grad scaler, the epoch/batch position and every RNG,
so a run killed at any point and resumed ends bit-identical (CPU, fixed seed).

Distributed: run under ``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); gloo on the CPU, NCCL on GPUs.
Each rank draws its own share of the mixture; only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fin3r.config import save_config, to_dict
from fin3r.errors import Fin3rError
from fin3r.models import MODEL_CONFIGS, load_model, replay_loss
from fin3r.train.checkpointing import capture_rng, load_training_state, restore_rng, save_training_state
from fin3r.train.config import TrainConfig
from fin3r.train.logging import MetricsLogger

log = logging.getLogger(__name__)

#: the sample keys a batch needs (others, e.g. ``normals`` or ``key``, are not collated)
BATCH_KEYS = ("img", "depth", "valid", "K", "cam2world")


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


# ---------------------------------------------------------------------------------------------
# setup helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_kind: str) -> _Dist:
    """Join the process group the launcher describes (``WORLD_SIZE > 1``), else single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    owns = False
    if device_kind == "cuda":  # NCCL collectives use the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _device(config: TrainConfig, ctx: _Dist) -> torch.device:
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def _precision(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None`` = fp32, no autocast)."""
    p = config.precision
    if p == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def load_base_model(config: TrainConfig) -> nn.Module:
    """The base model ``config.model`` names (registry name + checkpoint, or a file)."""
    name, ckpt = config.model.name, config.model.checkpoint
    if name in MODEL_CONFIGS and ckpt is None:
        log.warning("model %r has no checkpoint: training a randomly initialised model (smoke test only)", name)
    return load_model(name, ckpt)


def build_datasets(config: TrainConfig) -> dict[str, Any]:
    """``{"mono": Dataset, "replay": Dataset | None, "heldout": Tensor (N, 3, H, W)}`` from
    ``config.data`` (see :class:`fin3r.train.config.DataConfig`)."""
    d = config.data
    out: dict[str, Any] = {}
    if d.mono == "world":
        from fin3r.data.world import WorldMonoDataset

        out["mono"] = WorldMonoDataset(d.world_mono_scenes, d.height, d.width, seed=config.seed, split="train",
                                       cache_size=min(d.world_mono_scenes, 2048))
        heldout = WorldMonoDataset(d.heldout_images, d.height, d.width, seed=config.seed, split="test")
        out["heldout"] = torch.stack([heldout[i]["img"] for i in range(len(heldout))]) if d.heldout_images else None
    else:
        from fin3r.data.labels import LabelledImages

        if not d.images_root or not d.labels_root:
            raise Fin3rError("data.mono=labels needs data.images_root and data.labels_root")
        mono = LabelledImages(d.images_root, d.labels_root, d.height, d.width, crop=d.mono_crop,
                              max_zoom=d.mono_max_zoom, seed=config.seed)
        out["mono"] = mono
        n = min(d.heldout_images, len(mono))
        out["heldout"] = torch.stack([mono[len(mono) - 1 - i]["img"] for i in range(n)]) if n else None
    if d.replay == "world":
        from fin3r.data.world import WorldViewsDataset

        out["replay"] = WorldViewsDataset(d.world_replay_scenes, d.num_views, d.height, d.width, seed=config.seed,
                                          split="train", cache_size=min(d.world_replay_scenes, 1024))
    else:
        out["replay"] = None
    readers = {"hypersim": ("fin3r.data.hypersim", "HypersimViews"),
               "tartanair": ("fin3r.data.tartanair", "TartanAirViews")}
    for name, root in d.replay_roots.items():
        if name not in readers:
            raise Fin3rError(f"data.replay_roots: unknown replay set {name!r} (known: {', '.join(readers)})")
        import importlib

        module, cls = readers[name]
        out[name] = getattr(importlib.import_module(module), cls)(root, d.num_views, d.height, d.width, seed=config.seed)
    return out


def inject_encoder_lora(model: nn.Module, config: TrainConfig) -> list[str]:
    """LoRA on the encoder's linear layers matching ``config.lora.targets``; everything else frozen."""
    from fin3r.lora import inject_lora

    names = model.encoder_linear_names(config.lora.targets)
    if not names:
        raise Fin3rError(f"lora.targets {config.lora.targets} match no linear layer of the encoder "
                         f"({', '.join(model.encoder_prefixes)})")
    c = config.lora
    return inject_lora(model, names, rank=c.rank, alpha=c.alpha, dropout=c.dropout, mode=c.mode)


def set_train_mode(model: nn.Module) -> None:
    """Eval mode everywhere (dropout/drop-path off: the frozen parts are deterministic), except the
    LoRA layers themselves (so a non-zero ``lora.dropout`` acts)."""
    from fin3r.lora import lora_modules

    model.eval()
    for m in lora_modules(model).values():
        m.train()


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of :data:`BATCH_KEYS` (``(B, ...)``); ``depth_kind``/``source`` as lists."""
    batch: dict[str, Any] = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in BATCH_KEYS if k in samples[0]}
    batch["depth_kind"] = [s.get("depth_kind", "metric") for s in samples]
    batch["source"] = [s.get("source", "") for s in samples]
    return batch


def _normalise_batch_keys(batch: Any) -> tuple[str, list[int]]:
    """A sampler batch -> ``(source, indices)``: accepts ``[(source, index), ...]`` or
    ``(source, [indices])``."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], str):
        return batch[0], [int(i) for i in batch[1]]
    sources = {s for s, _ in batch}
    if len(sources) != 1:
        raise Fin3rError(f"the mixture sampler gave a batch mixing sources {sorted(sources)}")
    return next(iter(sources)), [int(i) for _, i in batch]


def replay_sources(datasets: dict[str, Any]) -> list[str]:
    """The replay sources of ``datasets``: every key but ``mono`` and ``heldout`` whose data set is
    not ``None`` (``replay`` for the synthetic world; e.g. ``hypersim``, ``tartanair``)."""
    return sorted(k for k, v in datasets.items() if k not in ("mono", "heldout") and v is not None)


def make_sampler(datasets: dict[str, Any], config: TrainConfig, ctx: _Dist):
    """The mixture sampler (``fin3r.data.mixture.MixtureSampler``): ``data.mono_per_epoch`` mono
    samples and ``data.replay_per_epoch`` samples of each replay source per epoch."""
    from fin3r.data.mixture import MixtureSampler

    sizes = {"mono": len(datasets["mono"])}
    counts = {"mono": config.data.mono_per_epoch}
    for name in replay_sources(datasets):
        if config.data.replay_per_epoch > 0:
            sizes[name] = len(datasets[name])
            counts[name] = config.data.replay_per_epoch
    return MixtureSampler(sizes, counts, config.data.batch_size, config.seed, rank=ctx.rank, world_size=ctx.world_size)


def epoch_plan(sampler: Any, epoch: int, ctx: _Dist | None = None) -> list[tuple[str, list[int]]]:
    """The batches of ``epoch`` in order: ``[(source, indices), ...]`` (deterministic). When
    distributed, every rank keeps the same number of batches (the smallest share), so the ranks
    take the same number of optimizer steps."""
    sampler.set_epoch(epoch)
    plan = [_normalise_batch_keys(b) for b in sampler]
    if ctx is not None and ctx.world_size > 1:
        import torch.distributed as dist

        n = torch.tensor([len(plan)], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            n = n.cuda()
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        plan = plan[: int(n.item())]
    return plan


class _LossModule(nn.Module):
    """Prediction + loss in one ``forward`` so DDP sees one module call per micro-batch."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, source: str, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        from fin3r.losses import mono_distillation_loss

        c = self.config
        if source == "mono":
            pred = self.model.predict_mono(batch["img"])
            if not c.distill.both_heads:
                pred = dataclasses.replace(pred, depth_aux=[], conf_aux=[])
            kinds = set(batch["depth_kind"])
            if len(kinds) != 1:
                raise Fin3rError(f"a mono batch mixes teacher depth kinds {sorted(kinds)}")
            loss, stats = mono_distillation_loss(
                pred, batch["depth"], batch["valid"], kinds.pop(), lam=c.distill.lam, rho=c.distill.rho,
                align=c.distill.align, min_valid=c.distill.min_valid, far_quantile=c.distill.far_quantile,
                teacher_weight=batch.get("teacher_conf"),
            )
            return c.distill.weight * loss, stats
        pred = self.model.predict_views(batch["img"])
        loss, stats = replay_loss(self.model.family, pred, batch, alpha=c.replay.alpha)
        return c.replay.weight * loss, stats


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then half-cycle cosine to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _load_batch(datasets: dict[str, Any], source: str, indices: list[int]) -> dict[str, Any]:
    ds = datasets[source]
    return collate([ds[i] for i in indices])


class _Prefetcher:
    """Loads the batches of an epoch plan, in order, with ``num_workers`` DataLoader workers (0 =
    in the main process). Order and content do not depend on the worker count."""

    def __init__(self, datasets: dict[str, Any], plan: list[tuple[str, list[int]]], num_workers: int):
        self.datasets, self.plan, self.num_workers = datasets, plan, num_workers

    def __iter__(self):
        if self.num_workers <= 0:
            for source, idx in self.plan:
                yield source, _load_batch(self.datasets, source, idx)
            return
        from torch.utils.data import DataLoader

        from fin3r.data.mixture import MixtureDataset

        keyed = MixtureDataset({k: v for k, v in self.datasets.items() if k != "heldout" and v is not None})
        loader = DataLoader(keyed, batch_sampler=[[(s, i) for i in idx] for s, idx in self.plan],
                            num_workers=self.num_workers, collate_fn=collate, persistent_workers=False)
        for (source, _), batch in zip(self.plan, loader):
            yield source, batch


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


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
    from fin3r.diagnose import encoder_feature_norms
    from fin3r.lora import save_adapter

    hooks = hooks or TrainHooks()
    dev_kind = "cuda" if (config.device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
    ctx = _setup_distributed(dev_kind)
    device = _device(config, ctx)
    amp_dtype = _precision(config, device)
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    try:
        # --- model: base + encoder LoRA, identical on every rank -----------------------------
        torch.manual_seed(config.seed)
        base = model if model is not None else load_base_model(config)
        base_name = config.model.name
        datasets = datasets if datasets is not None else build_datasets(config)
        heldout = datasets.get("heldout")
        base = base.to(device)
        base_norms = {}
        if heldout is not None and ctx.main:
            base.eval()
            base_norms = encoder_feature_norms(base, heldout.to(device))
        torch.manual_seed(config.seed)  # LoRA init independent of what ran before
        targets = inject_encoder_lora(base, config)
        base = base.to(device)
        set_train_mode(base)
        params = [p for p in base.parameters() if p.requires_grad]
        named_trainable = {n: p for n, p in base.named_parameters() if p.requires_grad}
        n_trainable = sum(p.numel() for p in params)
        if ctx.main:
            log.info("LoRA on %d encoder layers (%s...), %d trainable parameters", len(targets), targets[0], n_trainable)

        loss_module: nn.Module = _LossModule(base, config)
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            loss_module = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                              broadcast_buffers=False)

        # --- data plan and schedule -------------------------------------------------------------
        sampler = make_sampler(datasets, config, ctx)
        plan = epoch_plan(sampler, 0, ctx)
        if not plan:
            raise Fin3rError("the data mixture yields no batch per epoch (check data.*_per_epoch and batch_size)")
        accum = max(1, config.optim.accum_steps)
        steps_per_epoch = math.ceil(len(plan) / accum)
        total_steps = steps_per_epoch * config.optim.epochs
        if config.max_steps > 0:
            total_steps = min(total_steps, config.max_steps)
        warmup = int(round(config.optim.warmup_epochs * steps_per_epoch))
        o = config.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_at(s, total_steps, warmup, o.lr, o.min_lr) / o.lr
        )
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        # --- resume -----------------------------------------------------------------------------
        step, epoch, batch_in_epoch, skipped, streak = 0, 0, 0, 0, 0
        history: list[dict[str, float]] = []
        resume_path = ckpt_path if resume is True else (Path(resume) if resume else None)
        if resume_path is not None and resume_path.is_file():
            state = load_training_state(resume_path)
            with torch.no_grad():
                for n, t in state["trainable"].items():
                    if n not in named_trainable:
                        raise Fin3rError(f"{resume_path}: trainable tensor {n!r} is not in this model (config changed?)")
                    named_trainable[n].copy_(t)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            skipped, streak = state["skipped"], state["nonfinite_streak"]
            history = list(state.get("history", []))
            base_norms = dict(state.get("base_feature_norm", base_norms))
            restore_rng(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
            if ctx.main:
                log.info("resumed from %s at epoch %d, batch %d, step %d", resume_path, epoch, batch_in_epoch, step)
                changed = _changed_keys(state.get("config", {}), to_dict(config))
                if changed:
                    log.warning("resuming with a different config (%s): the run will not reproduce an "
                                "uninterrupted one", ", ".join(changed[:8]))
        elif resume_path is not None and resume is not True:
            raise Fin3rError(f"--resume: checkpoint not found: {resume_path}")

        def checkpoint(next_epoch: int, next_batch: int) -> None:
            import torch.distributed as dist

            rngs = [capture_rng()]
            if ctx.world_size > 1:  # every rank's RNG, gathered to rank 0
                gathered: list[Any] = [None] * ctx.world_size
                dist.all_gather_object(gathered, rngs[0])
                rngs = gathered
            if ctx.main:
                save_training_state(ckpt_path, {
                    "trainable": {n: p.detach().cpu().clone() for n, p in named_trainable.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": step, "epoch": next_epoch, "batch_in_epoch": next_batch,
                    "skipped": skipped, "nonfinite_streak": streak,
                    "history": history, "base_feature_norm": base_norms,
                    "rng": rngs, "config": to_dict(config),
                    # informational (the engine resumes from epoch/batch_in_epoch above)
                    "sampler": {**sampler.state_dict(consumed_samples=next_batch * config.data.batch_size),
                                "epoch": next_epoch},
                })

        metrics = MetricsLogger(out_dir, enabled=ctx.main, tensorboard=config.tensorboard)
        bar = None
        if ctx.main and config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, desc="fin3r train", unit="step", dynamic_ncols=True)

        # --- epochs -----------------------------------------------------------------------------
        t_last, samples_since = time.perf_counter(), 0
        done = step >= total_steps
        while epoch < config.optim.epochs and not done:
            plan = epoch_plan(sampler, epoch, ctx)
            for ds in datasets.values():  # per-epoch augmentation draws (e.g. random crops)
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(epoch)
            ep_sums: dict[str, float] = {}
            ep_counts: dict[str, int] = {}
            window: list[tuple[str, dict[str, Any]]] = []
            batches = _Prefetcher(datasets, plan[batch_in_epoch:], config.data.num_workers)
            consumed = batch_in_epoch
            for source, batch in batches:
                consumed += 1
                window.append((source, batch))
                if len(window) < accum and consumed < len(plan):
                    continue
                # ---- one optimizer step over the window of micro-batches -----------------------
                optimizer.zero_grad(set_to_none=True)
                finite, step_loss, n_samples, rec = True, 0.0, 0, {}
                for i, (src, b) in enumerate(window):
                    b = _to_device(b, device)
                    sync = i == len(window) - 1
                    ctx_sync = loss_module.no_sync() if (ctx.world_size > 1 and not sync) else contextlib.nullcontext()
                    with ctx_sync:
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                            loss, stats = loss_module(src, b)
                        ok = _all_finite(loss.detach(), ctx)
                        if ok and finite:
                            scaler.scale(loss / len(window)).backward()
                        finite = finite and ok
                    step_loss += float(loss.detach()) / len(window)
                    n_samples += b["img"].shape[0]
                    ep_sums[src] = ep_sums.get(src, 0.0) + float(loss.detach())
                    ep_counts[src] = ep_counts.get(src, 0) + 1
                    rec[f"loss_{src}"] = float(loss.detach())
                    rec.update({f"{src}_{k}": v for k, v in stats.items()})
                window = []
                grad_norm = float("nan")
                if finite:
                    scaler.unscale_(optimizer)
                    gn = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
                    grad_norm = float(gn)
                    finite = _all_finite(gn.detach(), ctx)
                if finite:
                    scaler.step(optimizer)
                    scaler.update()
                    streak = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    streak += 1
                    if ctx.main:
                        log.warning("step %d: non-finite loss or gradient, skipped (%d in a row)", step + 1, streak)
                    if streak >= config.max_nonfinite:
                        raise TrainingDiverged(
                            f"training diverged: {streak} non-finite losses/gradients in a row at step {step + 1} "
                            f"(epoch {epoch}); lower optim.lr, check the data, or raise max_nonfinite"
                        )
                lr_now = optimizer.param_groups[0]["lr"]
                with warnings.catch_warnings():  # a skipped first step warns "scheduler before optimizer"
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                step += 1
                samples_since += n_samples * ctx.world_size
                if ctx.main:
                    now = time.perf_counter()
                    sps = samples_since / max(now - t_last, 1e-9)
                    record = {"kind": "step", "step": step, "epoch": epoch, "loss": step_loss, "lr": lr_now,
                              "grad_norm": grad_norm, "samples_per_s": sps, "skipped": skipped, **rec}
                    if step % max(1, config.log_every) == 0 or step == total_steps:
                        metrics.log(record)
                        t_last, samples_since = now, 0
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr_now:.2e}", sps=f"{sps:.1f}")
                    if hooks.on_step is not None:
                        hooks.on_step(step, record)
                if config.ckpt_every > 0 and step % config.ckpt_every == 0 and consumed < len(plan):
                    checkpoint(epoch, consumed)
                if step >= total_steps:
                    done = True
                    break
            partial = consumed < len(plan)  # stopped by max_steps inside the epoch
            # ---- epoch end (also when max_steps cut it short) -----------------------------------
            record = {"kind": "epoch", "epoch": epoch, "step": step, "skipped": skipped}
            record.update({f"loss_{s}": ep_sums[s] / ep_counts[s] for s in ep_sums})
            if ctx.main:
                base.eval()
                if heldout is not None:
                    record.update(encoder_feature_norms(base, heldout.to(device)))
                if hooks.on_epoch_end is not None:
                    extra = hooks.on_epoch_end(epoch, base, dict(record))
                    if extra:
                        record.update(extra)
                set_train_mode(base)
                metrics.log(record)
                history.append(record)
                save_adapter(base, out_dir / f"adapter_epoch{epoch:03d}.safetensors", base_name=base_name,
                             epoch=epoch, step=step)
            if partial:
                checkpoint(epoch, consumed)
                break
            epoch += 1
            batch_in_epoch = 0
            checkpoint(epoch, 0)
        if bar is not None:
            bar.close()
        metrics.close()
        base.eval()
        adapter_path = None
        if ctx.main:
            adapter_path = out_dir / "adapter.safetensors"
            save_adapter(base, adapter_path, base_name=base_name, step=step, epochs=epoch,
                         train_config=to_dict(config))
        if ctx.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return TrainResult(model=base, adapter_path=adapter_path, out_dir=out_dir, steps=step, epochs=epoch,
                           skipped_steps=skipped, history=history, base_feature_norm=base_norms,
                           trainable_params=n_trainable)
    finally:
        if ctx.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (run-control keys ignored)."""
    ignore = {"out_dir", "progress", "tensorboard", "log_every", "max_steps"}
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def _all_finite(value: Tensor, ctx: _Dist) -> bool:
    """Whether ``value`` is finite on every rank (one all-reduce when distributed)."""
    ok = torch.isfinite(value).all().to(torch.float32).reshape(1)
    if ctx.world_size > 1:
        import torch.distributed as dist

        ok = ok.to("cuda" if value.is_cuda else "cpu")
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


__all__ = ["TrainHooks", "TrainResult", "TrainingDiverged", "build_datasets", "collate", "epoch_plan",
           "inject_encoder_lora", "load_base_model", "lr_at", "train"]
