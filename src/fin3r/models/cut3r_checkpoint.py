"""Reading official CUT3R checkpoints safely.

An official ``.pth`` (``src/train.py: save_final_model``) is a pickle of
``{'model': state_dict, 'args': <hydra OmegaConf DictConfig>, 'epoch': int, ...}``. We read it with
``torch.load(weights_only=True)``: besides tensors and containers, the only globals allowed are
inert stand-ins registered under the OmegaConf class names (``omegaconf.dictconfig.DictConfig``,
``omegaconf.listconfig.ListConfig``, ``omegaconf.nodes.*Node``, ``omegaconf.base.*Metadata``) and
the plain type objects OmegaConf stores as metadata (``typing.Any``, ``dict``, ``list``, ...). A
stand-in only records the pickled state as data; :func:`plain_config` turns the tree into plain
dicts/lists. No OmegaConf code runs, nothing is evaluated, any other global is refused. Files
whose ``args`` is an ``argparse.Namespace`` (as fin3r writes them) are read too, and numpy scalars
(e.g. ``best_so_far``) are allowed.

The architecture is never built from the file: ``args.model``
(``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))"``) is parsed with :mod:`ast` (literals only)
and must match one of the known configurations (:data:`fin3r.models.cut3r.CUT3R_CONFIGS`).
Key policy (:func:`cut3r_keys`): strip ``module.``; the DPT alias keys
``*.scratch.layer_rn.{i}.weight`` are dropped (or renamed to ``layer{i+1}_rn`` when only the alias is
present); ``dec_blocks.*`` is copied to ``dec_blocks_state.*`` when the latter is absent (as the
official loader does for early-stage files).
"""

from __future__ import annotations

import argparse
import ast
import collections
import inspect
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError

#: official ``ARCroco3DStereoConfig`` arguments that do not change the inference architecture
IGNORED_ARGS = frozenset({"freeze", "patch_embed_cls", "landscape_only", "depth_head", "pose_conf_head"})


class _PickledState:
    """An inert stand-in for a pickled object: keeps the state it was given as data."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class OmegaConfDict(_PickledState):
    """Stand-in for ``omegaconf.dictconfig.DictConfig``."""


class OmegaConfList(_PickledState):
    """Stand-in for ``omegaconf.listconfig.ListConfig``."""


class OmegaConfNode(_PickledState):
    """Stand-in for an ``omegaconf.nodes`` value node (the value is ``state['_val']``)."""


class OmegaConfMetadata(_PickledState):
    """Stand-in for ``omegaconf.base.Metadata`` / ``ContainerMetadata`` (ignored)."""


class _TypingStandIn:
    """Stand-in for ``typing.*`` objects stored as OmegaConf type metadata."""


_NODE_CLASSES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
                 "EnumNode", "ValueNode", "InterpolationResultNode", "UnionNode")

#: ``(stand-in, pickled global name)`` pairs allowed while reading a CUT3R ``.pth``
OMEGACONF_SAFE_GLOBALS: list[Any] = [
    (OmegaConfDict, "omegaconf.dictconfig.DictConfig"),
    (OmegaConfList, "omegaconf.listconfig.ListConfig"),
    (OmegaConfMetadata, "omegaconf.base.Metadata"),
    (OmegaConfMetadata, "omegaconf.base.ContainerMetadata"),
    *[(OmegaConfNode, f"omegaconf.nodes.{name}") for name in _NODE_CLASSES],
    *[(_TypingStandIn, f"typing.{name}") for name in ("Any", "Optional", "Union")],
    collections.defaultdict, dict, list, tuple, int, float, str, bool, argparse.Namespace,
]


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars (training files store e.g. ``best_so_far`` as ``np.float64``): the scalar
    reconstructor under its numpy 1 and 2 names, ``np.dtype`` and the common dtype classes."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
        return []
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    classes = [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                            "Int32DType", "BoolDType") if dtypes is not None and hasattr(dtypes, n)]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *classes]


def plain_config(obj: Any) -> Any:
    """The stand-in tree of a pickled OmegaConf config as plain dicts/lists/values (missing or
    interpolation strings are returned as they are, unresolved)."""
    if isinstance(obj, (OmegaConfDict, OmegaConfList)):
        content = (obj.state or {}).get("_content") if isinstance(obj.state, dict) else None
        if isinstance(content, dict):
            return {k: plain_config(v) for k, v in content.items()}
        if isinstance(content, list):
            return [plain_config(v) for v in content]
        return content
    if isinstance(obj, OmegaConfNode):
        return plain_config(obj.state.get("_val")) if isinstance(obj.state, dict) else None
    if isinstance(obj, argparse.Namespace):
        return {k: plain_config(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_config(v) for v in obj]
    return obj


def load_pth(path: str | os.PathLike) -> dict[str, Any]:
    """The unpickled top-level dict of an official ``.pth`` (``weights_only=True`` + stand-ins)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(OMEGACONF_SAFE_GLOBALS + _numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        detail = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), lines[0] if lines else "")
        raise CheckpointError(f"{path}: refusing to unpickle a non-weights object ({detail.strip()}); only "
                              "tensors, containers and OmegaConf/argparse configs are allowed") from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


