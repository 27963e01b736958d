"""π3 / Pi3X official formats: detect, read, write.

- a Hugging Face folder, what ``from_pretrained`` reads (``PyTorchModelHubMixin``): ``config.json``
  = the constructor kwargs (``Pi3``: ``{"pos_type": "rope100", "decoder_size": "large"}``;
  ``Pi3X``: ``{"ckpt": null, "use_multimodal": ...}``) + ``model.safetensors``; fin3r's sidecar
  config (``fin3r_config.json``) beside it for architectures the official kwargs cannot describe
  (tiny test models);
- a bare ``.safetensors`` state_dict (the released ``model.safetensors``) or a ``.pth`` state_dict
  (``torch.save(model.state_dict())``, also ``{"model": state_dict}``), what the official examples
  load with ``load_state_dict``. These carry no architecture: the loader falls back to ``pi3``, or
  to ``pi3x`` when the weights hold Pi3X's ``metric_token``.

Only ``decoder_size='large'`` exists as a working official π3 architecture (see
:mod:`fin3r.models.pi3.configs`); ``small``/``base`` descriptions are refused with that reason.
Pi3X is built with its conditioning branches off: their tensors (``depth_encoder.*``,
``depth_emb``, ``ray_embed.*``, ``pose_inject_blk.*``) are dropped on reading, as the official
``disable_multimodal()`` deletes them. The official file to write is a plain state_dict
(``torch.save``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError
from fin3r.io import atomic_torch_save
from fin3r.models.io import (
    FIN3R_CONFIG_FILE,
    check_blocks,
    check_positive_ints,
    check_width,
    read_json,
    read_weights_file,
    strip_module,
    weights_file_has_key,
)
from fin3r.models.pi3.configs import OFFICIAL_DECODER_SIZES, PI3_CONFIG, PI3X_CONFIG
from fin3r.models.pi3.model import Pi3

log = logging.getLogger(__name__)

#: a key only π3-family weights hold (the camera branch's token decoder)
KEY_MARKER = "camera_decoder.projects."
#: a key only Pi3X holds
PI3X_MARKER = "metric_token"
#: Pi3X's conditioning branches (depth, rays, poses), deleted by its ``disable_multimodal()``
PI3X_CONDITIONING = ("depth_encoder.", "depth_emb", "ray_embed.", "pose_inject_blk.")
_POS_TYPE = re.compile(r"^rope(\d+(\.\d*)?)$")


def config_from_hf(hf_config: dict[str, Any], source: str) -> dict[str, Any]:
    """Our config from the official ``config.json`` kwargs (``Pi3``: ``pos_type``, ``decoder_size``;
    ``Pi3X``: ``ckpt``, ``use_multimodal``)."""
    if set(hf_config) and set(hf_config) <= {"ckpt", "use_multimodal"}:
        return {"family": Pi3.family, **PI3X_CONFIG}
    unknown = sorted(set(hf_config) - {"pos_type", "decoder_size"})
    if unknown:
        raise CheckpointError(f"{source}: unknown Pi3 argument(s) {unknown} (known: pos_type, decoder_size; Pi3X: "
                              "ckpt, use_multimodal)")
    size = hf_config.get("decoder_size", "large")
    if size not in OFFICIAL_DECODER_SIZES:
        raise CheckpointError(f"{source}: decoder_size {size!r} is not one of {sorted(OFFICIAL_DECODER_SIZES)}")
    if size != "large":
        raise CheckpointError(f"{source}: decoder_size {size!r} cannot run, in fin3r or in the official code: its "
                              f"{OFFICIAL_DECODER_SIZES[size][0]}-wide decoder takes the encoder's 1024-wide tokens "
                              "without a projection; only 'large' is supported")
    pos_type = hf_config.get("pos_type", "rope100")
    match = _POS_TYPE.match(str(pos_type))
    if not match or not 0 < float(match.group(1)) < 1e9:
        raise CheckpointError(f"{source}: pos_type {pos_type!r} is not supported (the official model takes "
                              "'rope<frequency>', e.g. 'rope100')")
    return {"family": Pi3.family, **PI3_CONFIG, "rope_freq": float(match.group(1))}


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    config = read_json(path)
    if config.get("family") != Pi3.family:
        raise CheckpointError(f"{path}: expected a fin3r π3 config (a JSON object with family 'pi3')")
    return config


def read(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict)`` of an official π3 file or folder (module docstring);
    ``module.`` prefixes stripped. Never unpickles anything but tensors."""
    path = Path(path)
    config: dict[str, Any] | None = None
    if path.is_dir():
        config = _read_sidecar(path / FIN3R_CONFIG_FILE)
        if config is None and (path / "config.json").is_file():
            config = config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
        weights = next((path / n for n in ("model.safetensors", "model.pth", "model.pt") if (path / n).is_file()),
                       None)
        if weights is None:
            raise CheckpointError(f"{path}: folder has no model.safetensors")
        path = weights
    state_dict = strip_module(read_weights_file(path))
    dropped = [k for k in state_dict if k.startswith(PI3X_CONDITIONING)]
    if dropped:
        log.info("%s: dropped %d tensors of Pi3X's conditioning branches (built with use_multimodal=False)", path,
                 len(dropped))
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(PI3X_CONDITIONING)}
    return config, state_dict


