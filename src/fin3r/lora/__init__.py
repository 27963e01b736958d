"""LoRA for frozen ``nn.Linear`` layers, with Fin3R's re-normalisation, merging and adapter files.

- :mod:`fin3r.lora.modes`: the four modes as strategy objects (plain, ``output`` re-norm,
  ``weight_row`` / ``weight_fro`` re-norm): forward, effective weight, mergeable;
- :mod:`fin3r.lora.layer`: :class:`LoRALinear`, the layer;
- :mod:`fin3r.lora.inject`: wrapping a model's layers, merging them back;
- :mod:`fin3r.lora.adapter`: adapter files (safetensors + JSON header with base-weight hashes);
- :mod:`fin3r.lora.released`: the released Fin3R ``*_lora.pth`` adapters;
- :mod:`fin3r.lora.peft`: adapters in PEFT's folder layout (``adapter_config.json`` +
  ``adapter_model.safetensors``), written and read.
"""

from fin3r.lora.adapter import (
    FORMAT_VERSION,
    HEADER_KEY,
    adapter_header,
    adapter_state_dict,
    base_hash,
    load_adapter,
    load_adapter_tensors,
    parse_header,
    read_adapter,
    save_adapter,
)
from fin3r.lora.inject import inject_lora, lora_modules, lora_parameters, merge_and_unload, merge_lora, unmerge_lora
from fin3r.lora.layer import LoRALinear
from fin3r.lora.modes import MODES, OUTPUT_EPS, LoRAError, LoRAMode, get_mode
from fin3r.lora.released import RELEASED_CONFIG, apply_fin3r_lora, import_fin3r_lora, rename_prefixes

__all__ = [
    "FORMAT_VERSION",
    "HEADER_KEY",
    "MODES",
    "OUTPUT_EPS",
    "RELEASED_CONFIG",
    "LoRAError",
    "LoRALinear",
    "LoRAMode",
    "adapter_header",
    "adapter_state_dict",
    "apply_fin3r_lora",
    "base_hash",
    "get_mode",
    "import_fin3r_lora",
    "inject_lora",
    "load_adapter",
    "load_adapter_tensors",
    "lora_modules",
    "lora_parameters",
    "merge_and_unload",
    "merge_lora",
    "parse_header",
    "read_adapter",
    "rename_prefixes",
    "save_adapter",
    "unmerge_lora",
]
