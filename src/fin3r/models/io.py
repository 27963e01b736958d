"""Reading model files safely: the layer under every family's converter (imports no model).

- :func:`read_fin3r_file`: the fin3r model format, one safetensors file whose metadata holds
  ``{"format": "fin3r", "config": <JSON of model.config_dict()>}``;
- :func:`read_json` / :func:`parse_constructor`: a file's own description of its architecture
  (``config.json``, the ``args.model`` constructor string, parsed with :mod:`ast`, never evaluated);
- :func:`check_blocks` / :func:`check_width`: a description checked against the tensors present
  *before* the model is allocated, so a small file cannot ask for a huge model;
- :func:`load_state_dict_strict`: ``strict=True`` loading whose error names the keys;
- key clean-up shared by the families (:func:`strip_module`, :func:`fold_dpt_aliases`).

The safe ``torch.load`` and the safetensors reader live in :mod:`fin3r.io`.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from fin3r.errors import CheckpointError
from fin3r.io import read_safetensors, safe_torch_load

#: beside ``config.json`` in a Hugging Face folder: fin3r's full model config, written only when the
#: official constructor's kwargs cannot describe the architecture (tiny test models)
FIN3R_CONFIG_FILE = "fin3r_config.json"
#: the longest constructor string / JSON description read (the released ones are < 1 kB)
MAX_DESCRIPTION_CHARS = 100_000
#: the deepest nesting of literals accepted in a constructor string
MAX_LITERAL_DEPTH = 16
_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}


# --- fin3r files ---------------------------------------------------------------------------------
def read_fin3r_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a fin3r safetensors file; :class:`CheckpointError` if it is not one."""
    metadata, state_dict = read_safetensors(path)
    if metadata.get("format") != "fin3r" or "config" not in metadata:
        raise CheckpointError(f"{path}: not a fin3r model file (no fin3r config in the safetensors metadata)")
    config = parse_json(metadata["config"], f"{path}: metadata 'config'")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: metadata 'config' is not a JSON object")
    return config, state_dict


def is_fin3r_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file with fin3r model metadata (reads the header only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "fin3r"
    except Exception:
        return False


# --- descriptions --------------------------------------------------------------------------------
def parse_json(text: str, source: str) -> Any:
    """``json.loads`` with size and nesting limits; :class:`CheckpointError` naming ``source``."""
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise CheckpointError(f"{source}: {len(text)} characters, more than a model description holds "
                              f"({MAX_DESCRIPTION_CHARS})")
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{source}: JSON nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(f"{source}: invalid JSON ({e})") from None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path`` (size and nesting limited)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    obj = parse_json(text, str(path))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def _literal(node: ast.AST, text: str, depth: int = 0) -> Any:
    """A literal value of an ``ast`` node: constants, tuples, lists, dicts, ``inf`` names, unary minus."""
    if depth > MAX_LITERAL_DEPTH:
        raise CheckpointError(f"constructor string: literals nested deeper than {MAX_LITERAL_DEPTH}")
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, text, depth + 1)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CheckpointError(f"constructor string: cannot negate {ast.get_source_segment(text, node)!r}")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e, text, depth + 1) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Dict):
        return {_literal(k, text, depth + 1): _literal(v, text, depth + 1) for k, v in zip(node.keys, node.values)}
    segment = ast.get_source_segment(text, node)
    if isinstance(node, ast.Call):
        raise CheckpointError(f"constructor string: nested call {segment!r} is not allowed (only literals)")
    raise CheckpointError(f"constructor string: {segment!r} is not a literal")


