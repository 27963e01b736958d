"""The four LoRA modes as strategy objects: how a :class:`~fin3r.lora.layer.LoRALinear` turns its
frozen base ``W, b`` and its update ``dW = s B A`` into an output.

* :data:`PLAIN` (``None``) -- ``y = x W^T + b + s B A drop(x)``; effective weight ``W + dW``.
* :data:`OUTPUT` (``"output"``, the released Fin3R adapters) -- ``y0 = x W^T + b``,
  ``y = y0 + s B A x``; the output is cut into ``slices`` equal parts along the feature axis (3
  for a fused ``qkv`` layer: q, k, v) and each part is rescaled per token to the norm of the same
  part of ``y0``: ``q <- q ||q0|| / (||q|| + 1e-6)``. The norm is over the whole slice (all
  heads). As in the released hand-written forward, no dropout is applied. The factor depends on
  the input: not mergeable, no effective weight.
* :data:`WEIGHT_ROW` / :data:`WEIGHT_FRO` (``"weight_row"`` / ``"weight_fro"``) -- the paper's
  ``W' = (W + dW) n(W) / n(W + dW)`` with ``n`` the norm of each output row (``(out, 1)``) or the
  Frobenius norm; bias unchanged; the gradient flows through ``n(W + dW)``. Mergeable. The
  forward never materialises ``W'``: ``y = (x W^T + s (drop(x) A^T) B^T) * g + b`` with
  ``g = n(W) / n(W + dW)``, and ``n(W + dW)^2 = n(W)^2 + 2 s <W, B A> + s^2 <B (A A^T), B>``
  from ``(out, r)`` products (``benchmarks/lora.py`` measures it against materialising ``W'``).

Each object says whether it ``mergeable``, computes ``forward(layer, x)`` and
``effective_weight(layer)``, and picks the default slice count of a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r.errors import Fin3rError

#: the layer a strategy computes for (a :class:`~fin3r.lora.layer.LoRALinear`; this module does
#: not import it, the layer imports the strategies)
LoRALinear = nn.Linear

#: eps of the released output re-normalisation
OUTPUT_EPS = 1e-6

_OUTPUT_MERGE_MSG = (
    "cannot merge a LoRA in mode 'output': each q/k/v slice is rescaled per token by "
    "||y0|| / ||y||, which depends on the input and is not a linear map, so no weight "
    "reproduces it (train with mode='weight_row' to get a mergeable adapter)"
)


class LoRAError(Fin3rError, ValueError):
    """A LoRA operation that cannot be done as asked (e.g. merging an ``output``-mode adapter)."""


class LoRAMode:
    """A LoRA mode (strategy object shared by every layer in that mode; holds no layer state)."""

    #: the name stored in adapter files (``None`` for plain LoRA)
    name: str | None = None
    #: whether the adapted layer is a linear map that :func:`~fin3r.lora.inject.merge_and_unload`
    #: can fold into the weight
    mergeable: bool = True
    #: why it cannot be merged (for the error)
    not_mergeable_reason: str = ""

    def default_slices(self, layer_name: str) -> int:
        """How many equal output parts a layer called ``layer_name`` re-normalises separately."""
        return 1

    def forward(self, layer: LoRALinear, x: Tensor) -> Tensor:
        """``x (..., in) -> (..., out)``, not merged."""
        raise NotImplementedError

    def effective_weight(self, layer: LoRALinear) -> Tensor:
        """The weight the layer applies, ``(out, in)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<LoRA mode {self.name!r}>"


class PlainLoRA(LoRAMode):
    """``y = x W^T + b + s B A drop(x)``."""

    name = None

    def forward(self, layer: LoRALinear, x: Tensor) -> Tensor:
        lora = F.linear(F.linear(layer.lora_dropout(x), layer.lora_A), layer.lora_B)
        return F.linear(x, layer.weight, layer.bias) + layer.scaling * lora

    def effective_weight(self, layer: LoRALinear) -> Tensor:
        return layer.base_weight() + layer.delta_weight()


class OutputRenorm(LoRAMode):
    """The released Fin3R forward: each output slice rescaled per token to its base norm."""

    name = "output"
    mergeable = False
    not_mergeable_reason = _OUTPUT_MERGE_MSG

    def default_slices(self, layer_name: str) -> int:
        return 3 if layer_name.rsplit(".", 1)[-1] == "qkv" else 1

    def forward(self, layer: LoRALinear, x: Tensor) -> Tensor:
        y0 = F.linear(x, layer.weight, layer.bias)
        y = y0 + layer.scaling * F.linear(F.linear(x, layer.lora_A), layer.lora_B)  # no dropout
        y0 = y0.unflatten(-1, (layer.slices, -1))
        y = y.unflatten(-1, (layer.slices, -1))
        ratio = y0.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + OUTPUT_EPS)
        return (y * ratio).flatten(-2)

    def effective_weight(self, layer: LoRALinear) -> Tensor:
        raise LoRAError("mode 'output' has no effective weight: its per-token rescaling ||y0||/||y|| "
                        "depends on the input, so the layer is not a linear map")