# --- args.model --------------------------------------------------------------------------------
def parse_model_string(text: str) -> dict[str, Any]:
    """``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))" -> {k: v}`` with :mod:`ast` (literals only)."""
    from fin3r.models.checkpoints import parse_constructor

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"args.model is not valid Python syntax: {text!r} ({e.msg})") from e
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "ARCroco3DStereo"
            and len(call.args) == 1 and not call.keywords and isinstance(call.args[0], ast.Call)):
        raise CheckpointError(f"args.model is not `ARCroco3DStereo(ARCroco3DStereoConfig(...))`: {text!r}")
    inner = ast.get_source_segment(text.strip(), call.args[0])
    cls_name, kwargs = parse_constructor(inner)
    if cls_name != "ARCroco3DStereoConfig":
        raise CheckpointError(f"args.model: expected ARCroco3DStereoConfig(...), got {cls_name}(...)")
    return kwargs


def _canon(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def effective_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs completed with the (official) defaults of :class:`~fin3r.models.cut3r.Cut3r`."""
    from fin3r.models.cut3r import Cut3r

    params = inspect.signature(Cut3r.__init__).parameters
    out = {n: p.default for n, p in params.items() if n != "self"}
    unknown = [k for k in kwargs if k not in out and k not in IGNORED_ARGS]
    if unknown:
        raise CheckpointError(f"args.model: unknown ARCroco3DStereoConfig argument(s) {unknown}")
    out.update({k: v for k, v in kwargs.items() if k not in IGNORED_ARGS})
    if isinstance(out["img_size"], int):
        out["img_size"] = [out["img_size"], out["img_size"]]
    return {k: _canon(v) for k, v in out.items()}


def match_known_config(kwargs: dict[str, Any]) -> str:
    """The name of the known configuration (:data:`~fin3r.models.cut3r.CUT3R_CONFIGS`) that
    ``kwargs`` (parsed ``args.model``) describes; the DPT widths, which the official string does
    not carry, are not compared. :class:`CheckpointError` if none matches."""
    from fin3r.models.cut3r import CUT3R_CONFIGS

    widths = {"dpt_layer_dims", "dpt_feature_dim", "dpt_last_dim"}
    want = {k: v for k, v in effective_config(kwargs).items() if k not in widths}
    best, best_diff = None, None
    for name, config in CUT3R_CONFIGS.items():
        have = {k: v for k, v in effective_config(config).items() if k not in widths}
        diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
        if not diff:
            return name
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    raise CheckpointError(f"args.model describes no known CUT3R configuration (closest: {best}, differing in "
                          + ", ".join(f"{k}: file {a!r} vs {b!r}" for k, (a, b) in sorted(best_diff.items())) + ")")


# --- weights -----------------------------------------------------------------------------------
def cut3r_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official keys -> ours (see the module docstring)."""
    from fin3r.models.checkpoints import strip_module_and_dpt_aliases

    out = strip_module_and_dpt_aliases(state_dict)
    if not any(k.startswith("dec_blocks_state.") for k in out):
        for key in [k for k in out if k.startswith("dec_blocks.")]:
            out["dec_blocks_state." + key[len("dec_blocks."):]] = out[key]
    return out


def read_cut3r_checkpoint(path: str | os.PathLike) -> tuple[str | None, dict[str, Tensor]]:
    """``(known config name or None, state_dict with our keys)`` of an official CUT3R ``.pth``
    (``{'model', 'args', ...}``) or a plain state_dict pickle. The name is ``None`` when the file
    carries no ``args.model``."""
    obj = load_pth(path)
    if "model" in obj:
        state_dict, args = obj["model"], obj.get("args")
    else:
        state_dict, args = obj, None
    if not isinstance(state_dict, dict) or not state_dict or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()):
        raise CheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    args = plain_config(args)
    model_string = args.get("model") if isinstance(args, dict) else None
    name = None
    if model_string is not None:
        if not isinstance(model_string, str):
            raise CheckpointError(f"{path}: args.model is not a string ({type(model_string).__name__})")
        try:
            name = match_known_config(parse_model_string(model_string))
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
    return name, cut3r_keys(state_dict)


def is_cut3r_pth(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a torch zip checkpoint that looks like an official CUT3R file (its pickle
    names ``ARCroco3DStereo`` or OmegaConf, or it holds ``dec_blocks_state`` weights). Reads only
    the pickle bytes, unpickles nothing."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            data = zf.read(name) if name is not None else b""
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(marker in data for marker in (b"ARCroco3DStereo", b"omegaconf.dictconfig", b"dec_blocks_state."))


def guess_config_name(state_dict: dict[str, Tensor]) -> str:
    """The released configuration a state_dict without ``args`` most likely is (by its head)."""
    if any(k.startswith("downstream_head.dpt_self.") for k in state_dict):
        return "cut3r_512_dpt_4_64"
    return "cut3r_224_linear_4"


def constructor_string(config: dict[str, Any]) -> str:
    """``args.model`` for constructor kwargs (official names; fin3r-only DPT widths left out)."""
    skip = {"family", "dpt_layer_dims", "dpt_feature_dim", "dpt_last_dim"}

    def fmt(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "(" + ", ".join(fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)

    body = ", ".join(f"{k}={fmt(v)}" for k, v in config.items() if k not in skip)
    return f"ARCroco3DStereo(ARCroco3DStereoConfig({body}))"


__all__ = ["OMEGACONF_SAFE_GLOBALS", "load_pth", "plain_config", "parse_model_string", "match_known_config",
           "effective_config", "cut3r_keys", "read_cut3r_checkpoint", "is_cut3r_pth", "guess_config_name",
           "constructor_string"]
