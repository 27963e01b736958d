"""VGGT official formats: detect, read, write.

- ``model.pt``: a plain state_dict (``torch.load(weights_only=True)``, memory-mapped); it carries no
  architecture, so the loader falls back to VGGT-1B (or the registry name it is given);
- a Hugging Face folder: ``config.json`` (the official constructor kwargs ``img_size, patch_size,
  embed_dim, enable_*``, or fin3r's full kwargs as older fin3r exports wrote) + ``model.safetensors``
  (or ``model.pt``), and fin3r's sidecar config for architectures the official kwargs cannot
  describe (``fin3r_config.json``);
- a plain ``.safetensors`` state_dict.

``track_head.*`` weights are dropped when loading (the track head is not built; see
:meth:`~fin3r.models.vggt.model.Vggt.load_official`). The official file to write is a plain
state_dict, what ``VGGT().load_state_dict`` takes.
"""

from __future__ import annotations

import os
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
from fin3r.models.vggt.model import BUILT_HEADS, VGGT_1B_CONFIG, Vggt

#: the marker of VGGT weights: the DINOv2 encoder inside the aggregator
_KEY_MARKER = "aggregator.patch_embed."


def _read_fin3r_config(path: Path) -> dict[str, Any]:
    """The VGGT constructor kwargs in a fin3r sidecar config (``{}`` if there is none)."""
    if not path.is_file():
        return {}
    config = read_json(path)
    if config.get("family") != "vggt":
        raise CheckpointError(f"{path}: expected a fin3r VGGT config (a JSON object with family 'vggt')")
    return {k: v for k, v in config.items() if k != "family"}


def read_vggt_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(hf_config, state_dict)`` of an official VGGT file or Hugging Face folder.

    ``hf_config`` is the folder's ``config.json`` (``{}`` for single files), updated by a fin3r
    sidecar if present; ``module.`` prefixes are stripped. Never unpickles anything but tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    hf_config: dict[str, Any] = {}
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.exists():
            hf_config = read_json(cfg)
        hf_config.update(_read_fin3r_config(path / FIN3R_CONFIG_FILE))
        for name in ("model.safetensors", "model.pt", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: folder has no model.safetensors / model.pt")
    state_dict = read_weights_file(path)
    return hf_config, strip_module(state_dict)


def read(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(config or None, state_dict)``: the config holds what the file says (``config.json`` and
    the sidecar: possibly only ``img_size, patch_size, embed_dim``; the rest comes from the
    requested or the fallback configuration); ``None`` for files without a description."""
    hf_config, state_dict = read_vggt_checkpoint(path)
    disabled = [h for h in BUILT_HEADS if hf_config.get(f"enable_{h}", True) is False]
    if disabled:
        raise CheckpointError(f"{path}: config.json disables the {' and '.join(disabled)} head(s); fin3r's "
                              f"Vggt always builds the camera, point and depth heads")
    described = {k: v for k, v in hf_config.items() if k in VGGT_1B_CONFIG}
    return ({"family": Vggt.family, **described} if described else None), state_dict


def detect(path: Path) -> bool:
    """Official VGGT weights: a ``model.pt``/``.safetensors`` file or a folder holding one, whose
    keys start with ``aggregator.patch_embed.`` (reads headers / pickle bytes only)."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("model.safetensors", "model.pt") if (path / n).is_file()), path)
        if path.is_dir():
            return False
    return weights_file_has_key(path, _KEY_MARKER)


def check_config(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> None:
    """The description's block counts and widths against the tensors (before allocation)."""
    c = {**VGGT_1B_CONFIG, **{k: v for k, v in config.items() if k != "family"}}
    check_positive_ints(c, ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_register_tokens",
                            "encoder_depth", "encoder_num_heads", "dpt_features", "camera_trunk_depth",
                            "camera_num_heads", "dpt_out_channels"), source)
    check_blocks(state_dict, {"aggregator.frame_blocks.": c["depth"], "aggregator.global_blocks.": c["depth"],
                              "aggregator.patch_embed.blocks.": c["encoder_depth"],
                              "camera_head.trunk.": c["camera_trunk_depth"]}, source)
    check_width(state_dict, "aggregator.camera_token", 3, c["embed_dim"], "embed_dim", source)
    check_width(state_dict, "aggregator.register_token", 2, c["num_register_tokens"], "num_register_tokens", source)


def save_official(model: Vggt, path: str | os.PathLike) -> Path:
    """A plain state_dict (``torch.save``), what ``VGGT().load_state_dict`` takes."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()}
    return atomic_torch_save(sd, path, fsync=False)


__all__ = ["read_vggt_checkpoint", "read", "detect", "check_config", "save_official"]
