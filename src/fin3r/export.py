"""Export a trained adapter: merge it into the base model and write the official checkpoint format.

- ``weight_row`` / ``weight_fro`` / plain (``None``) adapters are **merged** into the base weights
  (``W <- W'``): the result is a plain model with zero inference overhead, written in the format
  the original repository loads (the family's ``ModelFamily.write_official``):
    * DUSt3R / MASt3R / CUT3R: ``.pth`` = ``{'model': state_dict, 'args': Namespace(model=
      "<OfficialClass>(...)")}``, the layout of the released checkpoints and of
      ``dust3r.model.load_model``;
    * VGGT: a plain ``state_dict`` (``torch.save``), what ``VGGT().load_state_dict`` takes;
    * ``fmt="hf"``: the Hugging Face folder (``config.json`` + ``model.safetensors``) with a model card;
    * ``fmt="safetensors"``: the official state_dict as one safetensors file (no code, no pickle).
- ``output`` adapters (the released Fin3R layout) re-normalise each token at run time and cannot
  be merged: asking for a merged file is an error (:class:`~fin3r.errors.Fin3rError`, a non-zero
  exit), never a silent substitute. ``fmt="adapter"`` writes the adapter itself (safetensors,
  fin3r header with the base model's name and hash) for use with ``--adapter`` on that exact base.
- ``fmt="peft"``: any adapter, unmerged, in PEFT's layout (:mod:`fin3r.lora.peft`: what PEFT
  applies for each mode is said in the folder's ``README.md``).
- ``fmt="hf"``: a folder ready for the Hugging Face Hub: the merged weights (``config.json`` +
  ``model.safetensors``) or, for ``output`` adapters, the PEFT-layout adapter, and a model card
  ``README.md`` (:mod:`fin3r.outputs.model_card`: licence inherited from the base, base model,
  tags, training recipe, the before/after table of given evaluation results).

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
from fin3r.io import atomic_write, check_finite
from fin3r.lora import lora_modules, merge_and_unload, read_adapter, save_adapter
from fin3r.models import MODEL_CONFIGS, apply_adapter, load_model, save_hf_folder, save_official

log = logging.getLogger(__name__)

MERGEABLE_MODES = (None, "weight_row", "weight_fro")


def _is_released(adapter: Path) -> bool:
    """A released Fin3R ``*_lora.pth`` (PEFT keys, no fin3r header) rather than a fin3r adapter."""
    return adapter.suffix in (".pth", ".pt", ".bin")


def _read_header(adapter: Path) -> dict:
    """The fin3r header of an adapter in any format (``{}`` for a released ``*_lora.pth``)."""
    if _is_released(adapter):
        return {}
    if adapter.is_dir():
        from fin3r.lora.peft import read_peft_folder

        return read_peft_folder(adapter)[1]
    return read_adapter(adapter)[1]


def load_base_for_adapter(adapter: str | Path, model: str | None = None, checkpoint: str | None = None) -> nn.Module:
    """The base model an adapter was trained on: ``model`` (registry name or file; default the
    adapter header's ``base_name``; released adapters carry none) with ``checkpoint`` for registry
    names."""
    adapter = Path(adapter)
    header = _read_header(adapter)
    name = model or header.get("base_name")
    if checkpoint is not None and (name is None or name not in MODEL_CONFIGS):
        return load_model(checkpoint)  # the given weights file is the base (its hash is checked)
    if not name:
        raise Fin3rError(f"{adapter}: the adapter does not name its base model; pass --model or --checkpoint")
    return load_model(name, checkpoint)


def export_adapter(
    adapter: str | Path,
    out: str | Path,
    model: nn.Module | str | None = None,
    checkpoint: str | None = None,
    fmt: Literal["auto", "pth", "hf", "safetensors", "peft", "adapter"] = "auto",
    check_base: bool = True,
    base_model_id: str | None = None,
    license: str | None = None,
    eval_results: tuple[str | Path, str | Path] | None = None,
) -> dict[str, Any]:
    """Merge ``adapter`` into its base and write ``out``; returns a summary dict.

    Args:
        adapter: a fin3r adapter file (``fin3r train`` output) or a released Fin3R ``*_lora.pth``.
        out: the file (``.pth`` / ``.safetensors``) or, for ``fmt="hf"``, the folder to write.
        model: the base model (an ``nn.Module``, a registry name or a model file; default: the
            adapter's ``base_name``).
        checkpoint: official weights for a registry-name ``model``.
        fmt: ``"auto"`` (``.safetensors`` suffix -> safetensors, else the family's official
            ``.pth``), ``"pth"``, ``"hf"``, ``"safetensors"`` (all merged) or ``"adapter"`` (the
            adapter re-written with its base hash, any mode).
        check_base: refuse an adapter whose base hash differs from the given base weights.
        base_model_id, license: the base's Hub repository and licence for the model card
            (``fmt="hf"``; default: the known release of the adapter's ``base_name``).
        eval_results: ``(base.json, tuned.json)`` results of ``fin3r eval`` for the card's
            before/after table.

    Returns:
        ``{"kind": "merged" | "adapter", "path", "format", "family", "mode", "keys"}``.

    Raises:
        Fin3rError: a merged format asked for an adapter that cannot be merged (``output`` mode).
    """
    adapter, out = Path(adapter), Path(out)
    header = _read_header(adapter)
    base = model if isinstance(model, nn.Module) else load_base_for_adapter(adapter, model, checkpoint)
    info = apply_adapter(base, adapter, check_base=check_base)
    family = getattr(base, "family", "")
    modes = {m.mode for m in lora_modules(base).values()}
    mode_names = sorted(m or "none" for m in modes)
    card = None
    if fmt == "hf":  # the card describes the adapter as loaded (any input format), with its training record
        from fin3r.lora import adapter_header

        described = adapter_header(base, header.get("base_name", ""),
                                   **{k: v for k, v in header.items() if k in ("step", "epochs", "train_config")})
        card = _card_maker(described, family, base_model_id, license, eval_results)
    if fmt == "peft" or (fmt == "hf" and not modes <= set(MERGEABLE_MODES)):
        from fin3r.outputs.model_card import base_identity
        from fin3r.lora.peft import write_peft_folder

        hub_id, _ = base_identity(header.get("base_name", ""), family, base_model_id, license)
        write_peft_folder(base, out, base_name=header.get("base_name", ""), base_model_id=hub_id, readme=card is None,
                          **{k: v for k, v in header.items() if k in ("step", "epochs", "train_config")})
        if card is not None:  # the card says what PEFT applies, too
            _write_card(out, card("adapter"))
        return {"kind": "adapter", "path": str(out), "format": fmt, "family": family, "mode": mode_names,
                "keys": len(info["targets"]) * 2}
    if fmt != "adapter" and not modes <= set(MERGEABLE_MODES):
        # the run-time re-normalisation cannot be folded into the weights: say so, write nothing
        raise Fin3rError(
            f"{adapter}: a {'/'.join(sorted(str(m) for m in modes))}-mode adapter re-normalises q, k, v per token at "
            f"run time and cannot be merged into a checkpoint; use it with --adapter, re-write it with "
            f"--format adapter, or train with lora.mode=weight_row (the recipes' default) to get a mergeable one")
    if fmt == "adapter":
        if out.suffix != ".safetensors":
            raise Fin3rError(f"--format adapter writes a .safetensors file, got {out}")
        base_name = header.get("base_name") or (model if isinstance(model, str) else "")
        save_adapter(base, out, base_name=base_name,
                     **{k: v for k, v in header.items() if k in ("step", "epochs", "train_config")})
        log.info("wrote the adapter with its base hash to %s", out)
        return {"kind": "adapter", "path": str(out), "format": "fin3r-adapter", "family": family,
                "mode": sorted(m or "none" for m in modes), "keys": len(info["targets"]) * 2}

    merged = merge_and_unload(base)
    merged.eval()
    if fmt == "auto":
        fmt = "safetensors" if out.suffix == ".safetensors" else "pth"
    sd = {k: v.detach().cpu().contiguous() for k, v in merged.official_state_dict().items()}
    check_finite(sd, str(out), what="the merged weights to export")
    if fmt == "hf":
        save_hf_folder(merged, out)
        _write_card(out, card("merged"))
    elif fmt == "safetensors":
        # alias keys share storage with their originals; safetensors refuses shared tensors
        tensors = {k: v.clone() for k, v in sd.items()}
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    else:
        base_file = _base_file(adapter, header, model, checkpoint)
        changed = [f"{t}.weight" for t in info["targets"]]
        if base_file is None or not write_base_plus_delta(base_file, {k: sd[k] for k in changed if k in sd}, out):
            save_official(merged, out)
    return {"kind": "merged", "path": str(out), "format": fmt, "family": family,
            "mode": sorted(m or "none" for m in modes), "keys": len(sd)}


def _card_maker(header: dict, family: str, base_model_id: str | None, license: str | None,
                eval_results: tuple | None):
    """``kind -> README.md text`` (validates the evaluation files first, before anything is written)."""
    from fin3r.outputs.model_card import model_card

    table = None
    if eval_results is not None:
        from fin3r.eval.report import compare_results, load_result

        for p in eval_results:
            if not Path(p).is_file():
                raise Fin3rError(f"--eval: missing result file {p}")
        try:
            table = compare_results(load_result(eval_results[0]), load_result(eval_results[1]))
        except (ValueError, KeyError, TypeError) as e:
            raise Fin3rError(f"--eval: not fin3r eval results ({e})") from None
    return lambda kind: model_card(family=family, base_name=header.get("base_name", ""), header=header, kind=kind,
                                   base_model_id=base_model_id, license=license, eval_table=table)


def _write_card(folder: Path, text: str) -> None:
    from fin3r.io import write_text_atomic

    write_text_atomic(Path(folder) / "README.md", text)


def _base_file(adapter: Path, header: dict, model: nn.Module | str | None, checkpoint: str | None) -> Path | None:
    """The file the base weights were read from: ``checkpoint``, else ``model`` or the adapter's
    ``base_name`` when they are a file; ``None`` for a model object or a registry name."""
    if isinstance(model, nn.Module):
        return None
    for candidate in (checkpoint, model, header.get("base_name")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def write_base_plus_delta(base_file: Path, merged: dict, out: Path) -> bool:
    """Write ``base_file`` (an official ``.pth``: ``{'model': state_dict, 'args': ...}`` or a plain
    state_dict) with only the tensors in ``merged`` (official keys -> merged weights) replaced, in
    the file's dtypes: every other tensor and field of the base file (``mask_token``, ``args`` and
    its constructor string, other entries) is kept as it was. Returns ``False`` (nothing written)
    when the base is not such a file or lacks one of the keys."""
    import argparse

    import torch

    from fin3r.io import safe_torch_load

    if base_file.suffix not in (".pth", ".pt", ".bin") or not merged:
        return False
    obj = safe_torch_load(base_file, [argparse.Namespace])
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or any(k not in state or not isinstance(state[k], torch.Tensor) for k in merged):
        log.info("%s: not an official state_dict holding every adapted weight; writing the model's own state_dict",
                 base_file)
        return False
    for k, v in merged.items():
        if tuple(v.shape) != tuple(state[k].shape):
            return False
        state[k] = v.detach().to(dtype=state[k].dtype).contiguous().clone()
    atomic_write(out, lambda tmp: torch.save(obj, tmp))
    log.info("wrote %s: %s with %d merged weights", out, base_file, len(merged))
    return True


__all__ = ["MERGEABLE_MODES", "export_adapter", "load_base_for_adapter", "write_base_plus_delta"]
