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


__all__ = ["autocast", "autocast_dtype"]