def fallback_config(state_dict: dict[str, Tensor]) -> str:
    """The registry name for weights without a description: ``pi3x`` if they hold Pi3X's
    ``metric_token``, else ``pi3``."""
    return "pi3x" if PI3X_MARKER in state_dict else "pi3"


def detect(path: Path) -> bool:
    """π3 / Pi3X weights: a ``.safetensors``/``.pth`` file or a folder holding one, with a
    ``camera_decoder.projects.*`` key (reads headers / pickle bytes only)."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("model.safetensors", "model.pth", "model.pt") if (path / n).is_file()), path)
        if path.is_dir():
            return False
    return weights_file_has_key(path, KEY_MARKER)


def check_config(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> None:
    """The description's block counts and widths against the tensors (before allocation)."""
    c = {**PI3_CONFIG, **{k: v for k, v in config.items() if k != "family"}}
    check_positive_ints(c, ("img_size", "patch_size", "embed_dim", "encoder_depth", "encoder_num_heads",
                            "decoder_depth", "decoder_num_heads", "num_register_tokens", "head_dim", "head_num_heads",
                            "head_depth", "point_out_dim", "camera_out_dim"), source)
    check_blocks(state_dict, {"encoder.blocks.": c["encoder_depth"], "decoder.": c["decoder_depth"],
                              "point_decoder.blocks.": c["head_depth"], "conf_decoder.blocks.": c["head_depth"],
                              "camera_decoder.blocks.": c["head_depth"]}, source)
    check_width(state_dict, "encoder.cls_token", 2, c["embed_dim"], "embed_dim", source)
    check_width(state_dict, "register_token", 2, c["num_register_tokens"], "num_register_tokens", source)
    check_width(state_dict, "point_decoder.projects.weight", 0, c["head_dim"], "head_dim", source)
    check_width(state_dict, "point_head.proj.weight", 1, c["point_out_dim"], "point_out_dim", source)
    check_width(state_dict, "camera_head.fc_t.weight", 1, c["camera_out_dim"], "camera_out_dim", source)
    if c["dense_head"] not in ("linear", "conv"):
        raise CheckpointError(f"{source}: dense_head={c['dense_head']!r} is not 'linear' or 'conv'")
    if c["dense_head"] == "conv":
        check_positive_ints(c, ("conv_dims", "conv_res_blocks", "conv_last_channels"), source)
        check_blocks(state_dict, {"point_head.upsample_blocks.": len(c["conv_dims"])}, source)
    if c["metric"]:
        check_positive_ints(c, ("metric_dim", "metric_num_heads", "metric_depth"), source)
        check_blocks(state_dict, {"metric_decoder.blocks.": c["metric_depth"]}, source)
    for dim, heads in (("embed_dim", "encoder_num_heads"), ("embed_dim", "decoder_num_heads"),
                       ("head_dim", "head_num_heads"), ("metric_dim", "metric_num_heads")):
        if c[dim] % c[heads] or (heads != "encoder_num_heads" and (c[dim] // c[heads]) % 4):
            raise CheckpointError(f"{source}: {dim}={c[dim]} does not split into {c[heads]} heads of a width that is a "
                                  "multiple of 4 (RoPE2D)")


def save_official(model: Pi3, path: str | os.PathLike) -> Path:
    """A plain state_dict (``torch.save``), what the official ``Pi3().load_state_dict`` (or, for the
    Pi3X heads, ``Pi3X(use_multimodal=False).load_state_dict``) takes."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()}
    return atomic_torch_save(sd, path, fsync=False)


__all__ = ["read", "detect", "check_config", "fallback_config", "save_official", "config_from_hf", "KEY_MARKER"]
