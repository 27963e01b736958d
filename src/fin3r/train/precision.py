"""Mixed precision for training: which autocast dtype a config and device give, and the autocast
context the trunk runs under.

The trunk (encoder, decoder) runs under autocast; every family runs its heads in fp32 with
autocast off (as the official code does) and the losses are computed in fp32, so only the trunk's
matmuls and attention see bf16/fp16. fp16 needs a gradient scaler (the engine enables
``torch.amp.GradScaler`` for it); bf16 does not.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``auto``/``fp32``/``bf16``/``fp16``) on ``device``
    (``None`` = fp32, no autocast). ``auto``: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on the CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype`` (a no-op context when ``dtype`` is ``None``)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def frozen_bf16_candidates(blocks: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters ``frozen_weights: bf16`` stores in bf16: the frozen fp32 weights and biases
    of the linear layers inside ``blocks`` (the trunk's encoder and decoder blocks; nearly all of
    their parameters), which autocast runs in low precision on every device. Left in fp32: every
    trainable parameter, the layers LoRA adapts (their frozen weight enters the re-normalisation
    and the adapter's base hash), norms and layer scales, and everything outside ``blocks``
    (patch embeddings, the heads)."""
    from fin3r.lora import LoRALinear

    return [p for block in blocks for module in block.modules()
            if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear)
            for p in module.parameters(recurse=False) if not p.requires_grad and p.dtype == torch.float32]


def store_frozen_in_bf16(blocks: list[nn.Module]) -> int:
    """Store :func:`frozen_bf16_candidates` of ``blocks`` in bf16; returns the bytes saved. The
    blocks then need autocast to run (the engine checks ``precision``)."""
    params = frozen_bf16_candidates(blocks)
    for p in params:
        p.data = p.data.to(torch.bfloat16)
    return sum(p.numel() * 2 for p in params)


__all__ = ["autocast", "autocast_dtype", "frozen_bf16_candidates", "store_frozen_in_bf16"]
