"""Export a trained adapter: merge it into the base model and write the official checkpoint format.

- ``weight_row`` / ``weight_fro`` / plain (``None``) adapters are **merged** into the base weights
  (``W <- W'``): the result is a plain model with zero inference overhead, written in the format
  the original repository loads:
    * DUSt3R / MASt3R / CUT3R: ``.pth`` = ``{'model': state_dict, 'args': Namespace(model=
      "<OfficialClass>(...)")}`` (``fin3r.models.checkpoints.save_official_pth``), the layout of
      the released checkpoints and of ``dust3r.model.load_model``;
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

import torch
from torch import nn

from fin3r.errors import Fin3rError

log = logging.getLogger(__name__)

MERGEABLE_MODES = (None, "weight_row", "weight_fro")


def load_base_for_adapter(adapter: str | Path, model: str | None = None, checkpoint: str | None = None) -> nn.Module:
    """The base model an adapter was trained on: ``model`` (registry name or file; default the
    adapter header's ``base_name``) with ``checkpoint`` for registry names."""
    from fin3r.lora import read_adapter
    from fin3r.models.registry import load_model

    _, header = read_adapter(adapter)
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
        adapter: a fin3r adapter file (``fin3r train`` output).
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
    from fin3r.lora import load_adapter, merge_and_unload, read_adapter, save_adapter

    adapter, out = Path(adapter), Path(out)
    _, header = read_adapter(adapter)
    base = model if isinstance(model, nn.Module) else load_base_for_adapter(adapter, model, checkpoint)
    load_adapter(base, adapter, check_base=check_base)
    family = getattr(base, "family", "")
    modes = {m["mode"] for m in header["modules"].values()}
    if not modes <= set(MERGEABLE_MODES):
        # the run-time re-normalisation cannot be folded into the weights
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        save_adapter(base, out, base_name=header.get("base_name", ""),
                     **{k: v for k, v in header.items() if k in ("step", "epochs", "train_config")})
        log.info("output-mode adapter: not mergeable, wrote the adapter with its base hash to %s", out)
        return {"kind": "adapter", "path": str(out), "format": "fin3r-adapter", "family": family,
                "mode": sorted(m or "none" for m in modes), "keys": len(header["targets"]) * 2}

    merged = merge_and_unload(base)
    merged.eval()
    if fmt == "auto":
        fmt = "safetensors" if out.suffix == ".safetensors" else "pth"
    from fin3r.models import checkpoints

    sd = {k: v.detach().cpu().contiguous() for k, v in merged.official_state_dict().items()}
    if fmt == "hf":
        checkpoints.save_hf_folder(merged, out)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        # alias keys share storage with their originals; safetensors refuses shared tensors
        save_file({k: v.clone() for k, v in sd.items()}, str(_tmp(out)), metadata={"format": "pt"})
        _tmp(out).replace(out)
    elif family == "vggt":
        _atomic_torch_save(sd, out)
    else:
        checkpoints.save_official_pth(merged, out)
    return {"kind": "merged", "path": str(out), "format": fmt, "family": family,
            "mode": sorted(m or "none" for m in modes), "keys": len(sd)}


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from fin3r.train.checkpointing import atomic_torch_save

    atomic_torch_save(obj, path)


__all__ = ["MERGEABLE_MODES", "export_adapter", "load_base_for_adapter"]
