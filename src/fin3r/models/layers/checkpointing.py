"""Activation checkpointing of transformer blocks (``torch.utils.checkpoint``, non-reentrant).

A model marks the blocks between its image and its heads (encoder and decoder blocks) with
``block.grad_checkpointing = True`` (``Reconstructor.set_grad_checkpointing``) and calls every
block through :func:`run_block`: while gradients are computed, such a block keeps only its
inputs, and its inside is recomputed during the backward pass -- the same outputs and gradients
for about one more forward pass of the blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)``, checkpointed when the block is marked and gradients are on."""
    if getattr(block, "grad_checkpointing", False) and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


__all__ = ["run_block"]
