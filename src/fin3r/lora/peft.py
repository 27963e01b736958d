"""Adapters in PEFT's layout, where people share LoRA adapters (the released Fin3R adapters are
PEFT-based): a folder with ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
PEFT's, ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (and
``.lora_magnitude_vector`` for DoRA), for the model's own module names -- fin3r's models have the
official module names, so ``PeftModel.from_pretrained(official_model, folder)`` loads it.

What PEFT computes for each fin3r mode:

* plain (``None``): exactly fin3r's ``y = x W^T + b + (alpha / r) B A x`` (PEFT LoRA).
* ``weight_row`` / ``weight_fro``: written as **DoRA** (``use_dora: true``) with the magnitude vector
  set to the row norms of fin3r's effective weight ``W' = g * (W + dW)``. PEFT's DoRA computes
  ``m * (W + dW) / ||W + dW||_row``, which equals ``W'`` row by row for any per-row (or global, as
  in ``weight_fro``) rescaling ``g``: the same outputs. Training on in PEFT would make ``m`` a free
  parameter, whereas fin3r ties it to ``||W||`` -- a difference for fine-tuning, not for inference.
* ``output`` (the released Fin3R form): PEFT applies ``y0 + (alpha / r) B A x`` but **not** the
  per-token rescaling of each q/k/v slice to the norm of the base output, which no PEFT option
  expresses; the folder's ``README.md`` says so, and fin3r applies it when it loads the folder.

fin3r's own adapter header (mode, slices, base hashes) rides in the safetensors metadata
(``fin3r_adapter``), which PEFT ignores; :func:`read_peft_folder` restores the exact adapter from
it, and reads foreign plain-LoRA folders too (no base check: they record no base hashes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fin3r.errors import CheckpointError, InputError
from fin3r.io import atomic_write, write_text_atomic
from fin3r.lora.adapter import HEADER_KEY, adapter_header, load_adapter_tensors, parse_header
from fin3r.lora.inject import lora_modules

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
WEIGHT_MODES = ("weight_row", "weight_fro")

_README = """# Fin3R adapter in PEFT's layout

Written by `fin3r export --format peft`. Base model: `{base}`. LoRA on {n} encoder layers, rank
{rank}, alpha {alpha}, fin3r mode `{mode}`.

{what}

