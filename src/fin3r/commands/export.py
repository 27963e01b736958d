"""`fin3r export`: merge an adapter into its base model and write the official checkpoint format."""

from __future__ import annotations

import argparse

HELP = "merge an adapter into its base model and write the official checkpoint format"
DESCRIPTION = """Merges weight-mode adapters into the base weights (zero inference overhead) and writes a
checkpoint the original repositories load; output-mode adapters are written with the base's hash.

formats (--format):
  auto          .safetensors suffix -> safetensors, else the family's official .pth
  pth           DUSt3R/MASt3R/CUT3R: {'model': state_dict, 'args': Namespace(model='<ctor>')};
                VGGT: a plain state_dict
  hf            Hugging Face folder: config.json + model.safetensors
  safetensors   the official state_dict as one safetensors file

examples:
  fin3r export --adapter runs/dust3r/adapter.safetensors --checkpoint DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \\
      --out DUSt3R_512_dpt_fin3r.pth
  fin3r export --adapter runs/demo/adapter.safetensors --model demo_base.safetensors --out merged.safetensors"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter file written by `fin3r train`")
    parser.add_argument("--out", required=True, help="output file (or folder for --format hf)")
    parser.add_argument("--model", default=None,
                        help="base model: registry name or model file (default: the adapter's base_name)")
    parser.add_argument("--checkpoint", default=None, help="official weights for a registry-name --model")
    parser.add_argument("--format", default="auto", choices=["auto", "pth", "hf", "safetensors"])
    parser.add_argument("--no-check-base", action="store_true",
                        help="skip the check that the base weights are the ones the adapter was trained on")


def run(args: argparse.Namespace) -> int:
    from fin3r.export import export_adapter

    info = export_adapter(args.adapter, args.out, model=args.model, checkpoint=args.checkpoint, fmt=args.format,
                          check_base=not args.no_check_base)
    if info["kind"] == "merged":
        print(f"merged {info['mode']} adapter into the {info['family']} base: {info['path']} "
              f"({info['format']}, {info['keys']} tensors)")
    else:
        print(f"{info['mode']} adapter cannot be merged (run-time re-normalisation); wrote the adapter with "
              f"its base hash: {info['path']}")
    return 0