class WeightRenorm(LoRAMode):
    """``W' = (W + dW) n(W) / n(W + dW)``, ``n`` per output row (``"row"``) or Frobenius (``"fro"``)."""

    def __init__(self, norm: str) -> None:
        if norm not in ("row", "fro"):
            raise ValueError(f"WeightRenorm: norm must be 'row' or 'fro', got {norm!r}")
        self.norm = norm
        self.name = f"weight_{norm}"

    def norm_sq(self, W: Tensor) -> Tensor:
        """``n(W)^2``: ``(out, 1)`` for rows, ``()`` for Frobenius."""
        sq = W.square()
        return sq.sum(dim=1, keepdim=True) if self.norm == "row" else sq.sum()

    def base_norm_sq(self, layer: LoRALinear) -> Tensor:
        """``n(W)^2`` of the frozen base weight, cached on the layer until the weight changes in place."""
        W = layer.base_weight()
        # (an inference-mode tensor cannot be saved for backward: cache per inference mode)
        key = (W.data_ptr(), W._version, W.dtype, W.device, self.name, torch.is_inference_mode_enabled())
        if layer._norm_cache is None or layer._norm_cache[0] != key:
            with torch.no_grad():
                layer._norm_cache = (key, self.norm_sq(W))
        return layer._norm_cache[1]

    def adapted_norm_sq(self, layer: LoRALinear) -> Tensor:
        """``n(W + dW)^2`` from ``(out, r)`` products (never materialising ``W + dW``)."""
        W, A, B, s = layer.base_weight(), layer.lora_A, layer.lora_B, layer.scaling
        WAt = W @ A.t()  # (out, r)
        BG = B @ (A @ A.t())  # (out, r)
        if self.norm == "row":
            cross = (B * WAt).sum(dim=1, keepdim=True)
            quad = (BG * B).sum(dim=1, keepdim=True)
        else:
            cross, quad = (B * WAt).sum(), (BG * B).sum()
        return self.base_norm_sq(layer) + (2 * s) * cross + (s * s) * quad

    def gain(self, layer: LoRALinear) -> Tensor:
        """``g = n(W) / n(W + dW)``: ``(out,)`` for rows, ``()`` for Frobenius; differentiable
        w.r.t. ``lora_A`` and ``lora_B``; exactly 1 when ``lora_B == 0``."""
        n_sq = self.adapted_norm_sq(layer)
        g = (self.base_norm_sq(layer) / n_sq.clamp_min(torch.finfo(n_sq.dtype).tiny)).sqrt()
        return g.squeeze(-1) if self.norm == "row" else g

    def forward(self, layer: LoRALinear, x: Tensor) -> Tensor:
        g = self.gain(layer)
        # y = (x W^T + s x A^T B^T) g + b, written as y0 g + b (1 - g) + x A^T (s g B)^T with
        # y0 = x W^T + b so that g == 1, B == 0 gives y0 bit for bit
        y0 = F.linear(x, layer.weight, layer.bias)
        B_g = layer.lora_B * (layer.scaling * (g[:, None] if g.ndim else g))
        lora = F.linear(F.linear(layer.lora_dropout(x), layer.lora_A), B_g)
        if layer.bias is not None:
            lora = lora + (layer.bias * (1 - g)).to(lora.dtype)
        return torch.addcmul(lora, y0, g.to(y0.dtype))  # keep autocast's dtype

    def effective_weight(self, layer: LoRALinear) -> Tensor:
        g = self.gain(layer)
        g = g[:, None] if g.ndim else g
        return (layer.base_weight() + layer.delta_weight()) * g


PLAIN = PlainLoRA()
OUTPUT = OutputRenorm()
WEIGHT_ROW = WeightRenorm("row")
WEIGHT_FRO = WeightRenorm("fro")
#: mode name -> strategy
MODE_OBJECTS: dict[str | None, LoRAMode] = {m.name: m for m in (PLAIN, OUTPUT, WEIGHT_ROW, WEIGHT_FRO)}
#: the mode names
MODES = tuple(MODE_OBJECTS)


def get_mode(mode: str | None | LoRAMode) -> LoRAMode:
    """The strategy of a mode name (or the strategy itself); :class:`LoRAError` if unknown."""
    if isinstance(mode, LoRAMode):
        return mode
    if mode not in MODE_OBJECTS:
        raise LoRAError(f"unknown LoRA mode {mode!r}; choose one of {MODES}")
    return MODE_OBJECTS[mode]


__all__ = ["LoRAError", "LoRAMode", "PlainLoRA", "OutputRenorm", "WeightRenorm", "PLAIN", "OUTPUT", "WEIGHT_ROW",
           "WEIGHT_FRO", "MODE_OBJECTS", "MODES", "OUTPUT_EPS", "get_mode"]
