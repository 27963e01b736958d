"""`fin3r diagnose`: encoder feature-norm statistics, base vs adapted model."""

from __future__ import annotations

import argparse

from fin3r.commands.arguments import add_model_arguments

HELP = "encoder feature-norm statistics, base vs adapted model"
DESCRIPTION = """The paper's drift signal: mean norm of the encoder tokens the frozen decoder consumes,
for the base and the adapted model, with a histogram PNG and a JSON.

Measured after the encoder's final norm (what the decoder sees) and before it (the residual
stream). Writes OUT/feature_norms.json and OUT/feature_norms_{post,pre}.png (matplotlib when
installed, else drawn with PIL).

example:
  fin3r diagnose --model dust3r_512_dpt --checkpoint DUSt3R_512_dpt.pth \\
      --adapter runs/dust3r/adapter.safetensors --images eval_images/ --size 384x512 --out diag/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fin3r.commands.arguments import positive_int

    add_model_arguments(parser, adapter_help="adapter to compare against the base")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--size", default=None, metavar="HxW",
                        help="resize+crop images to HxW (multiples of the patch size; default 224x224)")
    parser.add_argument("--limit", type=positive_int, default=64, help="at most this many images (sorted by name)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward (default %(default)s)")
    parser.add_argument("--out", default="diagnose", help="output folder")


def run(args: argparse.Namespace) -> int:
    import copy

    from fin3r.diagnose import diagnose, load_images
    from fin3r.errors import InputError
    from fin3r.io import prepare_output_dir
    from fin3r.models import apply_adapter, load_model

    prepare_output_dir(args.out)
    h, w = 224, 224
    if args.size:
        try:
            h, w = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise InputError(f"--size must look like 384x512 (HxW), got {args.size!r}") from None
        if h < 1 or w < 1:
            raise InputError(f"--size {args.size}: height and width must be >= 1")
    base = load_model(args.model, args.checkpoint, random_weights=args.random_weights)
    images = load_images(args.images, h, w, args.limit)
    adapted = None
    if args.adapter:
        adapted = copy.deepcopy(base)
        apply_adapter(adapted, args.adapter, adapter_base=args.adapter_base)
    report = diagnose(base, images, args.out, adapted=adapted, batch_size=args.batch_size)
    for name in ("base", "adapted"):
        if name in report:
            parts = ", ".join(f"{place} {s['mean']:.4f} (std {s['std']:.4f})" for place, s in report[name].items())
            print(f"{name:8s} mean token norm: {parts}")
    if "relative_change" in report:
        print("relative change: " + ", ".join(f"{k} {v:+.2%}" for k, v in report["relative_change"].items()))
    print(f"wrote {args.out}/feature_norms.json and histogram PNGs ({report['plot_backend']})")
    return 0
