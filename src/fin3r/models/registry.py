"""Model names -> architectures, and the fin3r model file format.

- :data:`MODEL_CONFIGS`: registry name -> config dict (``family`` + constructor kwargs).
- :func:`build_model` (random init), :func:`load_model` (a registry name, a fin3r ``.safetensors``
  file, an official ``.pth`` file or a Hugging Face folder), :func:`save_model`.
- The fin3r format is one safetensors file holding our state_dict, with the metadata
  ``{"format": "fin3r", "config": <JSON of model.config_dict()>}``.

Other model families register by adding to :data:`FAMILIES` (``"module:Class"`` strings, imported
lazily) and :data:`MODEL_CONFIGS`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from fin3r.errors import CheckpointError
from fin3r.io import atomic_write
from fin3r.models.base import Reconstructor
from fin3r.models.cut3r import CUT3R_CONFIGS

#: family name -> "module:Class"
FAMILIES: dict[str, str] = {
    "dust3r": "fin3r.models.dust3r:Dust3r",
    "mast3r": "fin3r.models.mast3r:Mast3r",
    "vggt": "fin3r.models.vggt:Vggt",
    "cut3r": "fin3r.models.cut3r:Cut3r",
}
#: families whose classes read official files themselves, ``cls.from_official(path, config=kwargs)``
#: (VGGT: its files carry no architecture, and a track head that is not built)
OWN_OFFICIAL_LOADERS: set[str] = {"vggt", "cut3r"}  # CUT3R: OmegaConf args, nested constructor string

inf = math.inf
_CROCO_LARGE = dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                    dec_num_heads=12, depth_mode=["exp", -inf, inf], conf_mode=["exp", 1, inf], pos_embed="RoPE100")

#: registry name -> {"family": ..., **constructor kwargs}
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "dust3r_224_linear": dict(family="dust3r", head_type="linear", output_mode="pts3d", img_size=[224, 224],
                              **_CROCO_LARGE),
    "dust3r_512_linear": dict(family="dust3r", head_type="linear", output_mode="pts3d", img_size=[512, 512],
                              **_CROCO_LARGE),
    "dust3r_512_dpt": dict(family="dust3r", head_type="dpt", output_mode="pts3d", img_size=[512, 512],
                           **_CROCO_LARGE),
    "mast3r_512_catmlpdpt_metric": dict(family="mast3r", head_type="catmlp+dpt", output_mode="pts3d+desc24",
                                        img_size=[512, 512], two_confs=True, desc_conf_mode=["exp", 0, inf],
                                        **_CROCO_LARGE),
    # tiny random configs for tests (a few hundred k parameters; decoder depth 10 for the DPT head)
    "dust3r_tiny": dict(family="dust3r", head_type="dpt", output_mode="pts3d", img_size=[64, 64],
                        enc_embed_dim=64, enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=10,
                        dec_num_heads=2, dpt_layer_dims=[16, 16, 32, 32], dpt_feature_dim=16, dpt_last_dim=16),
    "dust3r_tiny_linear": dict(family="dust3r", head_type="linear", output_mode="pts3d", img_size=[64, 64],
                               enc_embed_dim=64, enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=4,
                               dec_num_heads=2),
    "mast3r_tiny": dict(family="mast3r", head_type="catmlp+dpt", output_mode="pts3d+desc8", img_size=[64, 64],
                        enc_embed_dim=64, enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=10,
                        dec_num_heads=2, dpt_layer_dims=[16, 16, 32, 32], dpt_feature_dim=16, dpt_last_dim=16,
                        two_confs=True, desc_conf_mode=["exp", 0, inf], head_hidden_dim_factor=0.25),
    # a small DUSt3R for the CPU demo (~10.6M parameters, 2.8M of them in the encoder)
    "dust3r_small": dict(family="dust3r", head_type="dpt", output_mode="pts3d", img_size=[224, 224],
                         enc_embed_dim=192, enc_depth=6, enc_num_heads=3, dec_embed_dim=128, dec_depth=10,
                         dec_num_heads=4, dpt_layer_dims=[24, 48, 96, 192], dpt_feature_dim=64, dpt_last_dim=32),
    # VGGT-1B (facebook/VGGT-1B, track head not built) and its tiny test config (= the golden fixtures')
    "vggt_1b": dict(family="vggt", img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                    mlp_ratio=4.0, num_register_tokens=4, encoder_depth=24, encoder_num_heads=16,
                    dpt_features=256, dpt_out_channels=[256, 512, 1024, 1024], dpt_layers=[4, 11, 17, 23],
                    camera_trunk_depth=4, camera_num_heads=16),
    "vggt_tiny": dict(family="vggt", img_size=56, patch_size=14, embed_dim=24, depth=4, num_heads=2,
                      mlp_ratio=4.0, num_register_tokens=4, encoder_depth=2, encoder_num_heads=2,
                      dpt_features=8, dpt_out_channels=[4, 8, 16, 16], dpt_layers=[0, 1, 2, 3],
                      camera_trunk_depth=2, camera_num_heads=2),
}
# CUT3R: the released final (512 DPT) and intermediate (224 linear) models, and the tiny test configs
# (= the golden fixtures' architectures); the configs live in fin3r.models.cut3r.CUT3R_CONFIGS
MODEL_CONFIGS.update({name: dict(family="cut3r", **config) for name, config in CUT3R_CONFIGS.items()})


def family_class(family: str) -> type[Reconstructor]:
    """The model class of ``family`` (imported on first use)."""
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), cls)


def _resolve_config(name_or_config: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_config, dict):
        config = dict(name_or_config)
    elif name_or_config in MODEL_CONFIGS:
        config = dict(MODEL_CONFIGS[name_or_config])
    else:
        raise CheckpointError(f"unknown model name {name_or_config!r}; known: {', '.join(MODEL_CONFIGS)}")
    if "family" not in config:
        raise CheckpointError(f"model config has no 'family': {config}")
    return config


def build_model(name_or_config: str | dict[str, Any], device: torch.device | str | None = None) -> Reconstructor:
    """A randomly initialised model from a registry name or a config dict (``family`` + kwargs).

    ``device="meta"`` builds without allocating weights (for key checks of full-size models).
    """
    config = _resolve_config(name_or_config)
    cls = family_class(config.pop("family"))
    if device is None:
        return cls(**config)
    with torch.device(device):
        return cls(**config)


def _has_lora(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "LoRALinear" for m in model.modules())


def save_model(model: Reconstructor, path: str | os.PathLike) -> Path:
    """Write ``model`` in the fin3r format (one safetensors file, config in the metadata), atomically.

    LoRA adapters must be merged first (``fin3r.lora.merge_and_unload``), so the file is a plain model.
    """
    from safetensors.torch import save_file

    if _has_lora(model):
        raise CheckpointError("save_model: the model holds LoRA layers; merge them first "
                              "(fin3r.lora.merge_and_unload) or save the adapter alone (fin3r.lora.save_adapter)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "fin3r", "config": json.dumps(model.config_dict())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_fin3r_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a fin3r safetensors file; :class:`CheckpointError` if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != "fin3r" or "config" not in metadata:
                raise CheckpointError(f"{path}: not a fin3r model file (no fin3r config in the safetensors metadata)")
            config = json.loads(metadata["config"])
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # truncated / not safetensors
        raise CheckpointError(f"{path}: cannot read as safetensors ({e})") from e
    return config, state_dict


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
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


def load_model(name_or_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
               device: torch.device | str = "cpu") -> Reconstructor:
    """A model in eval mode from:

    - a registry name (random init, or the weights of ``checkpoint`` if given -- any format below);
    - a fin3r ``.safetensors`` file (:func:`save_model`);
    - an official ``.pth`` file (``{'model', 'args'}``) or a Hugging Face folder
      (``config.json`` + ``model.safetensors``), see :mod:`fin3r.models.checkpoints`.
    """
    from fin3r.models import checkpoints

    name = str(name_or_path)
    if checkpoint is not None and MODEL_CONFIGS.get(name, {}).get("family") in OWN_OFFICIAL_LOADERS:
        config = dict(MODEL_CONFIGS[name])
        return family_class(config.pop("family")).from_official(checkpoint, config=config).to(device).eval()
    if checkpoint is None and name not in MODEL_CONFIGS:
        from fin3r.models.vggt import Vggt, is_vggt_hf_folder

        if is_vggt_hf_folder(name):  # official VGGT folder: its config.json has no architecture family
            return Vggt.from_official(name).to(device).eval()
        from fin3r.models.cut3r import Cut3r
        from fin3r.models.cut3r_checkpoint import is_cut3r_pth

        if is_cut3r_pth(name):  # official CUT3R .pth: OmegaConf args, nested constructor string
            return Cut3r.from_official(name).to(device).eval()
    if name in MODEL_CONFIGS:
        if checkpoint is None:
            model = build_model(name)
        else:
            _, state_dict = checkpoints.read_any(checkpoint)
            model = _build_with_weights(name, checkpoints.to_fin3r_keys(state_dict), str(checkpoint))
    else:
        if checkpoint is not None:
            raise CheckpointError(f"load_model: `checkpoint` is only used with a registry name, got {name!r}")
        path = Path(name)
        if not path.exists():
            raise CheckpointError(f"{name!r} is neither a registry name ({', '.join(MODEL_CONFIGS)}) nor a file")
        config, state_dict = checkpoints.read_any(path)
        if config is None:
            raise CheckpointError(f"{path}: the file has no architecture; pass a registry name and "
                                  f"checkpoint=<file>")
        model = _build_with_weights(config, checkpoints.to_fin3r_keys(state_dict), str(path))
    return model.to(device).eval()


def _build_with_weights(name_or_config: str | dict[str, Any], state_dict: dict[str, torch.Tensor],
                        source: str) -> Reconstructor:
    """Build on the meta device and take the file's tensors (no random init, one copy of the
    weights in memory), cast to the model's dtypes; models with buffers are built on the CPU."""
    model = build_model(name_or_config, device="meta")
    if any(True for _ in model.buffers()):
        model = build_model(name_or_config)
        load_state_dict_strict(model, state_dict, source)
        return model
    own = model.state_dict()

    def owned(k: str, v: torch.Tensor) -> torch.Tensor:
        if k in own and v.dtype != own[k].dtype:
            return v.to(own[k].dtype)
        # tensors inside one file buffer (safetensors) can be misaligned for the SIMD kernels
        return v.clone() if v.data_ptr() % 64 else v

    load_state_dict_strict(model, {k: owned(k, v) for k, v in state_dict.items()}, source, assign=True)
    return model


__all__ = ["FAMILIES", "MODEL_CONFIGS", "build_model", "load_model", "save_model", "family_class",
           "read_fin3r_file", "load_state_dict_strict"]
