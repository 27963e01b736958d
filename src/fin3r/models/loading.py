"""Loading and saving models: the one loading service every command and the Python API use.

:func:`load` takes what a user names -- a registry name, a fin3r ``.safetensors`` model file, an
official ``.pth`` file or a Hugging Face folder -- optional official weights for a registry name,
and an optional adapter in any format fin3r reads (a fin3r adapter ``.safetensors`` or a released
Fin3R ``*_lora.pth``), and returns the model in eval mode.

How a file becomes a model (:func:`read_checkpoint`, :func:`load_model`):

1. the family: a fin3r model file names it in its metadata, a folder in its ``config.json`` /
   ``fin3r_config.json``; otherwise each family's spec is asked whether the file has its
   official layout (``ModelFamily.detect``); a file no family recognises is an error naming what
   was looked for;
2. the architecture: the file's own description (fin3r metadata, ``args.model``, ``config.json``);
   a registry name given with the file must agree with it; a known configuration is used only
   where the file carries none (``ModelFamily.fallback_config``, e.g. VGGT's ``model.pt``);
3. the description is checked against the tensors present (``ModelFamily.check_config``: block
   counts, widths) before the model is built, on the meta device, taking the file's tensors.

The fin3r format is one safetensors file holding our state_dict, with the metadata
``{"format": "fin3r", "config": <JSON of model.config_dict()>}`` (:func:`save_model`).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from fin3r.errors import CheckpointError
from fin3r.io import atomic_write, check_finite, first_nonfinite, read_safetensors, safe_torch_load, write_text_atomic
from fin3r.lora import LoRALinear, apply_fin3r_lora, import_fin3r_lora, load_adapter
from fin3r.models.base import Reconstructor
from fin3r.models.hub_cache import cached_snapshot, looks_like_hub_id
from fin3r.models.io import MAX_DESCRIPTION_CHARS, FIN3R_CONFIG_FILE, is_fin3r_file, read_fin3r_file, read_json
from fin3r.models.registry import FAMILIES, MODEL_CONFIGS, build_model, family_spec, find_family, resolve_config
from fin3r.models.spec import ModelFamily

log = logging.getLogger(__name__)


# --- reading -------------------------------------------------------------------------------------
def _folder_family(path: Path) -> str | None:
    """The ``family`` a fin3r-written folder names in its sidecar or ``config.json``."""
    for name in (FIN3R_CONFIG_FILE, "config.json"):
        if (path / name).is_file():
            family = read_json(path / name).get("family")
            if family is not None:
                return str(family)
    return None


def detect_family(path: str | os.PathLike) -> ModelFamily:
    """The family of an official file or folder (see the module docstring); a clear
    :class:`CheckpointError` naming what was looked for if none recognises it."""
    path = Path(path)
    if path.is_dir():
        family = _folder_family(path)
        if family is not None:
            return family_spec(family)
    for spec in FAMILIES:
        if spec.detect(path):
            return spec
    if path.is_file():  # an unreadable file or an unknown official class: say so rather than "no family"
        if path.suffix == ".safetensors":
            read_safetensors(path)
        else:
            _check_unknown_pth(path)
    layouts: dict[str, list[str]] = {}
    for spec in FAMILIES:
        layouts.setdefault(spec.layout, []).append(spec.name)
    looked = "; ".join(f"{'/'.join(names)}: {layout}" for layout, names in layouts.items() if layout)
    raise CheckpointError(
        f"{path}: no architecture fin3r can read and no known family recognised (looked for a fin3r model "
        f"file -- safetensors metadata format 'fin3r' --, a 'family' entry in config.json / {FIN3R_CONFIG_FILE}, "
        f"and the official layouts: {looked}); pass a registry name and checkpoint=<file>")


def _check_unknown_pth(path: Path) -> None:
    """Raise the most specific error for a ``.pth`` no family recognised: unreadable, a refused
    pickle global, or an ``args.model`` naming a class no family knows."""
    obj = safe_torch_load(path, [argparse.Namespace])
    args = obj.get("args") if isinstance(obj, dict) else None
    ctor = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    if isinstance(ctor, str):
        try:
            call = ast.parse(ctor.strip()[:MAX_DESCRIPTION_CHARS], mode="eval").body
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            call = None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            raise CheckpointError(f"{path}: unknown model class {call.func.id!r} in args.model (known families: "
                                  f"{', '.join(spec.name for spec in FAMILIES)})")


def read_checkpoint(path: str | os.PathLike, spec: ModelFamily | None = None
                    ) -> tuple[ModelFamily, dict[str, Any] | None, dict[str, Tensor]]:
    """``(family, config or None, state_dict with our keys)`` of any model file or folder fin3r
    reads; ``spec`` skips the family detection (a registry name was given)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".safetensors" and is_fin3r_file(path):
        config, state_dict = read_fin3r_file(path)
        return family_spec(str(config.get("family"))), config, state_dict
    if spec is None:
        spec = detect_family(path)
    config, state_dict = spec.read(path)
    if config is not None:
        spec = family_spec(str(config.get("family", spec.name)))
    return spec, config, state_dict


