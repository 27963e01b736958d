"""LoRA for frozen ``nn.Linear`` layers, with Fin3R's re-normalisation, merging and adapter I/O.

A :class:`LoRALinear` *is* an ``nn.Linear`` that shares the frozen ``weight``/``bias`` of the layer
it wraps and adds two trainable matrices ``lora_A (r, in)`` (Kaiming-uniform) and
``lora_B (out, r)`` (zeros), scaled by ``s = alpha / r``. Because ``B = 0`` at start the wrapped
model computes exactly what the base model computes (``"output"`` mode: up to its ``1e-6`` eps,
see below). State-dict keys of the wrapped layer stay ``<name>.weight`` / ``<name>.bias`` and gain
``<name>.lora_A`` / ``<name>.lora_B``.

Re-normalisation modes (``mode=``):

* ``None`` -- plain LoRA: ``y = x W^T + b + s B A drop(x)``.
* ``"output"`` -- the released Fin3R adapters: ``y0 = x W^T + b``, ``y = y0 + s B A x``; the output
  is cut into ``slices`` equal parts along the feature axis (3 for a fused ``qkv`` layer: q, k, v)
  and each part is rescaled per token to the norm of the same part of ``y0``:
  ``q <- q ||q0|| / (||q|| + 1e-6)``. The norm is over the whole slice (all heads). As in the
  released hand-written forward, **no dropout** is applied in this mode. A non-``qkv`` layer in this
  mode uses ``slices=1`` (the whole output is one part). The factor depends on the input, so the
  adapter cannot be merged into the weights.
* ``"weight_row"`` / ``"weight_fro"`` -- the paper's ``W' = (W + dW) n(W) / n(W + dW)`` with
  ``dW = s B A`` and ``n`` the norm of each output row (``(out, 1)``) or the Frobenius norm; bias
  unchanged; the gradient flows through ``n(W + dW)``. Mergeable: after :func:`merge_and_unload`
  the model is a plain model with zero inference overhead. The forward never materialises
  ``W'``: it computes ``y = (x W^T + s (drop(x) A^T) B^T) * g + b`` with ``g = n(W) / n(W + dW)``,
  and ``n(W + dW)^2 = n(W)^2 + 2 s <W, B A> + s^2 <B (A A^T), B>`` from ``(out, r)`` products
  (``benchmarks/lora.py`` measures this against materialising ``W'``).

Adapter files are safetensors with the tensors ``<name>.lora_A`` / ``<name>.lora_B`` and one
metadata entry ``"fin3r_adapter"`` holding a JSON header (see :func:`save_adapter`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fin3r import __version__
from fin3r.errors import CheckpointError, Fin3rError
from fin3r.io import atomic_write, safe_torch_load

log = logging.getLogger(__name__)

MODES = (None, "output", "weight_row", "weight_fro")
#: eps of the released output re-normalisation (``renorm_lora.py``)
OUTPUT_EPS = 1e-6
#: version of the adapter file layout written by :func:`save_adapter`
FORMAT_VERSION = 1
#: metadata key of the JSON header inside the safetensors file
HEADER_KEY = "fin3r_adapter"
#: the configuration of the released Fin3R ``*_lora.pth`` adapters (their LoraConfig had
#: ``lora_dropout=0.1``, which the released re-normalised forward never applies)
RELEASED_CONFIG = {"rank": 8, "alpha": 8.0, "mode": "output", "dropout": 0.0}

__all__ = [
    "MODES",
    "RELEASED_CONFIG",
    "LoRAError",
    "LoRALinear",
    "inject_lora",
    "lora_modules",
    "lora_parameters",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "adapter_state_dict",
    "save_adapter",
    "load_adapter",
    "read_adapter",
    "import_fin3r_lora",
    "apply_fin3r_lora",
    "rename_prefixes",
    "base_hash",
]


_OUTPUT_MERGE_MSG = (
    "cannot merge a LoRA in mode 'output': each q/k/v slice is rescaled per token by "
    "||y0|| / ||y||, which depends on the input and is not a linear map, so no weight "
    "reproduces it (train with mode='weight_row' to get a mergeable adapter)"
)


class LoRAError(Fin3rError, ValueError):
    """A LoRA operation that cannot be done as asked (e.g. merging an ``output``-mode adapter)."""


def _check_mode(mode: str | None) -> None:
    if mode not in MODES:
        raise LoRAError(f"unknown LoRA mode {mode!r}; choose one of {MODES}")


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a (re-normalised) low-rank update.

    Args:
        base: the layer to wrap; its ``weight``/``bias`` Parameters are shared (not copied) and
            frozen.
        rank: ``r``.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout probability on the LoRA input path (not used in ``"output"`` mode).
        mode: ``None``, ``"output"``, ``"weight_row"`` or ``"weight_fro"`` (module docstring).
        slices: number of equal output parts re-normalised separately in ``"output"`` mode
            (3 for a fused ``qkv`` layer; :func:`inject_lora` sets it from the layer name).

    Shapes: input ``(..., in)``, output ``(..., out)``; ``lora_A (r, in)``, ``lora_B (out, r)``.
    """

    #: how the weight modes compute ``n(W + dW)``: ``"gram"`` (from ``(out, r)`` products) or
    #: ``"dense"`` (materialise ``W + dW``); and whether the forward scales the output by ``g``
    #: (``"gain"``) or multiplies by the materialised ``W'`` (``"materialize"``). Class-level
    #: knobs for ``benchmarks/lora.py``; the defaults are the measured-fastest.
    norm_impl: str = "gram"
    forward_impl: str = "gain"

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
        _check_mode(mode)
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
        self.rank, self.alpha, self.mode, self.slices = int(rank), float(alpha), mode, int(slices)
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

    # --- the maths ------------------------------------------------------------------------
    def _base_weight(self) -> Tensor:
        return self._unmerged_weight if self.merged else self.weight

    def _norm_sq(self, W: Tensor) -> Tensor:
        """``n(W)^2``: ``(out, 1)`` for ``weight_row``, ``()`` for ``weight_fro``."""
        sq = W.square()
        return sq.sum(dim=1, keepdim=True) if self.mode == "weight_row" else sq.sum()

    def _base_norm_sq(self) -> Tensor:
        """``n(W)^2`` of the frozen base weight, cached until the weight changes in place."""
        W = self._base_weight()
        # (an inference-mode tensor cannot be saved for backward: cache per inference mode)
        key = (W.data_ptr(), W._version, W.dtype, W.device, self.mode, torch.is_inference_mode_enabled())
        if self._norm_cache is None or self._norm_cache[0] != key:
            with torch.no_grad():
                self._norm_cache = (key, self._norm_sq(W))
        return self._norm_cache[1]

    def gain(self) -> Tensor:
        """``g = n(W) / n(W + dW)``: ``(out,)`` for ``weight_row``, ``()`` for ``weight_fro``.

        Differentiable w.r.t. ``lora_A`` and ``lora_B``; exactly 1 when ``lora_B == 0``.
        """
        if self.mode not in ("weight_row", "weight_fro"):
            raise LoRAError(f"gain() is defined for the weight modes, not {self.mode!r}")
        W, A, B, s = self._base_weight(), self.lora_A, self.lora_B, self.scaling
        n0_sq = self._base_norm_sq()
        if self.norm_impl == "dense":
            n_sq = self._norm_sq(W + s * (B @ A))
        else:
            WAt = W @ A.t()  # (out, r)
            BG = B @ (A @ A.t())  # (out, r)
            if self.mode == "weight_row":
                cross = (B * WAt).sum(dim=1, keepdim=True)
                quad = (BG * B).sum(dim=1, keepdim=True)
            else:
                cross, quad = (B * WAt).sum(), (BG * B).sum()
            n_sq = n0_sq + (2 * s) * cross + (s * s) * quad
        g = (n0_sq / n_sq.clamp_min(torch.finfo(n_sq.dtype).tiny)).sqrt()
        return g.squeeze(-1) if self.mode == "weight_row" else g

    def delta_weight(self) -> Tensor:
        """``dW = s B A`` ``(out, in)``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def effective_weight(self) -> Tensor:
        """The weight this layer applies, ``(out, in)``: ``W + dW`` (plain) or ``W'`` (weight
        modes). ``"output"`` mode has no such weight (the map is not linear)."""
        W = self._base_weight()
        if self.mode == "output":
            raise LoRAError(
                "mode 'output' has no effective weight: its per-token rescaling ||y0||/||y|| "
                "depends on the input, so the layer is not a linear map"
            )
        if self.mode is None:
            return W + self.delta_weight()
        g = self.gain()
        g = g[:, None] if self.mode == "weight_row" else g
        return (W + self.delta_weight()) * g

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if self.mode == "output":
            return self._forward_output(x)
        if self.mode is None:
            lora = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
            return F.linear(x, self.weight, self.bias) + self.scaling * lora
        if self.forward_impl == "materialize":
            # materialises W' (slower, and not bit-exact at init); kept for the benchmark
            return F.linear(x, self.effective_weight(), self.bias)
        g = self.gain()
        # y = (x W^T + s x A^T B^T) g + b, written as y0 g + b (1 - g) + x A^T (s g B)^T with
        # y0 = x W^T + b so that g == 1, B == 0 gives y0 bit for bit
        y0 = F.linear(x, self.weight, self.bias)
        B_g = self.lora_B * (self.scaling * (g[:, None] if g.ndim else g))
        lora = F.linear(F.linear(self.lora_dropout(x), self.lora_A), B_g)
        if self.bias is not None:
            lora = lora + (self.bias * (1 - g)).to(lora.dtype)
        return torch.addcmul(lora, y0, g.to(y0.dtype))  # keep autocast's dtype

    def _forward_output(self, x: Tensor) -> Tensor:
        y0 = F.linear(x, self.weight, self.bias)
        y = y0 + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)  # no dropout
        y0 = y0.unflatten(-1, (self.slices, -1))
        y = y.unflatten(-1, (self.slices, -1))
        ratio = y0.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + OUTPUT_EPS)
        return (y * ratio).flatten(-2)

    # --- merging ---------------------------------------------------------------------------
    def merge(self) -> None:
        """Write the adapted weight into ``weight`` (the base weight is kept for :meth:`unmerge`)."""
        if self.merged:
            return
        if self.mode == "output":
            raise LoRAError(_OUTPUT_MERGE_MSG)
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
        if self.mode == "output":
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


# --- model-level operations ----------------------------------------------------------------
def _matches(name: str, pattern: str) -> bool:
    """Exact name, glob on the full name, or glob on its trailing components (``"qkv"``)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def _default_slices(name: str, mode: str | None) -> int:
    return 3 if mode == "output" and name.rsplit(".", 1)[-1] == "qkv" else 1


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_lora(
    model: nn.Module,
    targets: Iterable[str],
    rank: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    mode: str | None = "weight_row",
    slices: int | None = None,
) -> list[str]:
    """Wrap the matching ``nn.Linear`` modules of ``model`` in :class:`LoRALinear` and freeze
    every other parameter.

    Args:
        targets: exact module names or glob patterns, matched against the full module name or
            its trailing components (``"qkv"`` matches ``enc_blocks.3.attn.qkv``). Every pattern
            must match at least one ``nn.Linear``.
        slices: ``"output"`` mode slice count; ``None``: 3 for layers named ``qkv``, else 1.

    Returns:
        The wrapped module names, in model order.
    """
    _check_mode(mode)
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise LoRAError("inject_lora: no targets given")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = [n for n in linears if any(_matches(n, t) for t in targets)]
    for t in targets:
        if not any(_matches(n, t) for n in linears):
            raise LoRAError(f"LoRA target {t!r} matches no nn.Linear module of {type(model).__name__}")
    already = [n for n in names if isinstance(linears[n], LoRALinear)]
    if already:
        raise LoRAError(f"module {already[0]!r} already has a LoRA adapter")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        k = slices if slices is not None else _default_slices(n, mode)
        _set_submodule(model, n, LoRALinear(linears[n], rank, alpha, dropout, mode, slices=k))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA matrices (``lora_A``, ``lora_B`` of every wrapped layer)."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its layer's weight (exact inverse: :func:`unmerge_lora`)."""
    mods = lora_modules(model)
    for n, m in mods.items():  # check all first: no half-merged model
        if m.mode == "output":
            raise LoRAError(f"{n}: " + _OUTPUT_MERGE_MSG)
    for m in mods.values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (restores the base weights bit for bit)."""
    for m in lora_modules(model).values():
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` holding the merged weight.

    The result has the base model's architecture and state-dict keys (loadable by the original
    code) and no inference overhead. Parameters stay frozen. Raises :class:`LoRAError` for
    ``"output"``-mode adapters, which cannot be merged.
    """
    mods = lora_modules(model)
    for n, m in mods.items():
        if m.mode == "output":
            raise LoRAError(f"{n}: " + _OUTPUT_MERGE_MSG)
    for n, m in mods.items():
        _set_submodule(model, n, m.to_linear())
    return model



