"""Safe loading and writing of official checkpoint files (DUSt3R / MASt3R; other families add to
:data:`OFFICIAL_CLASSES`).

Formats read (:func:`read_any`):

- official ``.pth``: a pickle of ``{'model': state_dict, 'args': argparse.Namespace(model="<ctor>")}``,
  loaded with ``torch.load(weights_only=True)`` allow-listing ``argparse.Namespace`` only. The
  architecture comes from **parsing** the constructor string with :mod:`ast` (keyword literals,
  ``inf``/``-inf``, tuples); it is never evaluated. A plain state_dict ``.pth`` gives weights only.
- Hugging Face layout: a folder with ``config.json`` (constructor kwargs) + ``model.safetensors``.
- fin3r ``.safetensors`` (:func:`fin3r.models.registry.save_model`) and plain ``.safetensors``.

Key policy (:func:`to_fin3r_keys`): strip ``module.``; drop ``mask_token`` (unused CroCo
pre-training token); map ``*.scratch.layer_rn.{i}.weight`` aliases onto ``layer{i+1}_rn`` when only
the alias is present, else drop them; copy ``dec_blocks.*`` to ``dec_blocks2.*`` if those are absent
(as the official loader does). Writing back: :func:`save_official_pth`, :func:`save_hf_folder`.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.io import atomic_write
from fin3r.errors import CheckpointError

#: official class name in ``args.model`` -> our family name
OFFICIAL_CLASSES: dict[str, str] = {
    "AsymmetricCroCo3DStereo": "dust3r",
    "AsymmetricMASt3R": "mast3r",
}
#: official constructor arguments that do not change the inference architecture (dropped)
IGNORED_ARGS = frozenset({"patch_embed_cls", "landscape_only", "freeze", "mask_ratio"})
#: our constructor arguments that the official constructors do not have (not written back)
FIN3R_ONLY_ARGS = frozenset({"dpt_layer_dims", "dpt_feature_dim", "dpt_last_dim", "head_hidden_dim_factor"})
#: beside ``config.json`` in a Hugging Face folder: fin3r's full model config, written only when the
#: official constructor's kwargs cannot describe the architecture (see :func:`save_hf_folder`)
FIN3R_CONFIG_FILE = "fin3r_config.json"
_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}


# --- constructor strings ------------------------------------------------------------------------
def _literal(node: ast.AST, text: str) -> Any:
    """A literal value of an ``ast`` node: constants, tuples, lists, dicts, ``inf`` names, unary minus."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, text)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CheckpointError(f"constructor string: cannot negate {ast.get_source_segment(text, node)!r}")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e, text) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Dict):
        return {_literal(k, text): _literal(v, text) for k, v in zip(node.keys, node.values)}
    segment = ast.get_source_segment(text, node)
    if isinstance(node, ast.Call):
        raise CheckpointError(f"constructor string: nested call {segment!r} is not allowed (only literals)")
    raise CheckpointError(f"constructor string: {segment!r} is not a literal")