Load with fin3r (exact, any mode): `fin3r infer --model <base> --adapter <this folder> ...`.
Load with PEFT onto the base model (fin3r's or the official implementation: same module names):

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this folder>")
```
"""

_WHAT = {
    None: "Plain LoRA: PEFT computes exactly what fin3r computes.",
    "weight_row": "Re-normalised LoRA (`weight_row`) written as DoRA: the magnitude vector holds the row norms of "
                  "the base weight, so PEFT's DoRA forward gives fin3r's outputs. (Trained further in PEFT, the "
                  "magnitude would become free; fin3r keeps it tied to the base norm.)",
    "weight_fro": "Re-normalised LoRA (`weight_fro`) written as DoRA: the magnitude vector holds the row norms of "
                  "fin3r's effective weight, so PEFT's DoRA forward gives fin3r's outputs. (Trained further in PEFT, "
                  "the magnitude would become free; fin3r keeps the Frobenius norm tied to the base.)",
    "output": "**What PEFT alone does not apply:** this is the released Fin3R form (`output` mode). fin3r rescales "
              "each token's q, k and v (each third of the `qkv` output) to the L2 norm of the base layer's output "
              "for that token, `q <- q ||q0|| / (||q|| + 1e-6)`, without dropout. PEFT has no option for this "
              "re-normalisation: loaded with PEFT alone, the model computes the un-normalised `y0 + (alpha/r) B A x`, "
              "which is not the trained model. Use fin3r (or the released patched forward) to apply it.",
}


def _single_mode(header: dict, source: str):
    modes = {c["mode"] for c in header["modules"].values()}
    if len(modes) != 1:
        raise InputError(f"{source}: the adapter mixes LoRA modes {sorted(m or 'none' for m in modes)}; PEFT's "
                         "layout holds one")
    return next(iter(modes))


def peft_tensors_and_config(model: nn.Module, header: dict, base_model_id: str | None = None
                            ) -> tuple[dict[str, Tensor], dict]:
    """PEFT's state dict and ``adapter_config.json`` for the LoRA layers of ``model`` (an adapted
    model, e.g. after :func:`fin3r.lora.load_adapter`); ``header``: their
    :func:`fin3r.lora.adapter_header`."""
    mods = lora_modules(model)
    mode = _single_mode(header, "adapter")
    tensors: dict[str, Tensor] = {}
    ranks, alphas = {}, {}
    for name, m in mods.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous().clone()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous().clone()
        if mode in WEIGHT_MODES:
            with torch.no_grad():
                magnitude = m.effective_weight().detach().float().norm(dim=1)
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = magnitude.to(m.lora_A.dtype).cpu().contiguous()
        ranks[name], alphas[name] = int(m.rank), float(m.alpha)
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    dropouts = {float(c.get("dropout", 0.0)) for c in header["modules"].values()}
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_id, "revision": None,
        "r": r, "lora_alpha": alpha, "lora_dropout": max(dropouts) if mode != "output" else 0.0,
        "target_modules": sorted(mods), "bias": "none", "fan_in_fan_out": False, "use_dora": mode in WEIGHT_MODES,
        "use_rslora": False, "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "inference_mode": True,
        "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: v for n, v in alphas.items() if v != alpha},
    }
    return tensors, config


def write_peft_folder(model: nn.Module, out: str | Path, base_name: str = "", base_model_id: str | None = None,
                      readme: bool = True, **meta) -> dict:
    """Write the LoRA layers of ``model`` as ``out/adapter_config.json``,
    ``out/adapter_model.safetensors`` (with fin3r's header -- base name and hashes, ``meta`` -- in
    the metadata) and, with ``readme``, ``out/README.md`` saying what PEFT applies. Returns the
    header."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    header = adapter_header(model, base_name, **meta)
    tensors, config = peft_tensors_and_config(model, header, base_model_id)
    meta = {"format": "pt", HEADER_KEY: json.dumps(header)}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_text_atomic(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    if readme:
        mode = _single_mode(header, str(out))
        write_text_atomic(out / "README.md", _README.format(
            base=base_model_id or header.get("base_name") or "?", n=len(header["targets"]), rank=config["r"],
            alpha=config["lora_alpha"], mode=mode or "plain", what=_WHAT[mode]))
    return header


def is_peft_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_peft_folder(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(tensors in fin3r's keys, fin3r header)`` of a PEFT LoRA folder: the exact adapter when
    fin3r wrote it, else a plain LoRA read from PEFT's config (no base hashes)."""
    path = Path(path)
    if not is_peft_folder(path):
        raise CheckpointError(f"{path}: not a PEFT adapter folder (no {CONFIG_FILE})")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path / CONFIG_FILE}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}, "
                              "fin3r reads LORA adapters")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (a .bin adapter is not read: pickled)")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{weights}: not a safetensors file ({e})") from None
    tensors: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        for ab in ("A", "B"):
            suffix = f".lora_{ab}.weight"
            if name.endswith(suffix):
                tensors[name[: -len(suffix)] + f".lora_{ab}"] = value
                break
        else:
            if not name.endswith(".lora_magnitude_vector"):
                raise CheckpointError(f"{weights}: unexpected key '{key}' (not a LoRA A/B or DoRA magnitude)")
    if HEADER_KEY in meta:
        return tensors, parse_header(meta[HEADER_KEY], str(weights))
    for flag, why in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilised scaling"),
                      ("fan_in_fan_out", "fan_in_fan_out")):
        if config.get(flag):
            raise CheckpointError(f"{path}: {why} adapters not written by fin3r are not supported")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise CheckpointError(f"{path}: adapters that also train biases or whole modules are not supported")
    targets = sorted({k.rpartition(".")[0] for k in tensors})
    modules = {}
    for n in targets:
        if f"{n}.lora_A" not in tensors or f"{n}.lora_B" not in tensors:
            raise CheckpointError(f"{weights}: '{n}' lacks lora_A or lora_B")
        alpha = (config.get("alpha_pattern") or {}).get(n, config.get("lora_alpha", 8))
        modules[n] = {"rank": int(tensors[f"{n}.lora_A"].shape[0]), "alpha": float(alpha), "mode": None,
                      "dropout": float(config.get("lora_dropout", 0.0)), "slices": 1}
    header = {"targets": targets, "modules": modules, "base_hashes": None, "mode": None,
              "base_name": config.get("base_model_name_or_path") or "", "source": "peft"}
    return tensors, header


def load_peft_folder(model: nn.Module, path: str | Path, check_base: bool = True) -> dict:
    """Load a PEFT-layout adapter folder into ``model`` (fin3r's LoRA layers); returns its header."""
    tensors, header = read_peft_folder(path)
    load_adapter_tensors(model, tensors, header, str(path), check_base)
    return header


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "peft_tensors_and_config", "write_peft_folder", "is_peft_folder",
           "read_peft_folder", "load_peft_folder"]