# --- adapter files --------------------------------------------------------------------------
def _float_bytes(t: Tensor) -> bytes:
    if t.device.type == "meta":
        raise LoRAError("cannot hash weights on the meta device; load real weights first")
    return t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def _module_hash(module: nn.Linear) -> str:
    W = module._base_weight() if isinstance(module, LoRALinear) else module.weight
    h = hashlib.sha256()
    h.update(repr(tuple(W.shape)).encode())
    h.update(_float_bytes(W))
    if module.bias is not None:
        h.update(_float_bytes(module.bias))
    return h.hexdigest()[:16]


def _combine_hashes(per_module: dict[str, str]) -> str:
    h = hashlib.sha256()
    for n in sorted(per_module):
        h.update(f"{n}={per_module[n]};".encode())
    return h.hexdigest()[:16]


def base_hash(model: nn.Module, names: Iterable[str]) -> str:
    """A short hash of the (unmerged) base ``weight``/``bias`` of the named linear layers, taken
    over their float32 values (independent of storage dtype when values are equal)."""
    return _combine_hashes({n: _module_hash(model.get_submodule(n)) for n in names})


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``{"<name>.lora_A": (r, in), "<name>.lora_B": (out, r)}`` for every wrapped layer."""
    out = {}
    for n, m in lora_modules(model).items():
        out[f"{n}.lora_A"] = m.lora_A.detach()
        out[f"{n}.lora_B"] = m.lora_B.detach()
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike, base_name: str = "", **meta: Any) -> dict:
    """Write the adapters of ``model`` alone as safetensors (atomically).

    The metadata entry ``"fin3r_adapter"`` is a JSON object with ``format_version``,
    ``fin3r_version``, ``targets`` (module names), ``rank``, ``alpha``, ``mode``, ``dropout``
    (``null`` if they differ between layers), ``modules`` (per-target ``rank``, ``alpha``,
    ``mode``, ``dropout``, ``slices``), ``base_name``, ``base_hash`` (see :func:`base_hash`),
    ``base_hashes`` (per target) and any extra ``meta`` (JSON-serialisable). Returns the header.
    """
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise LoRAError("save_adapter: the model has no LoRA adapters (call inject_lora first)")
    configs = {n: m.config() for n, m in mods.items()}
    hashes = {n: _module_hash(m) for n, m in mods.items()}

    def common(key: str) -> Any:
        values = {json.dumps(c[key]) for c in configs.values()}
        return next(iter(configs.values()))[key] if len(values) == 1 else None

    reserved = {"format_version", "fin3r_version", "targets", "rank", "alpha", "mode", "dropout",
                "modules", "base_name", "base_hash", "base_hashes"}  # fmt: skip
    clash = sorted(reserved & set(meta))
    if clash:
        raise LoRAError(f"save_adapter: metadata key '{clash[0]}' is reserved for the header")
    header = {
        "format_version": FORMAT_VERSION,
        "fin3r_version": __version__,
        "targets": list(mods),
        "rank": common("rank"),
        "alpha": common("alpha"),
        "mode": common("mode"),
        "dropout": common("dropout"),
        "modules": configs,
        "base_name": base_name,
        "base_hash": _combine_hashes(hashes),
        "base_hashes": hashes,
        **meta,
    }
    try:
        text = json.dumps(header)
    except TypeError as e:
        raise LoRAError(f"save_adapter: extra metadata must be JSON-serialisable ({e})") from None
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in adapter_state_dict(model).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={HEADER_KEY: text}))
    return header


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read an adapter file: ``(tensors, header)``; raises :class:`CheckpointError` if it is not
    a fin3r adapter (no or unreadable header, unknown format version)."""
    from safetensors import safe_open

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: adapter file not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    if HEADER_KEY not in meta:
        raise CheckpointError(f"{path}: no '{HEADER_KEY}' header in the safetensors metadata")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: header '{HEADER_KEY}' is not valid JSON ({e})") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: adapter format_version {version!r}; this fin3r reads {FORMAT_VERSION}"
        )
    for key in ("targets", "modules", "base_hashes"):
        if key not in header:
            raise CheckpointError(f"{path}: header has no '{key}'")
    return tensors, header


