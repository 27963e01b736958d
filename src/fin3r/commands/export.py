"""`fin3r export`: merge an adapter into its base model and write the official checkpoint format."""

from __future__ import annotations

import argparse

HELP = "merge an adapter into its base model (official format), or write it for PEFT / the Hugging Face Hub"
DESCRIPTION = """Merges weight-mode adapters (weight_row, weight_fro, plain) into the base weights (zero
inference overhead) and writes a checkpoint the original repositories load (an official .pth base:
that file with the merged weights replaced, everything else kept). An output-mode adapter (the
released per-token form) cannot be merged: asking for a merged file is an error (exit 2); --format
adapter re-writes the adapter with its base's hash instead. --format peft writes the adapter
(unmerged) in PEFT's layout; --format hf a folder ready for the Hugging Face Hub with a model card.
Formats and what PEFT applies for each mode: docs/outputs.md.

formats (--format):
  auto          .safetensors suffix -> safetensors, else the family's official .pth
  pth           DUSt3R/MASt3R/CUT3R: {'model': state_dict, 'args': Namespace(model='<ctor>')};
                VGGT: a plain state_dict
  hf            Hub folder: config.json + model.safetensors (merged) or the PEFT adapter (output
                mode), and README.md, the model card (licence inherited from the base, base_model,
                tags, training recipe, before/after table with --eval)
  safetensors   the official state_dict as one safetensors file
  peft          folder: adapter_config.json + adapter_model.safetensors (PEFT's keys; weight modes
                as DoRA, exact) + README.md; `--adapter FOLDER` reads it back
  adapter       the adapter itself (any mode), .safetensors, with the base's name and hash

examples:
  fin3r export --adapter runs/dust3r/adapter.safetensors --checkpoint DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \\
      --out DUSt3R_512_dpt_fin3r.pth
  fin3r export --adapter runs/demo/adapter.safetensors --model demo_base.safetensors --out merged.safetensors
  fin3r export --adapter runs/dust3r/adapter.safetensors --format peft --out dust3r_fin3r_peft/
  fin3r export --adapter runs/dust3r/adapter.safetensors --format hf --out dust3r_fin3r_hub/ \
      --eval eval/base/monodepth.json eval/tuned/monodepth.json    # then: huggingface-cli upload ..."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter file written by `fin3r train`")
    parser.add_argument("--out", required=True, help="output file (or folder for --format hf)")
    parser.add_argument("--model", default=None,
                        help="base model: registry name or model file (default: the adapter's base_name)")
    parser.add_argument("--checkpoint", default=None, help="official weights for a registry-name --model")
    parser.add_argument("--format", default="auto", choices=["auto", "pth", "hf", "safetensors", "peft", "adapter"])
    parser.add_argument("--eval", nargs=2, default=None, metavar=("BASE_JSON", "TUNED_JSON"),
                        help="--format hf: `fin3r eval` results of the base and the tuned model for the card's table")
    parser.add_argument("--base-model-id", default=None,
                        help="--format hf/peft: the base's Hub repository (default: the known release of the base)")
    parser.add_argument("--license", default=None,
                        help="--format hf: the licence (default: inherited from the base model's release)")
    parser.add_argument("--no-check-base", action="store_true",
                        help="skip the check that the base weights are the ones the adapter was trained on")


def run(args: argparse.Namespace) -> int:
    from fin3r.export import export_adapter
    from fin3r.io import check_output_file, prepare_output_dir

    if args.format == "hf":
        prepare_output_dir(args.out)
    else:
        check_output_file(args.out)
    info = export_adapter(args.adapter, args.out, model=args.model, checkpoint=args.checkpoint, fmt=args.format,
                          check_base=not args.no_check_base, base_model_id=args.base_model_id, license=args.license,
                          eval_results=tuple(args.eval) if args.eval else None)
    if info["kind"] == "merged":
        print(f"merged {info['mode']} adapter into the {info['family']} base: {info['path']} "
              f"({info['format']}, {info['keys']} tensors)")
    elif info["format"] in ("peft", "hf"):
        print(f"wrote the {info['mode']} adapter in PEFT's layout: {info['path']}")
    else:
        print(f"wrote the {info['mode']} adapter with its base hash: {info['path']}")
    return 0