def _canon(value: Any) -> Any:
    """JSON-like comparison form: tuples as lists, numbers as floats."""
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _check_agrees(requested: dict[str, Any], described: dict[str, Any], source: str) -> None:
    """The file's description must not contradict the requested architecture (``requested``
    completed with the constructor defaults; the keys the file names are compared)."""
    if requested.get("family") != described.get("family"):
        raise CheckpointError(f"{source}: the file holds a {described.get('family')} model, not the requested "
                              f"{requested.get('family')}")
    differ = sorted(k for k in described if k in requested and _canon(described[k]) != _canon(requested[k]))
    if differ:
        raise CheckpointError(f"{source}: the file's architecture differs from the requested one in {differ} ("
                              + ", ".join(f"{k}: file {described[k]!r} vs {requested[k]!r}" for k in differ[:4])
                              + ")")


def _complete(spec: ModelFamily, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` completed with the constructor defaults (for comparing two descriptions)."""
    out: dict[str, Any] = {}
    for klass in reversed(spec.model_class.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass in (torch.nn.Module, object):
            continue
        for p in inspect.signature(init).parameters.values():
            if p.default is not p.empty and p.name != "self":
                out[p.name] = p.default
    return {**out, **config}


def _build_with_weights(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> Reconstructor:
    """Build on the meta device and take the file's tensors (no random init, one copy of the
    weights in memory), cast to the model's dtypes; models with buffers are built on the CPU."""
    model = _build_described(config, "meta", source)
    if any(True for _ in model.buffers()):
        model = _build_described(config, "cpu", source)
        model.load_weights(state_dict, source)
        return model
    own = model.state_dict()

    def owned(k: str, v: Tensor) -> Tensor:
        if k in own and v.dtype != own[k].dtype:
            return v.to(own[k].dtype)
        # tensors inside one file buffer (safetensors) can be misaligned for the SIMD kernels
        return v.clone() if v.data_ptr() % 64 else v

    model.load_weights({k: owned(k, v) for k, v in state_dict.items()}, source, assign=True)
    return model


def _build_described(config: dict[str, Any], device: str, source: str) -> Reconstructor:
    """``build_model(config)`` for a description read from a file: whatever the constructor
    refuses (a value of another type, a mode it does not know) is a :class:`CheckpointError`."""
    try:
        return build_model(config, device=device)
    except CheckpointError:
        raise
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its architecture description does not build a model "
                              f"({type(e).__name__}: {e})") from None


def _check_weights_finite(state_dict: dict[str, Tensor], source: str, nonfinite: str) -> None:
    key = first_nonfinite(state_dict)
    if key is None:
        return
    if nonfinite == "warn":
        log.warning("%s: weights are not finite ('%s' holds NaN/inf); predictions will be wrong", source, key)
        return
    check_finite(state_dict, source)


def load_model(model: str | os.PathLike | dict[str, Any], checkpoint: str | os.PathLike | None = None,
               device: torch.device | str = "cpu", random_weights: bool = True,
               nonfinite: str = "error") -> Reconstructor:
    """A model in eval mode from:

    - a registry name or a config dict (random init, or the weights of ``checkpoint`` -- any
      format below -- whose own description must agree with it); ``random_weights=False``
      refuses a registry name without ``checkpoint`` (the commands' default: a forgotten
      ``--checkpoint`` must not silently run random weights);
    - a fin3r ``.safetensors`` file (:func:`save_model`);
    - an official ``.pth`` file or a Hugging Face folder of any registered family;
    - a Hugging Face hub id (``naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt``) already in the local
      Hugging Face cache (:func:`fin3r.models.hub_cache.cached_snapshot`; never downloaded).

    Every weight read from a file must be finite: ``nonfinite="error"`` (default) raises a
    :class:`CheckpointError` naming the first tensor holding NaN/inf, ``"warn"`` logs it.
    """
    if nonfinite not in ("error", "warn"):
        raise ValueError(f"nonfinite must be 'error' or 'warn', got {nonfinite!r}")
    name = model if isinstance(model, dict) else str(model)
    if isinstance(name, dict) or name in MODEL_CONFIGS:
        requested = resolve_config(name)
        if checkpoint is None:
            if not random_weights:
                raise CheckpointError(
                    f"{name!r} is a registry name, which builds a randomly initialised model: give its weights with "
                    f"--checkpoint FILE (or name the file itself with --model), or pass --random-weights to run "
                    f"random weights on purpose")
            return build_model(requested).to(device).eval()
        spec = family_spec(requested["family"])
        spec, described, state_dict = read_checkpoint(checkpoint, spec)
        source = str(checkpoint)
        if described is not None:
            _check_agrees(_complete(spec, requested), described, source)
        config = {**requested, **(described or {})}
    else:
        if checkpoint is not None:
            raise CheckpointError(f"load_model: `checkpoint` is only used with a registry name, got {name!r}")
        path = Path(name)
        if not path.exists() and looks_like_hub_id(name):
            path = cached_snapshot(name)
        if not path.exists():
            raise CheckpointError(f"{name}: no such file or folder, and not a registry name "
                                  f"({', '.join(MODEL_CONFIGS)})")
        spec, described, state_dict = read_checkpoint(path)
        source = str(path)
        fallback = spec.fallback_config(state_dict)
        if described is None and fallback is None:
            raise CheckpointError(f"{path}: the file has no architecture; pass a registry name and "
                                  f"checkpoint=<file>")
        config = {**(resolve_config(fallback) if fallback else {}), **(described or {})}
    spec.check_config(config, state_dict, source)
    _check_weights_finite(state_dict, source, nonfinite)
    return _build_with_weights(config, state_dict, source).to(device).eval()


def _released_prefix_map(model: torch.nn.Module, path: Path) -> dict[str, str]:
    """The renaming a released adapter needs to fit ``model``: ``{}`` when its keys already name the
    model's layers, else the model family's ``released_adapter_prefixes`` entries the keys start with."""
    spec = find_family(getattr(model, "family", ""))
    prefixes = dict(spec.released_adapter_prefixes) if spec is not None else {}
    keys = list(import_fin3r_lora(path))
    modules = {name for name, _ in model.named_modules()}
    if not prefixes or any(k.rpartition(".")[0] in modules for k in keys):
        return {}
    return {src: dst for src, dst in prefixes.items() if any(k.startswith(src) for k in keys)}


def verify_shared_encoder(model: torch.nn.Module, prefix_map: dict[str, str], base: str | os.PathLike) -> dict[str, Any]:
    """Compare ``model``'s encoder with the encoder of ``base`` (any model file fin3r reads) tensor by
    tensor, through ``prefix_map`` (base prefix -> model prefix). Raises :class:`CheckpointError`
    naming the first (in the model's order) missing, mis-shaped or different tensor. Returns
    ``{"compared": n, "skipped": [base keys under the prefixes the model does not have]}`` (π3: VGGT's
    unused ``mask_token``)."""
    _, _, base_sd = read_checkpoint(base)
    own = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    compared = 0
    for src, dst in prefix_map.items():
        for key, mine in own.items():
            if not key.startswith(dst):
                continue
            theirs_key = src + key[len(dst):]
            theirs = base_sd.get(theirs_key)
            if theirs is None:
                raise CheckpointError(f"{base}: has no '{theirs_key}' to compare with the model's '{key}'")
            if tuple(theirs.shape) != tuple(mine.shape):
                raise CheckpointError(f"{base}: '{theirs_key}' has shape {tuple(theirs.shape)}, the model's '{key}' "
                                      f"{tuple(mine.shape)}: not the encoder this adapter needs")
            a, b = mine.detach().to("cpu", torch.float32), theirs.to(torch.float32)
            if not torch.equal(a, b):
                raise CheckpointError(f"{base}: the encoders differ first at '{key}' (vs '{theirs_key}', max |diff| "
                                      f"{(a - b).abs().max().item():.3g}); refusing to apply an adapter trained on "
                                      "another encoder")
            compared += 1
    skipped = sorted(k for k in base_sd for src, dst in prefix_map.items()
                     if k.startswith(src) and dst + k[len(src):] not in own)
    return {"compared": compared, "skipped": skipped}


def apply_adapter(model: torch.nn.Module, adapter: str | os.PathLike, check_base: bool = True,
                  adapter_base: str | os.PathLike | None = None) -> dict[str, Any]:
    """Apply an adapter in any format to ``model`` in place: a released Fin3R ``*_lora.pth``
    (PEFT keys, ``output`` mode), a fin3r adapter ``.safetensors`` or a folder in PEFT's layout
    (``adapter_config.json``, :mod:`fin3r.lora.peft`). Returns a summary
    ``{"format", "targets", "mode"}``.

    A released adapter trained on another family whose encoder this model shares (the VGGT adapter
    on π3: ``ModelFamily.released_adapter_prefixes``) is renamed onto this model's encoder. The
    two encoders must be equal: given ``adapter_base`` (the checkpoint the adapter was trained on,
    e.g. VGGT-1B) they are compared tensor by tensor and a difference is refused
    (:func:`verify_shared_encoder`); without it the adapter is applied with a warning that this is
    unverified (only the base-weight copies the adapter file itself holds, if any, are checked).
    The summary then also holds ``renamed`` and ``encoder_check``.
    """
    path = Path(adapter)
    if path.suffix in (".pth", ".pt", ".bin"):
        prefix_map = _released_prefix_map(model, path)
        info: dict[str, Any] = {"format": "fin3r-released", "mode": "output"}
        if prefix_map:
            info["renamed"] = prefix_map
            if adapter_base is not None:
                info["encoder_check"] = verify_shared_encoder(model, prefix_map, adapter_base)
            else:
                info["encoder_check"] = None
                log.warning("%s: applying an adapter trained on another model (%s renamed to %s); that its encoder "
                            "equals this model's is UNVERIFIED -- pass the checkpoint it was trained on "
                            "(--adapter-base) to compare them tensor by tensor", path,
                            ", ".join(prefix_map), ", ".join(prefix_map.values()))
        elif adapter_base is not None:
            raise CheckpointError(f"{path}: --adapter-base is only for adapters trained on another model family; "
                                  "this adapter already names the model's layers")
        info["targets"] = apply_fin3r_lora(model, path, check_base=check_base, prefix_map=prefix_map or None)
        return info
    if adapter_base is not None:
        raise CheckpointError(f"{path}: --adapter-base is only for released adapters (*_lora.pth) of another family")
    if path.is_dir():
        from fin3r.lora.peft import load_peft_folder

        header = load_peft_folder(model, path, check_base=check_base)
        fmt = "peft-folder"
    else:
        header = load_adapter(model, path, check_base=check_base)
        fmt = "fin3r-adapter"
    modes = sorted({str(m.get("mode")) for m in header.get("modules", {}).values()})
    return {"format": fmt, "targets": list(header.get("targets", [])),
            "mode": modes[0] if len(modes) == 1 else modes, "header": header}


def load(model: str | os.PathLike | dict[str, Any], checkpoint: str | os.PathLike | None = None,
         adapter: str | os.PathLike | None = None, device: torch.device | str = "cpu",
         adapter_base: str | os.PathLike | None = None, random_weights: bool = True,
         nonfinite: str = "error") -> Reconstructor:
    """The model a user names (:func:`load_model`; ``random_weights``, ``nonfinite`` as there), with
    ``adapter`` applied (:func:`apply_adapter`; ``adapter_base``: see there; adapters must always be
    finite), in eval mode on ``device``."""
    net = load_model(model, checkpoint, random_weights=random_weights, nonfinite=nonfinite)
    if adapter is not None:
        apply_adapter(net, adapter, adapter_base=adapter_base)
    elif adapter_base is not None:
        raise CheckpointError("--adapter-base needs --adapter")
    return net.to(device).eval()


# --- writing -------------------------------------------------------------------------------------
def _has_lora(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def save_model(model: Reconstructor, path: str | os.PathLike) -> Path:
    """Write ``model`` in the fin3r format (one safetensors file, config in the metadata), atomically.

    LoRA adapters must be merged first (``fin3r.lora.merge_and_unload``), so the file is a plain model.
    """
    if _has_lora(model):
        raise CheckpointError("save_model: the model holds LoRA layers; merge them first "
                              "(fin3r.lora.merge_and_unload) or save the adapter alone (fin3r.lora.save_adapter)")
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "fin3r", "config": json.dumps(model.config_dict())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def save_official(model: Reconstructor, path: str | os.PathLike) -> Path:
    """The file the original repository loads (the family's ``write_official``)."""
    return family_spec(model.family).write_official(model, path)


def save_hf_folder(model: Reconstructor, folder: str | os.PathLike) -> Path:
    """Write the Hugging Face layout: ``config.json`` (the family's ``hf_config``) +
    ``model.safetensors`` (official keys without the ``layer_rn`` aliases, as
    ``PyTorchModelHubMixin`` saves them).

    ``config.json`` is written like ``PyTorchModelHubMixin`` writes it (``json.dumps(config,
    sort_keys=True, indent=2)``), so ``inf`` in ``depth_mode`` / ``conf_mode`` becomes ``Infinity``:
    not strict JSON, but what Python's ``json`` (and so ``from_pretrained``) reads back as ``inf``.
    When the official ``config.json`` cannot describe the architecture (tiny VGGTs: the official
    constructor hard-codes depth, heads and DPT widths) our full config goes to
    ``fin3r_config.json`` beside it, which fin3r's loader reads and ``from_pretrained`` ignores.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()
          if ".scratch.layer_rn." not in k}
    config = family_spec(model.family).hf_config(model)
    write_text_atomic(folder / "config.json", json.dumps(config, sort_keys=True, indent=2))
    sidecar = folder / FIN3R_CONFIG_FILE
    if getattr(model, "official_architecture", True):
        sidecar.unlink(missing_ok=True)  # a stale one would override config.json
    else:
        write_text_atomic(sidecar, json.dumps(model.config_dict(), sort_keys=True, indent=2))
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp))
    return folder


__all__ = ["load", "load_model", "apply_adapter", "verify_shared_encoder", "read_checkpoint", "detect_family", "save_model", "save_official",
           "save_hf_folder"]
