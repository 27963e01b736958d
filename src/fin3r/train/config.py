"""The typed configuration of ``fin3r train`` (YAML + ``key=value`` overrides, see ``fin3r.config``).

Every field has a default that runs the synthetic-world recipe on the CPU; ``configs/*.yaml`` hold
the real-checkpoint recipes. Defaults follow the paper's recipe (``docs/training.md``) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fin3r.config import bounded


@dataclass
class ModelConfig:
    """Which base model to adapt.

    ``checkpoint``: the base weights -- an official ``.pth``, a Hugging Face folder, a fin3r
    ``.safetensors`` model, or a hub id in the local Hugging Face cache. A file that describes its
    own architecture (all of these, except a bare state_dict) is built as it describes itself:
    ``name`` does not override it (it must only be of the same family) and may be ``null``.
    ``name``: a registry name (``dust3r_512_dpt``, ``dust3r_tiny``, ...) -- the architecture of a
    checkpoint that carries none, or, without a checkpoint, a randomly initialised model (smoke
    tests only; a warning says so) -- or a model file itself.
    """

    name: str | None = "dust3r_tiny"
    checkpoint: str | None = None


@dataclass
class LoraConfig:
    """The adapter. Default: rank 8, alpha 8 on the encoder's ``qkv`` layers (the released Fin3R
    layout) with ``mode: weight_row`` -- the paper's re-normalisation, row-wise, which merges into
    the weights at export (zero inference overhead, official checkpoint format). ``mode: output``
    (per-token re-normalisation of q, k, v at run time) reproduces the released ``*_lora.pth``
    adapters but cannot be merged; ``mode: weight_fro`` is the Frobenius-norm form; ``mode: null``
    is plain LoRA."""

    targets: list[str] = field(default_factory=lambda: ["qkv"])
    rank: int = bounded(8, ge=1)
    alpha: float = bounded(8.0, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)
    mode: str | None = "weight_row"


@dataclass
class DistillConfig:
    """Monocular distillation (``fin3r.losses.distillation_loss``)."""

    weight: float = bounded(1.0, ge=0)
    lam: float = bounded(0.2, ge=0)
    rho: Literal["sq", "abs"] = "sq"
    align: Literal["auto", "scale", "affine"] = "auto"
    min_valid: int = bounded(100, ge=1)
    far_quantile: float | None = bounded(0.98, gt=0, le=1)
    both_heads: bool = True  # DUSt3R/MASt3R: supervise the second head of the (I, I) pair too


@dataclass
class ReplayConfig:
    """Multi-view replay (``fin3r.models.replay_loss``), the model family's own criterion."""

    weight: float = bounded(1.0, ge=0)
    alpha: float = bounded(0.2, ge=0)


@dataclass
class DataConfig:
    """Training data: a mixture of monocular (teacher-labelled) and multi-view replay batches.

    ``mono``: ``"world"`` (the synthetic world; its exact depth is the oracle teacher's label) or
    ``"labels"`` (images -- folders or ``sa_*.tar`` shards, one path or a list -- and the label
    cache written by ``fin3r label``: ``images_root``, ``labels_root``; ``mono_crop`` ``"random"``
    draws crop position and zoom up to ``mono_max_zoom`` per (seed, epoch, sample)).
    ``replay``: ``"world"`` (synthetic multi-view scenes) or ``"none"``; ``replay_roots``: real
    multi-view sets by name, ``{"hypersim": root, "tartanair": root}`` (read by
    ``fin3r.data.hypersim.HypersimViews`` / ``fin3r.data.tartanair.TartanAirViews``). Every
    replay source contributes ``replay_per_epoch`` samples per epoch. ``*_per_epoch``: samples drawn from
    each source per epoch (the paper: 20k SA-1B mono + 2k Hypersim/TartanAir replay).
    ``allow_no_replay``: training without any replay (naive LoRA, which forgets multi-view
    geometry) is refused unless this is true.
    Bad entries (corrupt image or label, a sidecar of the wrong shape) are skipped and counted per
    epoch (the epoch record's ``bad_samples``); training stops once more than ``max_bad_fraction``
    of an epoch's entries are bad. ``strict``: stop at the first bad entry instead.
    """

    mono: Literal["world", "labels"] = "world"
    replay: Literal["world", "none"] = "world"
    replay_roots: dict[str, str] = field(default_factory=dict)
    images_root: str | list[str] | None = None
    labels_root: str | None = None
    mono_crop: Literal["center", "random"] = "center"
    mono_max_zoom: float = bounded(1.0, ge=1)
    height: int = bounded(32, ge=1)
    width: int = bounded(48, ge=1)
    num_views: int = bounded(2, ge=1)
    world_mono_scenes: int = bounded(256, ge=1)
    world_replay_scenes: int = bounded(128, ge=1)
    mono_per_epoch: int = bounded(64, ge=0)
    replay_per_epoch: int = bounded(16, ge=0)
    batch_size: int = bounded(8, ge=1)
    num_workers: int = bounded(0, ge=0)
    heldout_images: int = bounded(8, ge=0)  # fixed held-out images for the per-epoch feature-norm signal
    allow_no_replay: bool = False
    max_bad_fraction: float = bounded(0.05, ge=0, le=1)
    strict: bool = False


@dataclass
class OptimConfig:
    """AdamW on the LoRA parameters only; linear warm-up then half-cycle cosine to ``min_lr``."""

    lr: float = bounded(1e-4, gt=0)
    min_lr: float = bounded(1e-6, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    betas: tuple[float, float] = bounded((0.9, 0.95), ge=0, lt=1)
    warmup_epochs: float = bounded(1.0, ge=0)
    epochs: int = bounded(10, ge=1)
    grad_clip: float = bounded(1.0, ge=0)  # 0 disables
    accum_steps: int = bounded(1, ge=1)


@dataclass
class TrainConfig:
    """``fin3r train`` configuration.

    ``precision``: ``auto`` = bf16 autocast on a GPU that supports it, else fp16 with a grad
    scaler, fp32 on the CPU; the heads and losses always run in fp32.
    ``grad_checkpointing``: activation checkpointing of the model's encoder and decoder blocks
    (``torch.utils.checkpoint``): far less activation memory for about one more forward pass.
    ``frozen_weights``: ``bf16`` stores the frozen weights of those blocks in bf16 (the LoRA
    parameters, the layers they adapt, the heads and the optimizer state stay fp32); needs
    ``precision`` bf16/fp16 (or ``auto`` on a GPU). ``ckpt_every``: write the resumable checkpoint every N optimizer steps
    (and at every epoch end). ``max_nonfinite``: abort after this many non-finite losses in a
    row (each one is skipped and counted). ``max_steps``: stop early (0 = run all epochs).
    """

    out_dir: str = "runs/fin3r"
    seed: int = bounded(0, ge=0)
    device: str = bounded("auto", device=True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_checkpointing: bool = False
    frozen_weights: Literal["fp32", "bf16"] = "fp32"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ckpt_every: int = bounded(200, ge=0)
    log_every: int = bounded(10, ge=1)
    max_nonfinite: int = bounded(20, ge=1)
    max_steps: int = bounded(0, ge=0)
    progress: bool = True
    tensorboard: bool = True


__all__ = ["DataConfig", "DistillConfig", "LoraConfig", "ModelConfig", "OptimConfig", "ReplayConfig", "TrainConfig"]
