"""Adapter files: the LoRA matrices alone, as safetensors with a JSON header.

The tensors are ``<name>.lora_A`` / ``<name>.lora_B``; one metadata entry ``"fin3r_adapter"``
holds the header (:func:`save_adapter`), including a hash of the base weights each layer was
trained on, so an adapter is only applied to its own base (:func:`load_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from fin3r import __version__
from fin3r.errors import CheckpointError
from fin3r.io import atomic_write, check_finite, read_safetensors
from fin3r.lora.inject import inject_lora, lora_modules
from fin3r.lora.layer import LoRALinear
from fin3r.lora.modes import MODES, LoRAError, get_mode

#: version of the adapter file layout written by :func:`save_adapter`
FORMAT_VERSION = 1
#: metadata key of the JSON header inside the safetensors file
HEADER_KEY = "fin3r_adapter"


def _float_bytes(t: Tensor) -> bytes:
    if t.device.type == "meta":
        raise LoRAError("cannot hash weights on the meta device; load real weights first")
    return t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def _module_hash(module: nn.Linear) -> str:
    W = module.base_weight() if isinstance(module, LoRALinear) else module.weight
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
    header = adapter_header(model, base_name, **meta)
    text = json.dumps(header)
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in adapter_state_dict(model).items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={HEADER_KEY: text}))
    return header


def adapter_header(model: nn.Module, base_name: str = "", **meta: Any) -> dict:
    """The header :func:`save_adapter` writes for the LoRA layers of ``model`` (see there)."""
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
        json.dumps(header)
    except TypeError as e:
        raise LoRAError(f"save_adapter: extra metadata must be JSON-serialisable ({e})") from None
    return header


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read an adapter file: ``(tensors, header)``; raises :class:`CheckpointError` if it is not
    a fin3r adapter (no or unreadable header, unknown format version)."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: adapter file not found")
    meta, tensors = read_safetensors(path)
    if HEADER_KEY not in meta:
        raise CheckpointError(f"{path}: no '{HEADER_KEY}' header in the safetensors metadata")
    header = parse_header(meta[HEADER_KEY], path)
    check_finite(tensors, path, what="adapter tensors")
    return tensors, header


def parse_header(text: str, source: str) -> dict:
    """The JSON header of :func:`save_adapter`, checked (format version, required keys and their
    types, every layer's settings: :func:`check_module_config`)."""
    try:
        header = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: header '{HEADER_KEY}' is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{source}: header '{HEADER_KEY}' is nested too deeply") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: header '{HEADER_KEY}' is not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: adapter format_version {version!r}; this fin3r reads {FORMAT_VERSION}"
        )
    for key, kind in (("targets", list), ("modules", dict), ("base_hashes", dict)):
        if key not in header:
            raise CheckpointError(f"{source}: header has no '{key}'")
        if not isinstance(header[key], kind):
            raise CheckpointError(f"{source}: header '{key}' must be a JSON {kind.__name__}, got {header[key]!r:.60}")
    for name, config in header["modules"].items():
        check_module_config(config, f"{source}: header modules['{name}']")
    return header


def check_module_config(config: Any, source: str) -> dict:
    """One layer's adapter settings from a file header, checked: ``rank`` an integer in
    [1, 65536], ``alpha`` a finite number > 0, ``dropout`` in [0, 1), ``mode`` one of
    :data:`~fin3r.lora.modes.MODES`, ``slices`` an integer in [1, 64]; :class:`CheckpointError`
    naming ``source``."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: must be a JSON object, got {config!r:.60}")

    def number(name: str, ok, allowed: str, integer: bool = False, required: bool = True) -> None:
        if name not in config and not required:
            return
        v = config.get(name)
        is_num = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not is_num or not math.isfinite(v) or not ok(v):
            raise CheckpointError(f"{source}: {name}={v!r} is not allowed ({allowed})")

    number("rank", lambda v: 1 <= v <= 65536, "an integer in [1, 65536]", integer=True)
    number("alpha", lambda v: v > 0, "a finite number > 0")
    number("dropout", lambda v: 0 <= v < 1, "a number in [0, 1)", required=False)
    number("slices", lambda v: 1 <= v <= 64, "an integer in [1, 64]", integer=True, required=False)
    if config.get("mode") not in MODES:
        raise CheckpointError(f"{source}: mode={config.get('mode')!r} is not allowed (one of {MODES})")
    return config


def check_and_load(
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
        get_mode(c["mode"])
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
            slices = int(c.get("slices", get_mode(c["mode"]).default_slices(n)))
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
    load_adapter_tensors(model, tensors, header, str(path), check_base)
    return header


def load_adapter_tensors(model: nn.Module, tensors: dict[str, Tensor], header: dict, source: str,
                         check_base: bool = True) -> None:
    """:func:`load_adapter` on tensors and a header already read (e.g. from PEFT's layout).
    ``header["base_hashes"] = None`` (an adapter that records no base) skips the base check."""
    configs = header["modules"]
    if list(configs) != list(header["targets"]):
        raise CheckpointError(f"{source}: header 'modules' and 'targets' list different layers")
    hashes = header["base_hashes"] if check_base else None
    check_and_load(model, tensors, configs, source, hashes)


__all__ = ["FORMAT_VERSION", "HEADER_KEY", "adapter_header", "adapter_state_dict", "base_hash", "check_and_load",
           "load_adapter", "load_adapter_tensors", "parse_header", "read_adapter", "save_adapter"]
