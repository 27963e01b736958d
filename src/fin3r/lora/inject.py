"""Model surgery: wrap a model's linear layers in :class:`~fin3r.lora.layer.LoRALinear`, list
them, merge them back into plain layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from fin3r.lora.layer import LoRALinear
from fin3r.lora.modes import LoRAError, get_mode


def _matches(name: str, pattern: str) -> bool:
    """Exact name, glob on the full name, or glob on its trailing components (``"qkv"``)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


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
    strategy = get_mode(mode)
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
        k = slices if slices is not None else strategy.default_slices(n)
        _set_submodule(model, n, LoRALinear(linears[n], rank, alpha, dropout, mode, slices=k))
    return names


def _check_mergeable(mods: dict[str, LoRALinear]) -> None:
    for n, m in mods.items():
        if not m.strategy.mergeable:
            raise LoRAError(f"{n}: " + m.strategy.not_mergeable_reason)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA matrices (``lora_A``, ``lora_B`` of every wrapped layer)."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its layer's weight (exact inverse: :func:`unmerge_lora`)."""
    mods = lora_modules(model)
    _check_mergeable(mods)  # check all first: no half-merged model
    for m in mods.values():
        m.merge()
    for n, m in mods.items():  # a non-finite merge is undone whole
        if not bool(torch.isfinite(m.weight).all()):
            unmerge_lora(model)
            raise LoRAError(f"{n}: the merged weight is not finite (NaN/inf); the adapter or the base is broken")


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
    _check_mergeable(mods)
    linears = {n: m.to_linear() for n, m in mods.items()}
    for n, lin in linears.items():  # all checked before any is replaced
        if not bool(torch.isfinite(lin.weight).all()):
            raise LoRAError(f"{n}: the merged weight is not finite (NaN/inf); the adapter or the base is broken")
    for n, lin in linears.items():
        _set_submodule(model, n, lin)
    return model


__all__ = ["inject_lora", "lora_modules", "lora_parameters", "merge_lora", "unmerge_lora", "merge_and_unload"]
