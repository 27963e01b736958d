"""Hugging Face Hub model cards for exported Fin3R models and adapters: ``README.md`` with the Hub's
YAML metadata block (licence inherited from the base model, ``base_model``, tags), what the model
is, how to load it, the training recipe and, when evaluation results are given, the measured
before/after table. Nothing here uploads: the folder is what ``huggingface-cli upload`` takes.
"""

from __future__ import annotations

import json

#: registry name -> (the base model's Hub repository, its weights' licence as the Hub spells it)
HUB_BASES = {
    "dust3r_224_linear": ("naver/DUSt3R_ViTLarge_BaseDecoder_224_linear", "cc-by-nc-sa-4.0"),
    "dust3r_512_linear": ("naver/DUSt3R_ViTLarge_BaseDecoder_512_linear", "cc-by-nc-sa-4.0"),
    "dust3r_512_dpt": ("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", "cc-by-nc-sa-4.0"),
    "mast3r_512_catmlpdpt_metric": ("naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", "cc-by-nc-sa-4.0"),
    "vggt_1b": ("facebook/VGGT-1B", "cc-by-nc-4.0"),
}
#: the licence of each family's released weights, for bases not in :data:`HUB_BASES`
FAMILY_LICENSES = {"dust3r": "cc-by-nc-sa-4.0", "mast3r": "cc-by-nc-sa-4.0", "vggt": "cc-by-nc-4.0"}
FAMILY_NAMES = {"dust3r": "DUSt3R", "mast3r": "MASt3R", "vggt": "VGGT", "cut3r": "CUT3R"}


def base_identity(base_name: str, family: str, base_model_id: str | None = None, license: str | None = None
                  ) -> tuple[str | None, str]:
    """``(Hub id of the base or None, licence)``: the given values, else the known release of
    ``base_name``, else the family's licence, else ``"other"`` (say which in the card)."""
    known_id, known_license = HUB_BASES.get(base_name, (None, None))
    return base_model_id or known_id, license or known_license or FAMILY_LICENSES.get(family, "other")


def _yaml_value(value) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def model_card(*, family: str, base_name: str, header: dict, kind: str, base_model_id: str | None = None,
               license: str | None = None, eval_table: str | None = None) -> str:
    """The ``README.md`` of a Hub folder. ``kind``: ``"merged"`` (full weights, the adapter merged
    in) or ``"adapter"`` (a PEFT-layout adapter folder); ``header``: the fin3r adapter header."""
    base_id, lic = base_identity(base_name, family, base_model_id, license)
    fam = FAMILY_NAMES.get(family, family or "model")
    mode = header.get("mode")
    tags = ["fin3r", "3d-reconstruction", "depth-estimation", "point-cloud", "lora", family or "reconstruction"]
    meta = [f"license: {lic}"]
    if lic == "other":
        meta += ["license_name: inherited-from-base", f"license_link: {_yaml_value('see the ' + fam + ' release')}"]
    if base_id:
        meta += [f"base_model: {base_id}", f"base_model_relation: {'finetune' if kind == 'merged' else 'adapter'}"]
    if kind == "adapter":
        meta.append("library_name: peft")
    meta += ["pipeline_tag: image-to-3d", "tags:"] + [f"- {t}" for t in tags]
    lines = ["---", *meta, "---", "", f"# {fam} + Fin3R ({'merged' if kind == 'merged' else 'LoRA adapter'})", ""]
    lines += [f"{fam} (`{base_name or '?'}`{f', [{base_id}](https://huggingface.co/{base_id})' if base_id else ''}) "
              "fine-tuned with **Fin3R** (NeurIPS 2025, arXiv 2511.22429): LoRA on the image encoder only, "
              "distilled from a monocular teacher with multi-view replay; decoder and heads unchanged.", ""]
    if kind == "merged":
        lines += [f"The `{mode or 'plain'}` adapter is merged into the weights: same architecture, same speed, "
                  "same loading code as the base (`config.json` + `model.safetensors`, the official keys).", ""]
    else:
        lines += [f"A LoRA adapter in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`), fin3r "
                  f"mode `{mode or 'plain'}`; apply it to the base model. See the notes below for what PEFT alone "
                  "applies.", ""]
    lines += ["## Licence", "",
              f"`{lic}`, inherited from the base model's weights: this model is a derivative of them and is "
              "shared under the same terms.", "", "## Use", "", "```bash",
              "pip install fin3r"]
    if kind == "merged":
        lines += [f"fin3r infer photos/ --model <this folder> --out preds/          # depth, point clouds",
                  "fin3r infer scene/ --model <this folder> --views --out recon/    # + GLB, COLMAP (models with cameras)"]
    else:
        lines += [f"fin3r infer photos/ --model {base_name or '<base>'} --adapter <this folder> --out preds/"]
    lines += ["```", ""]
    lines += ["## Training recipe", "", f"- LoRA: mode `{mode or 'plain'}`, rank {header.get('rank')}, alpha "
              f"{header.get('alpha')}, {len(header.get('targets', []))} encoder layers",
              f"- steps: {header.get('step', '?')}, epochs: {header.get('epochs', '?')}, fin3r "
              f"{header.get('fin3r_version', '?')}"]
    cfg = header.get("train_config")
    if isinstance(cfg, dict):
        for key, label in (("distill", "distillation"), ("replay", "replay"), ("optim", "optimiser"), ("data", "data")):
            if isinstance(cfg.get(key), dict):
                parts = ", ".join(f"{k}={v}" for k, v in cfg[key].items() if not isinstance(v, (dict, list)))
                lines.append(f"- {label}: {parts}")
        lines += ["", "<details><summary>full training configuration</summary>", "", "```json",
                  json.dumps(cfg, indent=1, sort_keys=True, default=str), "```", "", "</details>"]
    lines.append("")
    if eval_table:
        lines += ["## Measured before / after", "", "Base model vs this model on the same benchmark "
                  "(`fin3r eval --compare`):", "", eval_table.rstrip(), ""]
    lines += ["## Citation", "", "Weining Ren, Hongjun Wang, Xiao Tan, Kai Han. Fin3R. NeurIPS 2025, "
              "arXiv:2511.22429.", ""]
    return "\n".join(lines)


__all__ = ["HUB_BASES", "FAMILY_LICENSES", "base_identity", "model_card"]
