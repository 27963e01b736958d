"""Released Fin3R adapters: the ``*_lora.pth`` files of the paper's release (PEFT key names,
``output`` mode), read with ``torch.load(weights_only=True)`` and applied exactly as released."""

from __future__ import annotations

import os
import re

import torch
from torch import Tensor, nn

from fin3r.errors import CheckpointError
from fin3r.io import check_finite, safe_torch_load
from fin3r.lora.adapter import check_and_load
from fin3r.lora.layer import LoRALinear
from fin3r.lora.modes import OUTPUT

#: the configuration of the released Fin3R ``*_lora.pth`` adapters (their LoraConfig had
#: ``lora_dropout=0.1``, which the released re-normalised forward never applies)
RELEASED_CONFIG = {"rank": 8, "alpha": 8.0, "mode": "output", "dropout": 0.0}


_PEFT_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def _strip_peft(key: str) -> str:
    key = key.replace("base_model.model.", "")
    return key.replace(".base_layer.", ".")


def _read_released(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(adapter tensors in our keys, base copies in the base model's keys)``."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    sd = safe_torch_load(path, what="a released Fin3R adapter")
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a flat state_dict of tensors")
    adapter, base, adapter_names = {}, {}, set()
    for key, value in sd.items():
        m = _PEFT_LORA.match(key)
        if m:
            adapter_names.add(m["adapter"])
            adapter[f"{_strip_peft(m['module'])}.lora_{m['ab']}"] = value
        elif "lora_" in key:
            raise CheckpointError(f"{path}: unrecognised LoRA key '{key}'")
        else:
            base[_strip_peft(key)] = value
    if not adapter:
        raise CheckpointError(f"{path}: no PEFT LoRA keys ('*.lora_A.<adapter>.weight') found")
    check_finite(adapter, path, what="adapter tensors")
    if len(adapter_names) > 1:
        raise CheckpointError(f"{path}: several PEFT adapters {sorted(adapter_names)}; expected one")
    for k in sorted(adapter):
        other = k[:-1] + ("B" if k.endswith("A") else "A")
        if other not in adapter:
            raise CheckpointError(f"{path}: '{k}' has no matching '{other}'")
    return adapter, base


def rename_prefixes(tensors: dict[str, Tensor], prefix_map: dict[str, str] | None) -> dict[str, Tensor]:
    """``tensors`` with each key's leading ``src`` replaced by ``prefix_map[src]`` (keys under no
    listed prefix unchanged): the encoder of one model family named as another's."""
    if not prefix_map:
        return tensors
    out = {}
    for key, value in tensors.items():
        src = next((p for p in prefix_map if key.startswith(p)), None)
        out[prefix_map[src] + key[len(src):] if src is not None else key] = value
    return out


def import_fin3r_lora(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Tensor]:
    """Read a released Fin3R ``*_lora.pth`` (PEFT key names) into our adapter keys.

    ``<blk>.attn.base_model.model.qkv.lora_A.default.weight`` becomes ``<blk>.attn.qkv.lora_A``
    (likewise ``lora_B``). The base-weight copies the file also holds (``...qkv.base_layer.*``,
    ``...attn.base_model.model.proj.*``) are not returned; if ``model`` is given they are checked
    against the model's weights and a mismatch raises :class:`CheckpointError` naming the key.
    Loaded with ``torch.load(weights_only=True)``.
    """
    adapter, base = _read_released(path)
    if model is not None:
        _check_base_copies(model, base, str(path))
    return adapter


def _check_base_copies(model: nn.Module, base: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    for k, v in base.items():
        if k not in own:
            raise CheckpointError(f"{source}: base weight '{k}' is not in the model's state_dict")
        mine = own[k]
        if isinstance(model.get_submodule(k.rpartition(".")[0]), LoRALinear) and k.endswith(".weight"):
            mine = model.get_submodule(k.rpartition(".")[0]).base_weight()
        if tuple(mine.shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: base weight '{k}' has shape {tuple(v.shape)}, the model's is "
                f"{tuple(mine.shape)}"
            )
        if not torch.equal(mine.detach().to("cpu", torch.float32), v.to(torch.float32)):
            diff = (mine.detach().to("cpu", torch.float32) - v.float()).abs().max().item()
            raise CheckpointError(
                f"{source}: base weight '{k}' differs from the model's (max |diff| {diff:.3g}): "
                "the adapter was trained on a different base model"
            )


def apply_fin3r_lora(
    model: nn.Module, path: str | os.PathLike, alpha: float = RELEASED_CONFIG["alpha"],
    check_base: bool = True, prefix_map: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """Inject and load a released Fin3R ``*_lora.pth`` into ``model`` exactly as released:
    ``"output"`` mode, rank from the file, ``alpha`` 8, no dropout, q/k/v slices for ``qkv``
    layers. Checks the file's base-weight copies against the model unless ``check_base=False``.
    ``prefix_map`` renames the file's keys first (:func:`rename_prefixes`; e.g. VGGT's
    ``aggregator.patch_embed.`` -> π3's ``encoder.``). Returns the wrapped module names.
    """
    adapter, base = _read_released(path)
    adapter, base = rename_prefixes(adapter, prefix_map), rename_prefixes(base, prefix_map)
    if check_base:
        _check_base_copies(model, base, str(path))
    in_file = {k.rpartition(".")[0] for k in adapter}
    targets = [n for n, _ in model.named_modules() if n in in_file]
    targets += sorted(in_file - set(targets))  # not in the model: check_and_load names them
    configs = {}
    for n in targets:
        r = adapter[f"{n}.lora_A"].shape[0]
        configs[n] = {"rank": int(r), "alpha": float(alpha), "mode": "output", "dropout": 0.0,
                      "slices": OUTPUT.default_slices(n)}  # fmt: skip
    check_and_load(model, adapter, configs, str(path))
    return targets


__all__ = ["RELEASED_CONFIG", "apply_fin3r_lora", "import_fin3r_lora", "rename_prefixes"]
