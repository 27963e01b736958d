"""The LoRA layer: a frozen ``nn.Linear`` plus a (re-normalised) low-rank update.

A :class:`LoRALinear` *is* an ``nn.Linear`` that shares the frozen ``weight``/``bias`` of the layer
it wraps and adds two trainable matrices ``lora_A (r, in)`` (Kaiming-uniform) and
``lora_B (out, r)`` (zeros), scaled by ``s = alpha / r``. Because ``B = 0`` at start the wrapped
model computes exactly what the base model computes (``"output"`` mode: up to its ``1e-6`` eps).
State-dict keys of the wrapped layer stay ``<name>.weight`` / ``<name>.bias`` and gain
``<name>.lora_A`` / ``<name>.lora_B``. What the layer computes is its mode's strategy
(:mod:`fin3r.lora.modes`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.lora.modes import LoRAError, WeightRenorm, get_mode


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a (re-normalised) low-rank update.

    Args:
        base: the layer to wrap; its ``weight``/``bias`` Parameters are shared (not copied) and
            frozen.
        rank: ``r``.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout probability on the LoRA input path (not used in ``"output"`` mode).
        mode: ``None``, ``"output"``, ``"weight_row"`` or ``"weight_fro"`` (:mod:`fin3r.lora.modes`).
        slices: number of equal output parts re-normalised separately in ``"output"`` mode
            (3 for a fused ``qkv`` layer; :func:`inject_lora` sets it from the layer name).

    Shapes: input ``(..., in)``, output ``(..., out)``; ``lora_A (r, in)``, ``lora_B (out, r)``.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        mode: str | None = "weight_row",
        *,
        slices: int = 1,
    ) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: share the base parameters instead
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise LoRAError(f"LoRALinear wraps a plain nn.Linear, got {type(base).__name__}")
        strategy = get_mode(mode)
        if int(rank) < 1:
            raise LoRAError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise LoRAError(f"LoRA dropout must be in [0, 1), got {dropout}")
        if slices < 1 or base.out_features % slices:
            raise LoRAError(
                f"output size {base.out_features} cannot be cut into {slices} equal slices"
            )
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.slices = int(rank), float(alpha), int(slices)
        #: the mode's strategy object (:mod:`fin3r.lora.modes`); ``mode`` is its name
        self.strategy = strategy
        self.mode = strategy.name
        self.scaling = self.alpha / self.rank
        self.dropout_p = float(dropout)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False
        # the base weight while merged (exact unmerge); moves with .to(), not in the state_dict
        self.register_buffer("_unmerged_weight", None, persistent=False)
        self._norm_cache: tuple[Any, Tensor] | None = None

    # --- the maths (delegated to the mode's strategy) ---------------------------------------
    def base_weight(self) -> Tensor:
        """The frozen base weight ``W`` (also while merged)."""
        return self._unmerged_weight if self.merged else self.weight

    def gain(self) -> Tensor:
        """``g = n(W) / n(W + dW)`` of the weight modes: ``(out,)`` for ``weight_row``, ``()`` for
        ``weight_fro``. Differentiable w.r.t. ``lora_A`` and ``lora_B``; 1 when ``lora_B == 0``."""
        if not isinstance(self.strategy, WeightRenorm):
            raise LoRAError(f"gain() is defined for the weight modes, not {self.mode!r}")
        return self.strategy.gain(self)

    def delta_weight(self) -> Tensor:
        """``dW = s B A`` ``(out, in)``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def effective_weight(self) -> Tensor:
        """The weight this layer applies, ``(out, in)``: ``W + dW`` (plain) or ``W'`` (weight
        modes). ``"output"`` mode has no such weight (the map is not linear)."""
        return self.strategy.effective_weight(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return self.strategy.forward(self, x)

    # --- merging ---------------------------------------------------------------------------
    def merge(self) -> None:
        """Write the adapted weight into ``weight`` (the base weight is kept for :meth:`unmerge`)."""
        if self.merged:
            return
        if not self.strategy.mergeable:
            raise LoRAError(self.strategy.not_mergeable_reason)
        with torch.no_grad():
            merged = self.effective_weight().to(self.weight.dtype)
            self._unmerged_weight = self.weight.detach().clone()
            self.weight.copy_(merged)
        self.merged = True

    def unmerge(self) -> None:
        """Restore the base weight bit for bit."""
        if not self.merged:
            return
        with torch.no_grad():
            self.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing this layer's merged map (shares no parameters)."""
        if not self.strategy.mergeable:
            self.merge()  # raises the explanation
        with torch.no_grad():
            weight = self.weight if self.merged else self.effective_weight()
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                            device=weight.device, dtype=self.weight.dtype)  # fmt: skip
            lin.weight.copy_(weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.requires_grad_(False)
        return lin

    def config(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "mode": self.mode,
            "dropout": self.dropout_p,
            "slices": self.slices,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha}, "
            f"mode={self.mode!r}, dropout={self.dropout_p}, slices={self.slices}, "
            f"merged={self.merged}"
        )


__all__ = ["LoRALinear"]
