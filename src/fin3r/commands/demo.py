"""`fin3r demo`: run Fin3R end to end on the synthetic world (CPU, no downloads)."""

from __future__ import annotations

import argparse

HELP = "run Fin3R end to end on the synthetic world (CPU, no downloads)"
DESCRIPTION = """Fin3R end to end on the synthetic world fin3r ships, on the CPU, with no downloads:

  1. render held-in images, replay pairs and held-out pairs of the world;
  2. label the held-in images with the teacher (default: the ORACLE teacher -- the world's exact
     depth behind an unknown per-image scale; it is labelled as such everywhere);
  3. evaluate the packaged base model (a small DUSt3R pre-trained on the world with blurred,
     low-resolution depth: good at multi-view geometry, coarse at monocular detail);
  4. Fin3R fine-tuning through `fin3r train`'s engine: re-normalized LoRA on the encoder,
     distillation + multi-view replay; and a replay-only control with the same steps and seed;
  5. evaluate every model on the same held-out views (scale-invariant AbsRel, delta1, AbsRel on
     depth-edge pixels, relative pose AUC@5/10/20, multi-view pointmap error, encoder feature
     norms before/after the encoder's final norm) with paired differences and standard errors.

Writes OUT/report.md, OUT/report.json and OUT/figure.png (default OUT: runs/demo) and prints the
table. About 5 minutes on 2 CPU cores; --quick is a smaller run (< 2 minutes), --ablation runs the
paper's ablation in miniature (replay only, naive LoRA, LoRA + replay, re-norm LoRA weight_row /
output + replay; equal steps and seeds).

Examples:
  fin3r demo
  fin3r demo --quick
  fin3r demo --ablation
  fin3r demo finetune.steps=1000 finetune.distill_weight=10
  fin3r demo --config configs/demo.yaml --out runs/demo_b"""

#: what --quick changes (configs/demo_quick.yaml holds the same values)
QUICK_OVERRIDES = [
    "out_dir=runs/demo_quick",
    "world.label_scenes=64",
    "world.replay_scenes=64",
    "world.replay_pairs=1024",
    "world.eval_scenes=64",
    "finetune.steps=120",
    "figure_views=3",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fin3r.commands.arguments import positive_int

    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. finetune.steps=1000 world.eval_scenes=512")
    parser.add_argument("--config", default=None, help="a YAML demo config (default: the built-in one, "
                        "identical to configs/demo.yaml)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 2 min; what CI runs)")
    parser.add_argument("--ablation", action="store_true",
                        help="the ablation: replay only, naive LoRA, LoRA + replay, re-norm LoRA (weight_row, "
                             "output) + replay, with equal steps and seeds")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo, runs/demo_ablation)")
    parser.add_argument("--base", default=None, help="a fin3r model file to use as the base instead of the "
                        "packaged one (e.g. a longer scripts/pretrain_world.py run)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: measure 1 vs 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import time

    from fin3r.config import ConfigError, load_config
    from fin3r.demo import DemoConfig, run_demo, summary_table
    from fin3r.errors import Fin3rError
    from fin3r.io import prepare_output_dir

    overrides = list(QUICK_OVERRIDES) if args.quick else []
    if args.ablation:
        overrides += ["ablation=true", "out_dir=runs/demo_ablation"]
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.base:
        overrides.append(f"base={args.base}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    if args.no_progress:
        overrides.append("progress=false")
    try:
        cfg = load_config(DemoConfig, args.config, overrides + list(args.overrides))
    except ConfigError as e:
        raise Fin3rError(str(e)) from None
    prepare_output_dir(cfg.out_dir, "--out" if args.out else "out_dir")

    t0 = time.time()
    report = run_demo(cfg, echo=lambda line: print(line, flush=True))
    print()
    for line in summary_table(report):
        print(line)
    if report.get("vs_control"):
        print("\nteacher-specific (vs the replay-only control, paired): ", end="")
        parts = []
        for name, d in report["vs_control"].items():
            e = d["edge_abs_rel"]
            parts.append(f"{report['training'][name]['label']}: edge AbsRel {e['diff']:+.4f} ± {e['se']:.4f} "
                         f"(z {e['z']:+.1f})")
        print("; ".join(parts))
    if "acceptance" in report:
        for name, ok in report["acceptance"]["checks"].items():
            print(f"  [{'x' if ok else ' '}] {name}")
    print(f"\nteacher: {report['teacher']}" + (" (ORACLE: exact depth up to scale)" if report["teacher"] == "oracle" else ""))
    print(f"wrote {cfg.out_dir}/report.md, report.json, figure.png, view.html in {time.time() - t0:.0f} s")
    return 0