def _check_and_load(
    model: nn.Module,
    tensors: dict[str, Tensor],
    configs: dict[str, dict],
    source: str,
    base_hashes: dict[str, str] | None = None,
) -> None:
    """Validate everything, then inject where needed and copy. Never loads partially."""
    targets = list(configs)
    modules = dict(model.named_modules())
    for n in targets:
        if n not in modules:
            raise CheckpointError(f"{source}: target '{n}' is not a module of the model")
        if not isinstance(modules[n], nn.Linear):
            raise CheckpointError(
                f"{source}: target '{n}' is a {type(modules[n]).__name__}, not an nn.Linear"
            )
    expected = {f"{n}.lora_{ab}" for n in targets for ab in "AB"}
    for k in sorted(expected - set(tensors)):
        raise CheckpointError(f"{source}: missing tensor '{k}'")
    for k in sorted(set(tensors) - expected):
        raise CheckpointError(f"{source}: unexpected tensor '{k}' (not a listed target's A/B)")
    extra = sorted(set(lora_modules(model)) - set(targets))
    if extra:
        raise CheckpointError(
            f"{source}: the model has a LoRA on '{extra[0]}' that the adapter does not cover"
        )
    for n in targets:
        m, c = modules[n], configs[n]
        r = int(c["rank"])
        for key, shape in ((f"{n}.lora_A", (r, m.in_features)), (f"{n}.lora_B", (m.out_features, r))):
            if tuple(tensors[key].shape) != shape:
                raise CheckpointError(
                    f"{source}: tensor '{key}' has shape {tuple(tensors[key].shape)}, the model "
                    f"needs {shape}"
                )
            if not tensors[key].is_floating_point():
                raise CheckpointError(f"{source}: tensor '{key}' is {tensors[key].dtype}, not float")
        _check_mode(c["mode"])
        if isinstance(m, LoRALinear):
            have = m.config()
            diff = [k for k in ("rank", "alpha", "mode", "slices") if have[k] != c.get(k, have[k])]
            if diff:
                raise CheckpointError(
                    f"{source}: '{n}' already has a LoRA with {diff[0]}={have[diff[0]]!r}, the "
                    f"adapter has {c[diff[0]]!r}"
                )
            if m.merged:
                raise CheckpointError(f"{source}: '{n}' is merged; unmerge_lora(model) first")
        if base_hashes is not None:
            want, got = base_hashes.get(n), _module_hash(m)
            if want != got:
                raise CheckpointError(
                    f"{source}: base weights of '{n}' differ from the ones the adapter was "
                    f"trained on (hash {got} != {want}): a different base model?"
                )
    # all checks passed: inject and copy
    for n in targets:
        m, c = modules[n], configs[n]
        if not isinstance(m, LoRALinear):
            slices = int(c.get("slices", _default_slices(n, c["mode"])))
            rank, alpha = int(c["rank"]), float(c["alpha"])
            inject_lora(model, [n], rank, alpha, float(c.get("dropout", 0.0)), c["mode"], slices)
    mods = lora_modules(model)
    with torch.no_grad():
        for n in targets:
            mods[n].lora_A.copy_(tensors[f"{n}.lora_A"])
            mods[n].lora_B.copy_(tensors[f"{n}.lora_B"])


