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

The architecture is the file's own ``args.model``
(``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))"``), parsed with :mod:`ast` (literals only,
never evaluated) and completed with the official defaults; the DPT widths the official code
hard-codes are read from the weight shapes; block counts and widths are checked against the
tensors before anything is allocated (:func:`check_config`). Any configuration loads, not only the
released ones. A file without ``args`` is taken for the released model its head indicates
(:func:`guess_config_name`).
Key policy (:func:`cut3r_keys`): strip ``module.``; the DPT alias keys
``*.scratch.layer_rn.{i}.weight`` are dropped (or renamed to ``layer{i+1}_rn`` when only the alias is
present); ``dec_blocks.*`` is copied to ``dec_blocks_state.*`` when the latter is absent (as the
official loader does for early-stage files).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from fin3r.errors import CheckpointError
from fin3r.io import atomic_torch_save, read_safetensors, safe_torch_load
from fin3r.models.cut3r.model import Cut3r
from fin3r.models.heads.dpt_croco import dpt_widths_from_state_dict
from fin3r.models.io import (
    check_blocks,
    check_positive_ints,
    check_state_dict,
    check_width,
    fold_dpt_aliases,
    parse_nested_constructor,
    read_json,
)

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
    obj = safe_torch_load(path, OMEGACONF_SAFE_GLOBALS + _numpy_safe_globals())
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


# --- args.model --------------------------------------------------------------------------------
def parse_model_string(text: str) -> dict[str, Any]:
    """``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))" -> {k: v}`` with :mod:`ast` (literals only)."""
    try:
        outer, inner, kwargs = parse_nested_constructor(text)
    except CheckpointError as e:
        raise CheckpointError(f"args.model: {e}") from None
    if outer != "ARCroco3DStereo" or inner != "ARCroco3DStereoConfig":
        raise CheckpointError(f"args.model is not `ARCroco3DStereo(ARCroco3DStereoConfig(...))`: {text[:200]!r}")
    return kwargs


