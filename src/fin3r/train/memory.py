"""How much memory a training run needs, estimated before it runs (``fin3r train CONFIG --dry-run``).

The model is built on the ``meta`` device (no weights are allocated, nothing is downloaded), LoRA
is injected as training does, and one micro-batch of each kind -- a mono image and a replay sample
of ``data.num_views`` views, at ``data.height x data.width`` -- is traced forward on the meta
device while a ``saved_tensors_hooks`` pair records every tensor autograd keeps for the backward
pass (unique storages, parameters excluded). That is the activation memory of one sample; the
parts of the model in front of the first trainable tensor save nothing, exactly as in training.

With activation checkpointing the blocks the model declares (``checkpoint_blocks()``) keep only
their inputs, and the backward pass recomputes one block at a time:
``saved outside the blocks + the blocks' inputs + the largest one block saves``.

The loss is not traced (it needs real values); its per-pixel terms are small next to the trunk's.
Activations are traced in fp32. Under bf16/fp16 autocast the trunk's activations are smaller,
but autocast also keeps, for the backward pass, a low-precision copy of every frozen weight it
casts: once per micro-batch, not per sample, and only until a checkpointed block is left. So
with checkpointing the fp32 trace bounds the autocast run; without it the total adds those
copies (:attr:`MemoryEstimate.autocast_weight_copies`) when the config runs autocast.
``benchmarks/train.py`` measures real peaks on the CPU and prints the ratio estimate / measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator
from unittest import mock

import torch
from torch import Tensor, nn

from fin3r.lora import lora_modules
from fin3r.train.config import TrainConfig
from fin3r.train.precision import frozen_bf16_candidates

GIB = 2**30
#: GPU sizes the dry-run answers "fits?" for (GiB)
GPU_SIZES_GIB = (24, 48, 80)
#: what a run needs beyond weights, gradients, optimizer state and saved activations (the CUDA
#: context, allocator fragmentation, the transient tensors of the largest op) as a share of the total
HEADROOM = 0.15


class _MetaAutocast(torch.autocast):
    """``torch.autocast`` that accepts ``device_type="meta"`` (as the CPU's): the models switch
    autocast off around their heads, and autocast has no meta flavour."""

    def __init__(self, device_type: str, *args: Any, **kwargs: Any):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@dataclass
class ActivationTrace:
    """What autograd keeps for backward during one forward pass (bytes of unique storages):
    ``total`` without checkpointing; with it, ``kept`` (what is saved outside the checkpointable
    blocks, and the blocks' inputs) and ``largest_block`` (the most one block saves inside, live
    while that block is recomputed)."""

    total: int = 0
    kept: int = 0
    largest_block: int = 0

    @property
    def checkpointed(self) -> int:
        """Peak of saved activations with every checkpointable block checkpointed."""
        return self.kept + self.largest_block


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


@contextlib.contextmanager
def trace_saved_tensors(model: nn.Module, blocks: list[nn.Module]) -> Iterator[ActivationTrace]:
    """Record what autograd saves during the forward passes run inside the context (the trace is
    complete when the context exits)."""
    trace = ActivationTrace()
    params = {_storage_key(p) for p in model.parameters()} | {_storage_key(b) for b in model.buffers()}
    saved: dict[int, int] = {}
    kept: dict[int, int] = {}  # storage -> bytes, kept with checkpointing
    stack: list[dict[str, Any]] = []

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in params and key not in saved:
            saved[key] = t.untyped_storage().nbytes()
            if stack:
                stack[-1]["saved"] += saved[key]
            else:
                kept[key] = saved[key]
        return t

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        stack.append({"saved": 0, "inputs": [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]})

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        frame = stack.pop()
        outs = output if isinstance(output, (tuple, list)) else (output,)
        if not any(isinstance(o, Tensor) and o.requires_grad for o in outs):
            return  # no graph through this block: nothing kept, checkpointed or not
        for a in frame["inputs"]:
            if _storage_key(a) not in params:
                kept[_storage_key(a)] = a.untyped_storage().nbytes()
        trace.largest_block = max(trace.largest_block, frame["saved"])

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(pre, with_kwargs=True),
                                           b.register_forward_hook(post, with_kwargs=True))]
    try:
        with mock.patch.object(torch, "autocast", _MetaAutocast), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield trace
    finally:
        for h in handles:
            h.remove()
        trace.total, trace.kept = sum(saved.values()), sum(kept.values())


@dataclass
class MemoryEstimate:
    """What a run of a config needs per GPU (bytes). ``activations[kind]`` / ``activations_ckpt``:
    one sample's saved activations without / with checkpointing, ``kind`` = ``mono`` or ``replay``
    (the micro-batches run one after the other, so the larger one counts)."""

    model: str
    height: int
    width: int
    views: int
    batch_size: int
    params_total: int
    params_trainable: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    bf16_saving: int = 0
    autocast_weight_copies: int = 0
    autocast: bool = False
    grad_checkpointing: bool = False
    frozen_weights: str = "fp32"
    activations: dict[str, int] = field(default_factory=dict)
    activations_ckpt: dict[str, int] = field(default_factory=dict)

    def per_sample(self, checkpointing: bool) -> int:
        return max((self.activations_ckpt if checkpointing else self.activations).values())

    def total(self, checkpointing: bool) -> int:
        """Weights (``frozen_weights`` as configured) + gradients + optimizer state + ``batch_size``
        samples' activations, plus :data:`HEADROOM`."""
        weights = self.weight_bytes - (self.bf16_saving if self.frozen_weights == "bf16" else 0)
        need = weights + self.grad_bytes + self.optimizer_bytes + self.batch_size * self.per_sample(checkpointing)
        if self.autocast and not checkpointing:
            need += self.autocast_weight_copies if self.frozen_weights == "fp32" else self.adapted_copies
        return int(need / (1.0 - HEADROOM))

    @property
    def adapted_copies(self) -> int:
        """Low-precision copies autocast keeps of the LoRA-adapted layers' fp32 weights."""
        return self.autocast_weight_copies - self.bf16_saving

    def fits(self, gib: float, checkpointing: bool) -> bool:
        return self.total(checkpointing) <= gib * GIB


def build_on_meta(config: TrainConfig) -> nn.Module:
    """The model ``config.model.name`` names (a registry architecture), built on the meta device,
    with LoRA injected and the training modes set as :func:`fin3r.train.train` does."""
    from fin3r.errors import Fin3rError
    from fin3r.models import MODEL_CONFIGS, build_model
    from fin3r.train.model import inject_encoder_lora, set_train_mode

    if config.model.name not in MODEL_CONFIGS:
        raise Fin3rError(f"--dry-run needs a registry model name (one of {', '.join(MODEL_CONFIGS)}), "
                         f"got model.name={config.model.name!r}")
    with torch.device("meta"):
        model = build_model(config.model.name)
        inject_encoder_lora(model, config)
    set_train_mode(model)
    return model


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks the model runs under activation checkpointing (none if it declares none)."""
    return list(model.checkpoint_blocks()) if hasattr(model, "checkpoint_blocks") else []


def trace_sample(model: nn.Module, kind: str, height: int, width: int, views: int,
                 device: torch.device | str = "meta") -> ActivationTrace:
    """The activations one ``kind`` sample (``mono`` or ``replay``) saves (batch 1)."""
    blocks = checkpoint_blocks(model)
    with trace_saved_tensors(model, blocks) as trace:
        if kind == "mono":
            model.predict_mono(torch.zeros(1, 3, height, width, device=device))
        else:
            model.predict_views(torch.zeros(1, views, 3, height, width, device=device))
    return trace


def estimate_memory(config: TrainConfig, model: nn.Module | None = None) -> MemoryEstimate:
    """Estimate what ``config`` needs per GPU (see the module docstring). ``model``: an already
    built meta model (default: :func:`build_on_meta`)."""
    model = model if model is not None else build_on_meta(config)
    d = config.data
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    kinds = ["mono"] + (["replay"] if (d.replay != "none" or d.replay_roots) and d.replay_per_epoch > 0 else [])
    traces = {k: trace_sample(model, k, d.height, d.width, d.num_views) for k in kinds}
    return MemoryEstimate(
        model=config.model.name, height=d.height, width=d.width, views=d.num_views, batch_size=d.batch_size,
        params_total=sum(p.numel() for p in model.parameters()), params_trainable=n_trainable,
        weight_bytes=sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers()),
        grad_bytes=n_trainable * 4,
        optimizer_bytes=n_trainable * 8,  # AdamW: exp_avg + exp_avg_sq in fp32
        bf16_saving=sum(p.numel() * 2 for p in frozen_bf16_candidates(checkpoint_blocks(model))),
        autocast_weight_copies=sum(p.numel() * 2 for p in frozen_bf16_candidates(checkpoint_blocks(model)))
        + sum(m.weight.numel() * 2 for m in lora_modules(model).values()),
        autocast=config.precision != "fp32",  # auto: bf16/fp16 autocast on the GPUs this estimate is for
        grad_checkpointing=config.grad_checkpointing, frozen_weights=config.frozen_weights,
        activations={k: t.total for k, t in traces.items()},
        activations_ckpt={k: t.checkpointed for k, t in traces.items()},
    )


def format_estimate(e: MemoryEstimate) -> str:
    """The dry-run report: parameters, optimizer state, activations per sample, fits per GPU size."""
    def gib(n: float) -> str:
        return f"{n / GIB:.2f} GiB"

    lines = [
        f"model {e.model}: {e.params_total:,} parameters, {e.params_trainable:,} trainable "
        f"({e.params_trainable / max(1, e.params_total):.4%})",
        f"weights {gib(e.weight_bytes)} (fp32; frozen_weights=bf16 saves {gib(e.bf16_saving)}), "
        f"gradients {gib(e.grad_bytes)}, AdamW state {gib(e.optimizer_bytes)}",
        f"activations per sample at {e.height}x{e.width}, {e.views} views (traced in fp32):",
    ]
    for kind in e.activations:
        lines.append(f"  {kind:7s} {gib(e.activations[kind])} without checkpointing, "
                     f"{gib(e.activations_ckpt[kind])} with ({e.activations_ckpt[kind] / max(1, e.activations[kind]):.2f}x)")
    for ckpt in (False, True):
        total = e.total(ckpt)
        fits = ", ".join(f"{g} GB {'yes' if e.fits(g, ckpt) else 'no'}" for g in GPU_SIZES_GIB)
        mark = "  <- this config" if ckpt == e.grad_checkpointing else ""
        lines.append(f"batch {e.batch_size} per GPU, frozen weights {e.frozen_weights}, checkpointing "
                     f"{'on ' if ckpt else 'off'}: about {gib(total)} (incl. {HEADROOM:.0%} headroom) -> fits {fits}{mark}")
    if e.autocast:
        lines.append(f"(with autocast and checkpointing off, the total includes the {gib(e.autocast_weight_copies)} of "
                     "low-precision weight copies autocast keeps for backward, once per micro-batch)")
    return "\n".join(lines)


__all__ = ["ActivationTrace", "GPU_SIZES_GIB", "MemoryEstimate", "build_on_meta", "checkpoint_blocks",
           "estimate_memory", "format_estimate", "trace_sample", "trace_saved_tensors"]