def load_adapter(model: nn.Module, path: str | os.PathLike, check_base: bool = True) -> dict:
    """Load an adapter written by :func:`save_adapter` into ``model`` and return its header.

    Injects the LoRA layers the adapter needs (with its rank, alpha, mode, dropout, slices) where
    the model has none yet. Raises :class:`CheckpointError` naming the key for a missing target,
    a missing or unexpected tensor, a wrong shape, a conflicting existing LoRA, or base weights
    that differ from the ones the adapter was trained on (``check_base=False`` skips that check).
    Nothing is modified unless every check passes.
    """
    tensors, header = read_adapter(path)
    configs = header["modules"]
    if list(configs) != list(header["targets"]):
        raise CheckpointError(f"{path}: header 'modules' and 'targets' list different layers")
    hashes = header["base_hashes"] if check_base else None
    _check_and_load(model, tensors, configs, str(path), hashes)
    return header


# --- released Fin3R adapters ----------------------------------------------------------------
_PEFT_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def _strip_peft(key: str) -> str:
    key = key.replace("base_model.model.", "")
    return key.replace(".base_layer.", ".")


def _read_released(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(adapter tensors in our keys, base copies in the base model's keys)``."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    sd = safe_torch_load(path, what="a released Fin3R adapter")
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a flat state_dict of tensors")
    adapter, base, adapter_names = {}, {}, set()
    for key, value in sd.items():
        m = _PEFT_LORA.match(key)
        if m:
            adapter_names.add(m["adapter"])
            adapter[f"{_strip_peft(m['module'])}.lora_{m['ab']}"] = value
        elif "lora_" in key:
            raise CheckpointError(f"{path}: unrecognised LoRA key '{key}'")
        else:
            base[_strip_peft(key)] = value
    if not adapter:
        raise CheckpointError(f"{path}: no PEFT LoRA keys ('*.lora_A.<adapter>.weight') found")
    if len(adapter_names) > 1:
        raise CheckpointError(f"{path}: several PEFT adapters {sorted(adapter_names)}; expected one")
    for k in sorted(adapter):
        other = k[:-1] + ("B" if k.endswith("A") else "A")
        if other not in adapter:
            raise CheckpointError(f"{path}: '{k}' has no matching '{other}'")
    return adapter, base


def rename_prefixes(tensors: dict[str, Tensor], prefix_map: dict[str, str] | None) -> dict[str, Tensor]:
    """``tensors`` with each key's leading ``src`` replaced by ``prefix_map[src]`` (keys under no
    listed prefix unchanged): the encoder of one model family named as another's."""
    if not prefix_map:
        return tensors
    out = {}
    for key, value in tensors.items():
        src = next((p for p in prefix_map if key.startswith(p)), None)
        out[prefix_map[src] + key[len(src):] if src is not None else key] = value
    return out


def import_fin3r_lora(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Tensor]:
    """Read a released Fin3R ``*_lora.pth`` (PEFT key names) into our adapter keys.

    ``<blk>.attn.base_model.model.qkv.lora_A.default.weight`` becomes ``<blk>.attn.qkv.lora_A``
    (likewise ``lora_B``). The base-weight copies the file also holds (``...qkv.base_layer.*``,
    ``...attn.base_model.model.proj.*``) are not returned; if ``model`` is given they are checked
    against the model's weights and a mismatch raises :class:`CheckpointError` naming the key.
    Loaded with ``torch.load(weights_only=True)``.
    """
    adapter, base = _read_released(path)
    if model is not None:
        _check_base_copies(model, base, str(path))
    return adapter


def _check_base_copies(model: nn.Module, base: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    for k, v in base.items():
        if k not in own:
            raise CheckpointError(f"{source}: base weight '{k}' is not in the model's state_dict")
        mine = own[k]
        if isinstance(model.get_submodule(k.rpartition(".")[0]), LoRALinear) and k.endswith(".weight"):
            mine = model.get_submodule(k.rpartition(".")[0])._base_weight()
        if tuple(mine.shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: base weight '{k}' has shape {tuple(v.shape)}, the model's is "
                f"{tuple(mine.shape)}"
            )
        if not torch.equal(mine.detach().to("cpu", torch.float32), v.to(torch.float32)):
            diff = (mine.detach().to("cpu", torch.float32) - v.float()).abs().max().item()
            raise CheckpointError(
                f"{source}: base weight '{k}' differs from the model's (max |diff| {diff:.3g}): "
                "the adapter was trained on a different base model"
            )


def apply_fin3r_lora(
    model: nn.Module, path: str | os.PathLike, alpha: float = RELEASED_CONFIG["alpha"],
    check_base: bool = True, prefix_map: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """Inject and load a released Fin3R ``*_lora.pth`` into ``model`` exactly as released:
    ``"output"`` mode, rank from the file, ``alpha`` 8, no dropout, q/k/v slices for ``qkv``
    layers. Checks the file's base-weight copies against the model unless ``check_base=False``.
    ``prefix_map`` renames the file's keys first (:func:`rename_prefixes`; e.g. VGGT's
    ``aggregator.patch_embed.`` -> π3's ``encoder.``). Returns the wrapped module names.
    """
    adapter, base = _read_released(path)
    adapter, base = rename_prefixes(adapter, prefix_map), rename_prefixes(base, prefix_map)
    if check_base:
        _check_base_copies(model, base, str(path))
    in_file = {k.rpartition(".")[0] for k in adapter}
    targets = [n for n, _ in model.named_modules() if n in in_file]
    targets += sorted(in_file - set(targets))  # not in the model: _check_and_load names them
    configs = {}
    for n in targets:
        r = adapter[f"{n}.lora_A"].shape[0]
        configs[n] = {"rank": int(r), "alpha": float(alpha), "mode": "output", "dropout": 0.0,
                      "slices": _default_slices(n, "output")}  # fmt: skip
    _check_and_load(model, adapter, configs, str(path))
    return targets