def _canon(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def completed_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs completed with the (official) defaults of :class:`~fin3r.models.cut3r.model.Cut3r`
    (ignored official arguments dropped, tuples as lists); unknown arguments are an error."""
    params = inspect.signature(Cut3r.__init__).parameters
    out = {n: p.default for n, p in params.items() if n != "self"}
    unknown = [k for k in kwargs if k not in out and k not in IGNORED_ARGS]
    if unknown:
        raise CheckpointError(f"args.model: unknown ARCroco3DStereoConfig argument(s) {unknown}")
    out.update({k: v for k, v in kwargs.items() if k not in IGNORED_ARGS})
    if isinstance(out["img_size"], int):
        out["img_size"] = [out["img_size"], out["img_size"]]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def effective_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """:func:`completed_config` with numbers as floats, for comparing two descriptions."""
    return {k: _canon(v) for k, v in completed_config(kwargs).items()}


def model_config(kwargs: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """A registry config (``family`` + our kwargs) from a parsed ``args.model``: the official
    defaults completed, the DPT widths read from the weight shapes."""
    config = {k: v for k, v in completed_config(kwargs).items() if k not in _WIDTHS}
    if config.get("head_type") == "dpt":
        widths = dpt_widths_from_state_dict(state_dict, "downstream_head.dpt_self.")
        if widths:
            config.update(dpt_layer_dims=widths["layer_dims"], dpt_feature_dim=widths["feature_dim"],
                          dpt_last_dim=widths["last_dim"])
    return {"family": Cut3r.family, **config}


_WIDTHS = ("dpt_layer_dims", "dpt_feature_dim", "dpt_last_dim")


def check_config(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> None:
    """The description's block counts and widths against the tensors (before allocation)."""
    c = completed_config({k: v for k, v in config.items() if k != "family"})
    check_positive_ints(c, ("enc_depth", "dec_depth", "enc_embed_dim", "dec_embed_dim", "enc_num_heads",
                            "dec_num_heads", "state_size", "local_mem_size", "state_dec_num_heads", "img_size"),
                        source)
    check_blocks(state_dict, {"enc_blocks.": c["enc_depth"], "dec_blocks.": c["dec_depth"],
                              "dec_blocks_state.": c["dec_depth"], "enc_blocks_ray_map.": c["ray_enc_depth"]},
                 source)
    check_width(state_dict, "enc_norm.weight", 0, c["enc_embed_dim"], "enc_embed_dim", source)
    check_width(state_dict, "dec_norm.weight", 0, c["dec_embed_dim"], "dec_embed_dim", source)
    check_width(state_dict, "register_tokens.weight", 0, c["state_size"], "state_size", source)
    check_width(state_dict, "pose_retriever.mem", 1, c["local_mem_size"], "local_mem_size", source)


# --- weights -----------------------------------------------------------------------------------
def cut3r_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official keys -> ours (see the module docstring)."""
    out = fold_dpt_aliases(state_dict)
    if not any(k.startswith("dec_blocks_state.") for k in out):
        for key in [k for k in out if k.startswith("dec_blocks.")]:
            out["dec_blocks_state." + key[len("dec_blocks."):]] = out[key]
    return out


def read_cut3r_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict with our keys)`` of an official CUT3R ``.pth``
    (``{'model', 'args', ...}``) or a plain state_dict pickle. The config is ``None`` when the file
    carries no ``args.model``."""
    obj = load_pth(path)
    if "model" in obj:
        state_dict, args = obj["model"], obj.get("args")
    else:
        state_dict, args = obj, None
    if not isinstance(state_dict, dict) or not state_dict or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()):
        raise CheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    state_dict = cut3r_keys(state_dict)
    args = plain_config(args)
    model_string = args.get("model") if isinstance(args, dict) else None
    if model_string is None:
        return None, state_dict
    if not isinstance(model_string, str):
        raise CheckpointError(f"{path}: args.model is not a string ({type(model_string).__name__})")
    try:
        config = model_config(parse_model_string(model_string), state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config, state_dict


def read_hf_folder(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a Hugging Face folder written by fin3r (``config.json``: our
    constructor kwargs, ``model.safetensors``: the official keys)."""
    cfg, weights = path / "config.json", path / "model.safetensors"
    if not cfg.is_file() or not weights.is_file():
        raise CheckpointError(f"{path}: a Hugging Face model folder needs config.json and model.safetensors")
    kwargs = {k: v for k, v in read_json(cfg).items() if k != "family"}
    try:
        effective_config(kwargs)
    except CheckpointError as e:
        raise CheckpointError(f"{cfg}: {e}") from None
    state_dict = cut3r_keys(check_state_dict(read_safetensors(weights)[1], str(weights)))
    config = {"family": Cut3r.family, **kwargs}
    return config, state_dict


def read(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict with our keys)`` of an official ``.pth``, a plain state_dict
    (``.pth`` / ``.safetensors``) or a fin3r-written Hugging Face folder."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path)
    if path.suffix == ".safetensors":
        return None, cut3r_keys(check_state_dict(read_safetensors(path)[1], str(path)))
    return read_cut3r_checkpoint(path)


def detect(path: Path) -> bool:
    """An official CUT3R ``.pth`` (:func:`is_cut3r_pth`) or a folder whose ``model.safetensors``
    holds the state decoder (``dec_blocks_state.*``)."""
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            return False
        try:
            with safe_open(str(weights), framework="pt") as f:
                return any(k.startswith("dec_blocks_state.") for k in f.keys())
        except Exception:
            return False
    return is_cut3r_pth(path)


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


def save_official_pth(model: Cut3r, path: str | os.PathLike) -> Path:
    """Write ``{'model': official_state_dict(), 'args': Namespace(model=<args.model string>)}``:
    the layout of the released files (the official code loads it; tiny models with non-official
    DPT widths load here only, the official constructor hard-codes the widths)."""
    sd = {k: v.detach().cpu() for k, v in model.official_state_dict().items()}
    obj = {"model": sd, "args": argparse.Namespace(model=constructor_string(model.config_dict()))}
    return atomic_torch_save(obj, path, fsync=False)


def hf_config(model: Cut3r) -> dict[str, Any]:
    """``config.json`` of a Hugging Face folder: our constructor kwargs (CUT3R has no official
    Hugging Face class)."""
    config = dict(model.config_dict())
    config.pop("family")
    return config


__all__ = ["OMEGACONF_SAFE_GLOBALS", "load_pth", "plain_config", "parse_model_string", "model_config",
           "check_config", "completed_config", "effective_config", "cut3r_keys", "read_cut3r_checkpoint", "read", "read_hf_folder",
           "detect", "is_cut3r_pth", "guess_config_name", "constructor_string", "save_official_pth", "hf_config"]