def _parse_call(text: str) -> ast.Call:
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise CheckpointError(f"constructor string of {len(text)} characters is longer than any model "
                              f"description ({MAX_DESCRIPTION_CHARS})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"constructor string is not valid Python syntax: {text[:200]!r} ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise CheckpointError("constructor string is nested too deeply") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise CheckpointError(f"constructor string must be a call `ClassName(key=value, ...)`, got {text[:200]!r}")
    return call


def _keywords(call: ast.Call, text: str) -> dict[str, Any]:
    if call.args:
        raise CheckpointError(f"constructor string: positional arguments are not supported: {text[:200]!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(f"constructor string: `**` arguments are not supported: {text[:200]!r}")
        kwargs[kw.arg] = _literal(kw.value, text)
    return kwargs


def parse_constructor(text: str) -> tuple[str, dict[str, Any]]:
    """``"Cls(a=1, b=('exp', -inf, inf))" -> ("Cls", {"a": 1, "b": ("exp", -inf, inf)})``, never evaluated."""
    text = text.strip()
    call = _parse_call(text)
    return call.func.id, _keywords(call, text)


def parse_nested_constructor(text: str) -> tuple[str, str, dict[str, Any]]:
    """``"Outer(Inner(k=v, ...))" -> ("Outer", "Inner", {k: v})`` (a model built from a config
    object, as CUT3R's ``args.model``), never evaluated."""
    text = text.strip()
    call = _parse_call(text)
    if len(call.args) != 1 or call.keywords or not isinstance(call.args[0], ast.Call) \
            or not isinstance(call.args[0].func, ast.Name):
        raise CheckpointError(f"constructor string is not `Model(Config(...))`: {text[:200]!r}")
    inner = call.args[0]
    return call.func.id, inner.func.id, _keywords(inner, text)


# --- descriptions vs tensors ---------------------------------------------------------------------
def count_blocks(state_dict: dict[str, Tensor], prefix: str) -> int:
    """The number of numbered sub-modules ``<prefix><i>.`` in ``state_dict`` (``max i + 1``, 0 if none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for k in state_dict if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def check_blocks(state_dict: dict[str, Tensor], expected: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly ``expected[prefix]`` numbered
    blocks under each ``prefix`` (checked before a model is built from a file's description)."""
    for prefix, want in expected.items():
        if not isinstance(want, int) or isinstance(want, bool) or want < 0:
            raise CheckpointError(f"{source}: the description asks for {want!r} blocks '{prefix}*' "
                                  "(expected a non-negative integer)")
        have = count_blocks(state_dict, prefix)
        if have != want:
            raise CheckpointError(f"{source}: the description asks for {want} blocks '{prefix}*', the file "
                                  f"holds weights for {have}")


def check_width(state_dict: dict[str, Tensor], key: str, dim: int, want: Any, name: str, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict[key].shape[dim] == want`` (a width of the
    description checked against the tensors; a missing key is left to strict loading)."""
    if not isinstance(want, int) or isinstance(want, bool) or want <= 0:
        raise CheckpointError(f"{source}: {name}={want!r} is not a positive integer")
    tensor = state_dict.get(key)
    if tensor is not None and (tensor.ndim <= dim or tensor.shape[dim] != want):
        raise CheckpointError(f"{source}: {name}={want} does not match the weights ({key} has shape "
                              f"{tuple(tensor.shape)})")


def check_positive_ints(config: dict[str, Any], names: tuple[str, ...], source: str, limit: int = 1 << 16) -> None:
    """Raise :class:`CheckpointError` unless each of ``config[name]`` present is an int in ``[1, limit]``."""
    for name in names:
        if name not in config:
            continue
        v = config[name]
        values = v if isinstance(v, (list, tuple)) else [v]
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= limit for x in values):
            raise CheckpointError(f"{source}: {name}={v!r} is not a positive integer up to {limit}")


# --- state dicts ---------------------------------------------------------------------------------
def strip_module(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the ``module.`` prefix that ``DataParallel`` / DDP training adds."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def fold_dpt_aliases(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``module.`` and fold the CroCo DPT alias keys: ``*.scratch.layer_rn.{i}.*`` becomes
    ``*.scratch.layer{i+1}_rn.*`` when only the alias is present, else it is dropped."""
    sd = strip_module(state_dict)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".scratch.layer_rn." in key:
            prefix, rest = key.split(".scratch.layer_rn.", 1)
            i, _, tail = rest.partition(".")
            if not i.isdigit():
                raise CheckpointError(f"unexpected DPT alias key {key!r}")
            canonical = f"{prefix}.scratch.layer{int(i) + 1}_rn.{tail}"
            if canonical not in sd:
                out[canonical] = value
            continue
        out[key] = value
    return out


def check_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """``obj`` if it is a non-empty ``{str: Tensor}`` dict, else :class:`CheckpointError`."""
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{source}: expected a state_dict of tensors (name -> tensor)")
    return obj


def read_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state_dict of a bare weights file: ``.safetensors``, or a torch file holding a
    state_dict or ``{"model": state_dict}`` (``torch.load(weights_only=True)``, memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return check_state_dict(read_safetensors(path)[1], str(path))
    obj = safe_torch_load(path, mmap=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    return check_state_dict(obj, str(path))


def weights_file_has_key(path: str | os.PathLike, prefix: str) -> bool:
    """Whether a bare weights file (``.safetensors`` header, or the pickle bytes of a zip-format torch
    file) holds a key starting with ``prefix`` (a ``module.`` in front allowed for safetensors);
    reads no tensor, unpickles nothing; False for unreadable files."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return any(k.removeprefix("module.").startswith(prefix) for k in f.keys())
        except Exception:
            return False
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return name is not None and prefix.encode() in zf.read(name)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, Tensor], source: str,
                           assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with a clear :class:`CheckpointError` naming the keys
    (``assign=True``: the tensors replace the parameters, e.g. of a model built on the meta device)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} with other shapes (e.g. {k}: file {tuple(state_dict[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True, assign=assign)


__all__ = ["FIN3R_CONFIG_FILE", "read_fin3r_file", "is_fin3r_file", "parse_json", "read_json",
           "parse_constructor", "parse_nested_constructor", "count_blocks", "check_blocks", "check_width",
           "check_positive_ints", "strip_module", "fold_dpt_aliases", "check_state_dict", "load_state_dict_strict",
           "read_weights_file", "weights_file_has_key"]
