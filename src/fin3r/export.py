"""Export a trained adapter: merge it into the base model and write the official checkpoint format.

- ``weight_row`` / ``weight_fro`` / plain (``None``) adapters are **merged** into the base weights
  (``W <- W'``): the result is a plain model with zero inference overhead, written in the format
  the original repository loads (the family's ``ModelFamily.write_official``):
    * DUSt3R / MASt3R / CUT3R: ``.pth`` = ``{'model': state_dict, 'args': Namespace(model=
      "<OfficialClass>(...)")}``, the layout of the released checkpoints and of
      ``dust3r.model.load_model``;
    * VGGT: a plain ``state_dict`` (``torch.save``), what ``VGGT().load_state_dict`` takes;
    * ``fmt="hf"``: the Hugging Face folder (``config.json`` + ``model.safetensors``);
    * ``fmt="safetensors"``: the official state_dict as one safetensors file (no code, no pickle).
- ``output`` adapters (the released Fin3R layout) re-normalise each token at run time and cannot
  be merged: the adapter itself is written (safetensors, fin3r header with the base model's name
  and hash), so it can only be applied to the exact base it was trained on.

Files load with plain ``torch`` (no fin3r installed): they contain only tensors, dicts and an
``argparse.Namespace``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from torch import nn

from fin3r.errors import Fin3rError
from fin3r.io import atomic_write
from fin3r.lora import lora_modules, merge_and_unload, read_adapter, save_adapter
from fin3r.models import apply_adapter, load_model, save_hf_folder, save_official

log = logging.getLogger(__name__)

MERGEABLE_MODES = (None, "weight_row", "weight_fro")


def _is_released(adapter: Path) -> bool:
    """A released Fin3R ``*_lora.pth`` (PEFT keys, no fin3r header) rather than a fin3r adapter."""
    return adapter.suffix in (".pth", ".pt", ".bin")


def load_base_for_adapter(adapter: str | Path, model: str | None = None, checkpoint: str | None = None) -> nn.Module:
    """The base model an adapter was trained on: ``model`` (registry name or file; default the
    adapter header's ``base_name``; released adapters carry none) with ``checkpoint`` for registry
    names."""
    adapter = Path(adapter)
    header = {} if _is_released(adapter) else read_adapter(adapter)[1]
    name = model or header.get("base_name")
    if not name:
        raise Fin3rError(f"{adapter}: the adapter does not name its base model; pass --model")
    return load_model(name, checkpoint)


def export_adapter(
    adapter: str | Path,
    out: str | Path,
    model: nn.Module | str | None = None,
    checkpoint: str | None = None,
    fmt: Literal["auto", "pth", "hf", "safetensors"] = "auto",
    check_base: bool = True,
) -> dict[str, Any]:
    """Merge ``adapter`` into its base and write ``out``; returns a summary dict.

    Args:
        adapter: a fin3r adapter file (``fin3r train`` output) or a released Fin3R ``*_lora.pth``.
        out: the file (``.pth`` / ``.safetensors``) or, for ``fmt="hf"``, the folder to write.
        model: the base model (an ``nn.Module``, a registry name or a model file; default: the
            adapter's ``base_name``).
        checkpoint: official weights for a registry-name ``model``.
        fmt: ``"auto"`` (``.safetensors`` suffix -> safetensors, else the family's official
            ``.pth``), ``"pth"``, ``"hf"`` or ``"safetensors"``.
        check_base: refuse an adapter whose base hash differs from the given base weights.

    Returns:
        ``{"kind": "merged" | "adapter", "path", "format", "family", "mode", "keys"}``.
    """
    adapter, out = Path(adapter), Path(out)
    header = {} if _is_released(adapter) else read_adapter(adapter)[1]
    base = model if isinstance(model, nn.Module) else load_base_for_adapter(adapter, model, checkpoint)
    info = apply_adapter(base, adapter, check_base=check_base)
    family = getattr(base, "family", "")
    modes = {m.mode for m in lora_modules(base).values()}
    if not modes <= set(MERGEABLE_MODES):
        # the run-time re-normalisation cannot be folded into the weights
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        base_name = header.get("base_name") or (model if isinstance(model, str) else "")
        save_adapter(base, out, base_name=base_name,
                     **{k: v for k, v in header.items() if k in ("step", "epochs", "train_config")})
        log.info("output-mode adapter: not mergeable, wrote the adapter with its base hash to %s", out)
        return {"kind": "adapter", "path": str(out), "format": "fin3r-adapter", "family": family,
                "mode": sorted(m or "none" for m in modes), "keys": len(info["targets"]) * 2}

    merged = merge_and_unload(base)
    merged.eval()
    if fmt == "auto":
        fmt = "safetensors" if out.suffix == ".safetensors" else "pth"
    sd = {k: v.detach().cpu().contiguous() for k, v in merged.official_state_dict().items()}
    if fmt == "hf":
        save_hf_folder(merged, out)
    elif fmt == "safetensors":
        # alias keys share storage with their originals; safetensors refuses shared tensors
        tensors = {k: v.clone() for k, v in sd.items()}
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    else:
        save_official(merged, out)
    return {"kind": "merged", "path": str(out), "format": fmt, "family": family,
            "mode": sorted(m or "none" for m in modes), "keys": len(sd)}


__all__ = ["MERGEABLE_MODES", "export_adapter", "load_base_for_adapter"]
