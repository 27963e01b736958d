"""Reconstruction models: one package per family, the registry that lists them, and the loader.

``fin3r.models.load(model, checkpoint=None, adapter=None, device="cpu")`` is the one way a model
is loaded (every command uses it).
"""

from fin3r.models.loading import (
    apply_adapter,
    load,
    load_model,
    read_checkpoint,
    save_hf_folder,
    save_model,
    save_official,
)
from fin3r.models.registry import FAMILIES, MODEL_CONFIGS, build_model, family_spec, find_family, replay_loss

__all__ = ["FAMILIES", "MODEL_CONFIGS", "apply_adapter", "build_model", "family_spec", "find_family", "load",
           "load_model", "read_checkpoint", "replay_loss", "save_hf_folder", "save_model", "save_official"]
