"""DUSt3R / MASt3R official formats: detect, read, write.

Formats read (:func:`read`):

- official ``.pth``: a pickle of ``{'model': state_dict, 'args': argparse.Namespace(model="<ctor>")}``,
  loaded with ``torch.load(weights_only=True)`` allow-listing ``argparse.Namespace`` only. The
  architecture comes from **parsing** the constructor string with :mod:`ast` (keyword literals,
  ``inf``/``-inf``, tuples); it is never evaluated. A plain state_dict ``.pth`` gives weights only.
- Hugging Face layout: a folder with ``config.json`` (constructor kwargs) + ``model.safetensors``.

Widths the official constructors hard-code (DPT feature widths, the MASt3R MLP ratio) are read
from the weight shapes; block counts and widths of the description are checked against the
tensors before anything is allocated (:func:`check_config`).

Key policy (:func:`to_fin3r_keys`): strip ``module.``; drop ``mask_token`` (unused CroCo
pre-training token); map ``*.scratch.layer_rn.{i}.weight`` aliases onto ``layer{i+1}_rn`` when only
the alias is present, else drop them; copy ``dec_blocks.*`` to ``dec_blocks2.*`` if those are absent
(as the official loader does). Writing back: :func:`save_official_pth`, :func:`hf_config`.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError
from fin3r.io import atomic_torch_save, read_safetensors, safe_torch_load
from fin3r.models.croco.dust3r import Dust3r
from fin3r.models.croco.mast3r import Mast3r
from fin3r.models.heads.dpt_croco import dpt_widths_from_state_dict
from fin3r.models.io import (
    check_blocks,
    check_positive_ints,
    check_state_dict,
    check_width,
    fold_dpt_aliases,
    parse_constructor,
    read_json,
)

#: official class name in ``args.model`` -> our model class
OFFICIAL_CLASSES: dict[str, type[Dust3r]] = {
    "AsymmetricCroCo3DStereo": Dust3r,
    "AsymmetricMASt3R": Mast3r,
}
#: official constructor arguments that do not change the inference architecture (dropped)
IGNORED_ARGS = frozenset({"patch_embed_cls", "landscape_only", "freeze", "mask_ratio"})
#: our constructor arguments that the official constructors do not have (not written back)
FIN3R_ONLY_ARGS = frozenset({"dpt_layer_dims", "dpt_feature_dim", "dpt_last_dim", "head_hidden_dim_factor"})


# --- descriptions --------------------------------------------------------------------------------
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


def model_config(cls: type[Dust3r], kwargs: dict[str, Any], state_dict: dict[str, Tensor] | None = None,
                 source: str = "checkpoint", official_class: str | None = None) -> dict[str, Any]:
    """A registry config (``family`` + our kwargs) from official constructor kwargs: ignored
    arguments dropped, unknown ones an error, DPT/MLP widths inferred from ``state_dict`` shapes."""
    accepted = _accepted_args(cls)
    config: dict[str, Any] = {"family": cls.family}
    for key, value in kwargs.items():
        if key in IGNORED_ARGS or key == "family":
            continue
        if key not in accepted:
            raise CheckpointError(f"{source}: unknown {official_class or cls.__name__} argument {key!r} "
                                  f"(known: {', '.join(sorted(accepted - FIN3R_ONLY_ARGS))})")
        config[key] = list(value) if isinstance(value, tuple) else value
    if state_dict is not None:
        config.update(infer_widths(state_dict))
    return config


def infer_widths(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Widths the official constructors hard-code, read from weight shapes (tiny test models)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    widths = dpt_widths_from_state_dict(sd, "downstream_head1.dpt.")
    if widths:
        out.update(dpt_layer_dims=widths["layer_dims"], dpt_feature_dim=widths["feature_dim"],
                   dpt_last_dim=widths["last_dim"])
    fc1 = sd.get("downstream_head1.head_local_features.fc1.weight")
    if fc1 is not None and fc1.ndim == 2 and fc1.shape[1]:
        out["head_hidden_dim_factor"] = fc1.shape[0] / fc1.shape[1]
    return out


def check_config(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> None:
    """The description's block counts and widths against the tensors (before allocation)."""
    defaults = {"enc_depth": 24, "dec_depth": 12, "enc_embed_dim": 1024, "dec_embed_dim": 768}
    c = {**defaults, **config}
    check_positive_ints(c, ("enc_depth", "dec_depth", "enc_embed_dim", "dec_embed_dim", "enc_num_heads",
                            "dec_num_heads", "patch_size", "img_size"), source)
    check_config_types(c, source)
    check_blocks(state_dict, {"enc_blocks.": c["enc_depth"], "dec_blocks.": c["dec_depth"]}, source)
    check_width(state_dict, "enc_norm.weight", 0, c["enc_embed_dim"], "enc_embed_dim", source)
    check_width(state_dict, "dec_norm.weight", 0, c["dec_embed_dim"], "dec_embed_dim", source)


def check_config_types(config: dict[str, Any], source: str) -> None:
    """The non-size fields of a CroCo description, by type: scalar integers where one is meant,
    ``mlp_ratio`` a finite number in (0, 16], activation modes ``[name, low, high]``, flags
    booleans, names strings; :class:`CheckpointError` naming the field and value."""
    def refuse(name: str, allowed: str) -> None:
        raise CheckpointError(f"{source}: {name}={config[name]!r:.60} is not allowed ({allowed})")

    for name in ("enc_depth", "dec_depth", "enc_embed_dim", "dec_embed_dim", "enc_num_heads", "dec_num_heads",
                 "patch_size"):
        if name in config and isinstance(config[name], (list, tuple)):
            refuse(name, "a single positive integer")
    if "img_size" in config and isinstance(config["img_size"], (list, tuple)) and len(config["img_size"]) not in (1, 2):
        refuse("img_size", "an integer or [height, width]")
    if "mlp_ratio" in config:
        v = config["mlp_ratio"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 16:
            refuse("mlp_ratio", "a finite number in (0, 16]")
    for name in ("depth_mode", "conf_mode", "desc_conf_mode"):
        v = config.get(name)
        if v is None and name != "depth_mode":
            continue
        if name not in config:
            continue
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x) for x in v[1:])):
            refuse(name, "[mode name, low, high] such as ['exp', 1, inf]")
    for name in ("norm_im2_in_dec", "two_confs"):
        if name in config and not isinstance(config[name], bool):
            refuse(name, "true or false")
    for name in ("head_type", "output_mode", "pos_embed"):
        if name in config and not isinstance(config[name], str):
            refuse(name, "a string")