def parse_constructor(text: str) -> tuple[str, dict[str, Any]]:
    """``"Cls(a=1, b=('exp', -inf, inf))" -> ("Cls", {"a": 1, "b": ("exp", -inf, inf)})``, never evaluated."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"constructor string is not valid Python syntax: {text!r} ({e.msg})") from e
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise CheckpointError(f"constructor string must be a call `ClassName(key=value, ...)`, got {text!r}")
    if call.args:
        raise CheckpointError(f"constructor string: positional arguments are not supported: {text!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(f"constructor string: `**` arguments are not supported: {text!r}")
        kwargs[kw.arg] = _literal(kw.value, text)
    return call.func.id, kwargs


def _accepted_args(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is torch.nn.Module or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    return names


def model_config(family: str, kwargs: dict[str, Any], state_dict: dict[str, Tensor] | None = None,
                 source: str = "checkpoint", official_class: str | None = None) -> dict[str, Any]:
    """A registry config (``family`` + our kwargs) from official constructor kwargs: ignored
    arguments dropped, unknown ones an error, DPT/MLP widths inferred from ``state_dict`` shapes."""
    from fin3r.models.registry import family_class

    cls = family_class(family)
    accepted = _accepted_args(cls)
    config: dict[str, Any] = {"family": family}
    for key, value in kwargs.items():
        if key in IGNORED_ARGS or key == "family":
            continue
        if key not in accepted:
            raise CheckpointError(f"{source}: unknown {official_class or cls.__name__} argument {key!r} "
                                  f"(known: {', '.join(sorted(accepted - FIN3R_ONLY_ARGS))})")
        config[key] = list(value) if isinstance(value, tuple) else value
    if state_dict is not None:
        config.update(infer_widths(state_dict, config))
    return config


def infer_widths(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """Widths the official constructors hard-code, read from weight shapes (tiny test models)."""
    from fin3r.models.layers.dpt_croco import dpt_widths_from_state_dict

    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    widths = dpt_widths_from_state_dict(sd, "downstream_head1.dpt.")
    if widths:
        out.update(dpt_layer_dims=widths["layer_dims"], dpt_feature_dim=widths["feature_dim"],
                   dpt_last_dim=widths["last_dim"])
    fc1 = sd.get("downstream_head1.head_local_features.fc1.weight")
    if fc1 is not None:
        out["head_hidden_dim_factor"] = fc1.shape[0] / fc1.shape[1]
    return out


# --- reading ------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "Unsupported global" in line or "GLOBAL" in line),
                      first[0] if first else "")
        raise CheckpointError(f"{path}: refusing to unpickle a non-weights object ({detail.strip()}); "
                              f"only tensors, containers and argparse.Namespace are allowed") from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from e


def read_official_pth(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict)`` of an official ``.pth`` (``{'model', 'args'}``) or a plain
    state_dict pickle."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    if "model" not in obj:
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return None, obj
        raise CheckpointError(f"{path}: no 'model' entry and not a plain state_dict (keys: {list(obj)[:5]})")
    state_dict = obj["model"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    args = obj.get("args")
    ctor = getattr(args, "model", None) if not isinstance(args, dict) else args.get("model")
    if not isinstance(ctor, str):
        return None, state_dict
    cls_name, kwargs = parse_constructor(ctor)
    if cls_name not in OFFICIAL_CLASSES:
        raise CheckpointError(f"{path}: unknown model class {cls_name!r} in args.model "
                              f"(known: {', '.join(OFFICIAL_CLASSES)})")
    config = model_config(OFFICIAL_CLASSES[cls_name], kwargs, state_dict, source=str(path), official_class=cls_name)
    return config, state_dict


def _family_from_hf_config(config: dict[str, Any]) -> str:
    if "family" in config:
        return str(config["family"])
    if str(config.get("output_mode", "")).startswith("pts3d+desc") or "two_confs" in config:
        return "mast3r"
    return "dust3r"


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a Hugging Face folder (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path}: a Hugging Face model folder needs config.json and model.safetensors")
    try:
        hf_config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    try:
        state_dict = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot read as safetensors ({e})") from e
    family = _family_from_hf_config(hf_config)
    kwargs = {k: v for k, v in hf_config.items() if k != "family"}
    return model_config(family, kwargs, state_dict, source=str(cfg_path)), state_dict


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """A fin3r model file (config from its metadata) or a plain safetensors state_dict (config None)."""
    from safetensors import safe_open

    from fin3r.models.registry import read_fin3r_file

    try:
        with safe_open(str(path), framework="pt") as f:
            is_fin3r = (f.metadata() or {}).get("format") == "fin3r"
            if not is_fin3r:
                return None, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as safetensors ({e})") from e
    return read_fin3r_file(path)


def read_any(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict)`` of any supported file or folder (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_official_pth(path)


# --- key policy ---------------------------------------------------------------------------------
def strip_module_and_dpt_aliases(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``module.`` and fold the CroCo DPT alias keys: ``*.scratch.layer_rn.{i}.*`` becomes
    ``*.scratch.layer{i+1}_rn.*`` when only the alias is present, else it is dropped."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".scratch.layer_rn." in key:
            prefix, rest = key.split(".scratch.layer_rn.")
            i, tail = rest.split(".", 1)
            canonical = f"{prefix}.scratch.layer{int(i) + 1}_rn.{tail}"
            if canonical not in sd:
                out[canonical] = value
            continue
        out[key] = value
    return out


def to_fin3r_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official keys -> ours (see the module docstring)."""
    out = strip_module_and_dpt_aliases(state_dict)
    out.pop("mask_token", None)
    two_view = not any(k.startswith("dec_blocks_state.") for k in out)  # CUT3R has one image decoder
    if two_view and any(k.startswith("dec_blocks.") for k in out) \
            and not any(k.startswith("dec_blocks2.") for k in out):
        for key in [k for k in out if k.startswith("dec_blocks.")]:
            out["dec_blocks2." + key[len("dec_blocks."):]] = out[key]
    return out


