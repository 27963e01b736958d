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
  be merged: the adapter itself is written (safetensors, fin3r header with the base model's name
  and hash), so it can only be applied to the exact base it was trained on.
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
from fin3r.io import atomic_write
from fin3r.lora import lora_modules, merge_and_unload, read_adapter, save_adapter
from fin3r.models import apply_adapter, load_model, save_hf_folder, save_official

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
    if not name:
        raise Fin3rError(f"{adapter}: the adapter does not name its base model; pass --model")
    return load_model(name, checkpoint)


def export_adapter(
    adapter: str | Path,
    out: str | Path,
    model: nn.Module | str | None = None,
    checkpoint: str | None = None,
    fmt: Literal["auto", "pth", "hf", "safetensors", "peft"] = "auto",
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
            ``.pth``), ``"pth"``, ``"hf"`` or ``"safetensors"``.
        check_base: refuse an adapter whose base hash differs from the given base weights.
        base_model_id, license: the base's Hub repository and licence for the model card
            (``fmt="hf"``; default: the known release of the adapter's ``base_name``).
        eval_results: ``(base.json, tuned.json)`` results of ``fin3r eval`` for the card's
            before/after table.

    Returns:
        ``{"kind": "merged" | "adapter", "path", "format", "family", "mode", "keys"}``.
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
        _write_card(out, card("merged"))
    elif fmt == "safetensors":
        # alias keys share storage with their originals; safetensors refuses shared tensors
        tensors = {k: v.clone() for k, v in sd.items()}
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    else:
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


__all__ = ["MERGEABLE_MODES", "export_adapter", "load_base_for_adapter"]