# --- detection and reading -----------------------------------------------------------------------
def _pickle_bytes(path: Path) -> bytes:
    """The pickle of a torch zip file (nothing unpickled); ``b""`` if it is not one."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return zf.read(name) if name is not None else b""
    except (OSError, zipfile.BadZipFile, ValueError):
        return b""


def _hf_family(config: dict[str, Any]) -> type[Dust3r]:
    if str(config.get("output_mode", "")).startswith("pts3d+desc") or "two_confs" in config:
        return Mast3r
    return Dust3r


def _is_croco_hf_config(config: dict[str, Any]) -> bool:
    return bool(config) and set(config) <= (_accepted_args(Mast3r) | IGNORED_ARGS) and "enc_depth" in config


def detect(path: Path) -> bool:
    """An official DUSt3R/MASt3R ``.pth`` (its ``args.model`` names one of :data:`OFFICIAL_CLASSES`)
    or a Hugging Face folder whose ``config.json`` holds CroCo constructor kwargs."""
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            return False
        try:
            config = read_json(cfg)
        except CheckpointError:
            return False
        return config.get("family") in ("dust3r", "mast3r") or _is_croco_hf_config(config)
    data = _pickle_bytes(path)
    return any(name.encode() in data for name in OFFICIAL_CLASSES)


def read_official_pth(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict)`` of an official ``.pth`` (``{'model', 'args'}``) or a plain
    state_dict pickle (official keys)."""
    path = Path(path)
    obj = safe_torch_load(path, [argparse.Namespace])
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


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a Hugging Face folder (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path}: a Hugging Face model folder needs config.json and model.safetensors")
    hf = read_json(cfg_path)
    _, state_dict = read_safetensors(weights)
    family = hf.get("family")
    cls = {"dust3r": Dust3r, "mast3r": Mast3r}.get(family) if family else _hf_family(hf)
    if cls is None:
        raise CheckpointError(f"{cfg_path}: family {family!r} is not DUSt3R or MASt3R")
    kwargs = {k: v for k, v in hf.items() if k != "family"}
    return model_config(cls, kwargs, state_dict, source=str(cfg_path)), state_dict


def read(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict with our keys)`` of an official file or folder (module doc)."""
    path = Path(path)
    if path.is_dir():
        config, state_dict = read_hf_folder(path)
    elif path.suffix == ".safetensors":
        config, state_dict = None, read_safetensors(path)[1]
    else:
        config, state_dict = read_official_pth(path)
    return config, to_fin3r_keys(check_state_dict(state_dict, str(path)))


# --- key policy ----------------------------------------------------------------------------------
def to_fin3r_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official keys -> ours (see the module docstring)."""
    out = fold_dpt_aliases(state_dict)
    out.pop("mask_token", None)
    if any(k.startswith("dec_blocks.") for k in out) and not any(k.startswith("dec_blocks2.") for k in out):
        for key in [k for k in out if k.startswith("dec_blocks.")]:
            out["dec_blocks2." + key[len("dec_blocks."):]] = out[key]
    return out


# --- writing -------------------------------------------------------------------------------------
def official_kwargs(model: Dust3r) -> dict[str, Any]:
    """The model's constructor kwargs as the official constructor takes them (tuples, no fin3r-only
    widths)."""
    config = dict(model.config_dict())
    config.pop("family")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k not in FIN3R_ONLY_ARGS}


def constructor_string(model: Dust3r) -> str:
    """``"AsymmetricCroCo3DStereo(head_type='dpt', ...)"`` for ``args.model`` of an official file."""
    name = next(c for c, cls in OFFICIAL_CLASSES.items() if cls.family == model.family)
    kwargs = ", ".join(f"{k}={v!r}" for k, v in official_kwargs(model).items())
    return f"{name}({kwargs})"


def save_official_pth(model: Dust3r, path: str | os.PathLike) -> Path:
    """Write ``{'model': official_state_dict(), 'args': Namespace(model=<ctor string>)}``: loads in
    the original repository (``load_model``) and back here. Tiny models with non-official DPT
    widths load here only (the official constructor hard-codes the widths)."""
    sd = {k: v.detach().cpu() for k, v in model.official_state_dict().items()}
    obj = {"model": sd, "args": argparse.Namespace(model=constructor_string(model))}
    return atomic_torch_save(obj, path, fsync=False)


def hf_config(model: Dust3r) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face folder: :func:`official_kwargs` (no fin3r-only DPT/MLP
    widths: the official constructor takes ``**croco_kwargs`` and would fail on them; our reader
    infers them from the weight shapes), tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in official_kwargs(model).items()}


__all__ = ["OFFICIAL_CLASSES", "IGNORED_ARGS", "FIN3R_ONLY_ARGS", "model_config", "infer_widths", "check_config",
           "detect", "read", "read_official_pth", "read_hf_folder", "to_fin3r_keys", "official_kwargs",
           "constructor_string", "save_official_pth", "hf_config"]
