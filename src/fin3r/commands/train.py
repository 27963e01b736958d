"""`fin3r train`: fine-tune a model's encoder with Fin3R (LoRA, distillation + replay)."""

from __future__ import annotations

import argparse

HELP = "fine-tune a model's encoder with Fin3R (LoRA, distillation + replay)"
DESCRIPTION = """Fin3R training: LoRA on the image encoder only, decoder and heads frozen; monocular
distillation from cached teacher labels mixed with multi-view replay. Config: YAML + key=value overrides.

examples:
  fin3r train configs/world_tiny.yaml
  fin3r train configs/dust3r.yaml model.checkpoint=ckpts/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \\
      data.images_root=sa1b/images data.labels_root=sa1b/moge_labels out_dir=runs/dust3r
  fin3r train configs/dust3r.yaml --resume            # continue runs/.../checkpoints/last.pt
  torchrun --nproc_per_node 4 -m fin3r.cli train configs/vggt.yaml   # DDP (NCCL on GPUs, gloo on CPU)
  fin3r train --print-config                          # every key with its default
  fin3r train configs/vggt.yaml --dry-run             # parameters, optimizer state, memory; fits 24/48/80 GB?

Writes OUT_DIR/config.yaml, metrics.jsonl, metrics_{step,epoch}.csv (+ TensorBoard when installed),
checkpoints/last.pt (resumable), adapter_epochNNN.safetensors and adapter.safetensors.
Keys: see src/fin3r/train/config.py or docs/training.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML config (defaults: the synthetic-world recipe)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.lr=1e-4 lora.targets=[qkv,proj] out_dir=runs/x")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="continue from OUT_DIR/checkpoints/last.pt (or the given checkpoint)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model on the meta device and print parameter counts, optimizer state and "
                             "an activation-memory estimate per sample (with and without checkpointing); train nothing")


def run(args: argparse.Namespace) -> int:
    import yaml

    from fin3r.config import ConfigError, load_config, to_dict
    from fin3r.errors import Fin3rError
    from fin3r.train import TrainConfig, train

    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        overrides.insert(0, config_path)  # `fin3r train key=value ...` without a file
        config_path = None
    try:
        config = load_config(TrainConfig, config_path, overrides)
    except ConfigError as e:  # one clear line, as every other user error
        raise Fin3rError(str(e)) from None
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    if args.dry_run:
        from fin3r.train.memory import estimate_memory, format_estimate

        print(format_estimate(estimate_memory(config)))
        return 0
    from fin3r.devices import check_device
    from fin3r.io import prepare_output_dir

    check_device(config.device, "device", allow_auto=True)
    prepare_output_dir(config.out_dir, "out_dir")
    result = train(config, resume=args.resume)
    if result.adapter_path is not None:
        last = result.history[-1] if result.history else {}
        norms = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("feat_norm"))
        base = ", ".join(f"{k} {v:.4f}" for k, v in result.base_feature_norm.items())
        print(f"trained {result.steps} steps ({result.epochs} epochs, {result.skipped_steps} skipped), "
              f"{result.trainable_params} trainable parameters")
        if norms:
            print(f"encoder feature norm: base {base} -> adapted {norms}")
        print(f"adapter: {result.adapter_path}")
    return 0