# --- writing ------------------------------------------------------------------------------------
def official_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """The model's constructor kwargs as the official constructor takes them (tuples, no fin3r-only
    widths)."""
    config = dict(model.config_dict())
    config.pop("family")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k not in FIN3R_ONLY_ARGS}


def constructor_string(model: torch.nn.Module) -> str:
    """``"AsymmetricCroCo3DStereo(head_type='dpt', ...)"`` for ``args.model`` of an official file."""
    if hasattr(model, "official_constructor_string"):  # CUT3R: a nested constructor call
        return model.official_constructor_string()
    family = model.config_dict()["family"]
    names = [c for c, f in OFFICIAL_CLASSES.items() if f == family]
    if not names:
        raise CheckpointError(f"no official class known for family {family!r}")
    kwargs = ", ".join(f"{k}={v!r}" for k, v in official_kwargs(model).items())
    return f"{names[0]}({kwargs})"


def save_official_pth(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{'model': official_state_dict(), 'args': Namespace(model=<ctor string>)}``: loads in
    the original repository (``load_model``) and back here. Tiny models with non-official DPT
    widths load here only (the official constructor hard-codes the widths)."""
    sd = {k: v.detach().cpu() for k, v in model.official_state_dict().items()}
    obj = {"model": sd, "args": argparse.Namespace(model=constructor_string(model))}
    return atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def hf_config(model: torch.nn.Module) -> dict[str, Any]:
    """The ``config.json`` of :func:`save_hf_folder`: the kwargs the official class's
    ``PyTorchModelHubMixin.from_pretrained`` passes to its constructor.

    - models with an ``hf_config()`` method (VGGT: ``img_size, patch_size, embed_dim, enable_*``);
    - DUSt3R / MASt3R: :func:`official_kwargs` (no fin3r-only DPT/MLP widths: the official
      constructor takes ``**croco_kwargs`` and would fail on them; our reader infers them from the
      weight shapes), tuples as lists;
    - other families (CUT3R): our constructor kwargs.
    """
    if hasattr(model, "hf_config"):
        return model.hf_config()
    if model.config_dict()["family"] in OFFICIAL_CLASSES.values():
        return {k: list(v) if isinstance(v, tuple) else v for k, v in official_kwargs(model).items()}
    config = dict(model.config_dict())
    config.pop("family")
    return config


def save_hf_folder(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write the Hugging Face layout: ``config.json`` (:func:`hf_config`) + ``model.safetensors``
    (official keys without the ``layer_rn`` aliases, as ``PyTorchModelHubMixin`` saves them).

    ``config.json`` is written like ``PyTorchModelHubMixin`` writes it (``json.dumps(config,
    sort_keys=True, indent=2)``), so ``inf`` in ``depth_mode`` / ``conf_mode`` becomes ``Infinity``:
    not strict JSON, but what Python's ``json`` (and so ``from_pretrained``) reads back as ``inf``.
    When the official ``config.json`` cannot describe the architecture (tiny VGGTs: the official
    constructor hard-codes depth, heads and DPT widths) our full config goes to
    :data:`FIN3R_CONFIG_FILE` beside it, which fin3r's loader reads and ``from_pretrained`` ignores.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()
          if ".scratch.layer_rn." not in k}
    config = hf_config(model)
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, sort_keys=True, indent=2)))
    sidecar = folder / FIN3R_CONFIG_FILE
    if getattr(model, "official_architecture", True):
        sidecar.unlink(missing_ok=True)  # a stale one would override config.json
    else:
        full = model.config_dict()
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(full, sort_keys=True, indent=2)))
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp))
    return folder


__all__ = ["OFFICIAL_CLASSES", "IGNORED_ARGS", "parse_constructor", "strip_module_and_dpt_aliases", "model_config", "infer_widths",
           "read_official_pth", "read_hf_folder", "read_safetensors", "read_any", "to_fin3r_keys",
           "constructor_string", "official_kwargs", "save_official_pth", "hf_config", "save_hf_folder",
           "FIN3R_CONFIG_FILE"]
