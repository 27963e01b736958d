#!/usr/bin/env python
"""Pre-train the demo's base model on the synthetic world (offline, once; ships as an asset).

A small DUSt3R (the shared ``fin3r.models`` implementation) is trained from scratch on pairs of
overlapping views of :mod:`fin3r.data.world` with DUSt3R's own criterion (the shared replay loss
``ConfLoss(Regr3D(L21, 'avg_dis'), alpha=0.2)``), with a fraction of self-pairs ``(I, I)`` so the
monocular path is trained explicitly.

Like the real base models, it must be good at multi-view geometry and coarse at fine monocular
detail: it never sees sharp depth. Its supervision is the depth average-pooled by ``--pool``
(default 8 = the patch size) and bilinearly up-sampled. The point of the demo is that a sharp
monocular teacher can then add the missing detail through the encoder alone.

The packaged base took two phases: ``--pool 8`` from random weights, then ``--init`` that
checkpoint with ``--pool 16`` (coarser supervision, so that the base's remaining error is mostly
missing detail); the exact commands are in ``docs/demo.md`` and in the card (phase 1 under
``init``).

Reproducible from ``--seed`` (single-threaded CPU run); prints its trajectory (held-out figures
from :func:`fin3r.eval.world.evaluate_world`) and writes, every ``--ckpt-every`` seconds and at the end:

- ``OUT`` (fp16 safetensors through ``fin3r.models.save_model``),
- ``OUT`` with ``.json``: the card (recipe, steps, wall time, trajectory, final figures).

    OMP_NUM_THREADS=1 python scripts/pretrain_world.py --out src/fin3r/assets/demo_base.safetensors

Stop it at any time: the last checkpoint is a valid base (its card says how far it got).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

# The demo's base architecture: DUSt3R with a linear head at patch 8, 64x48 images (48 tokens).
BASE_ARCH = {
    "family": "dust3r",
    "enc_embed_dim": 128,
    "enc_depth": 4,
    "enc_num_heads": 4,
    "dec_embed_dim": 128,
    "dec_depth": 2,
    "dec_num_heads": 4,
    "patch_size": 8,
    "head_type": "linear",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (fp16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=12000, help="total optimizer steps (the lr schedule's length)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop early after this wall time (0: no limit)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--self-frac", type=float, default=0.3, help="fraction of self-pairs (I, I)")
    p.add_argument("--pool", type=int, default=8, help="depth supervision is avg-pooled by this")
    p.add_argument("--scenes", type=int, default=2000, help="training scenes")
    p.add_argument("--views", type=int, default=6, help="views per training scene")
    p.add_argument("--eval-scenes", type=int, default=128, help="held-out pairs for the trajectory")
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--arch", type=str, default="", help="JSON overrides of the architecture")
    p.add_argument("--ckpt-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations")
    p.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is evaluated and saved")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this fin3r model file (a second phase of a run) instead of random weights")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def parameter_groups(model, weight_decay: float):
    """AdamW groups as DUSt3R: no weight decay on biases and 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_checkpoint(model, out: Path, card: dict) -> None:
    """fp16 safetensors via the shared ``save_model``, plus the JSON card beside it (both atomic)."""
    from fin3r.io import write_json_atomic
    from fin3r.models import save_model

    save_model(copy.deepcopy(model).half(), out)
    write_json_atomic(out.with_suffix(".json"), card)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    from fin3r.data.world_views import blur_depth, pair_batch, render_world_views, sample_pairs
    from fin3r.eval.world import evaluate_world, floor_figures
    from fin3r.models import replay_loss
    from fin3r.models.registry import build_model
    from fin3r.train.engine import lr_at  # linear warm-up, then half-cycle cosine (the engine's schedule)

    arch = dict(BASE_ARCH, **(json.loads(args.arch) if args.arch else {}))
    t0 = time.time()
    train = render_world_views(args.scenes, args.views, args.height, args.width, args.seed, "train", progress=sys.stderr.isatty())
    test = render_world_views(args.eval_scenes, 2, args.height, args.width, args.seed, "test", progress=sys.stderr.isatty())
    train_depth = blur_depth(train.depth, train.valid, args.pool)
    floor = floor_figures(test, args.pool)
    print(f"rendered {args.scenes}x{args.views} train + {args.eval_scenes}x2 test views in {time.time() - t0:.1f}s; "
          f"blurred-GT floor: {json.dumps({k: round(v, 4) for k, v in floor.items()})}", flush=True)

    model = build_model(arch)
    if args.init is not None:
        from fin3r.models import load_model

        model.load_state_dict(load_model(str(args.init)).float().state_dict())
        print(f"initialised from {args.init}", flush=True)
    model.train()
    ema = copy.deepcopy(model).eval()  # the exponential moving average of the weights is the base
    for p in ema.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    card = {
        "what": "fin3r demo base: DUSt3R-architecture model pre-trained on the synthetic world "
                "with low-resolution depth supervision (coarse by construction)",
        "arch": arch,
        "params": n_params,
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "OMP_NUM_THREADS=1 python scripts/pretrain_world.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {args.threads} thread(s), shared CPU",
        "floor_blurred_gt": floor,
        "trajectory": [],
    }
    if args.init is not None:
        # a second phase: keep the first phase's card, so the card alone says how to rebuild the base
        init_card = Path(args.init).with_suffix(".json")
        card["init"] = {"path": str(args.init)}
        if init_card.is_file():
            prev = json.loads(init_card.read_text())
            card["init"].update({k: prev[k] for k in ("recipe", "command", "steps_done", "minutes", "machine",
                                                      "floor_blurred_gt", "trajectory", "init") if k in prev})
    print(f"model: {n_params / 1e6:.2f} M params; {args.steps} steps of {args.batch} pairs, lr {args.lr}", flush=True)

    t_train = time.time()
    last_ckpt = t_train
    loss_ema = None
    step = 0
    stopped_early = False
    while step < args.steps:
        lr = lr_at(step, args.steps, args.warmup, args.lr, args.lr * args.min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        scene, a, b = sample_pairs(gen, train.num_scenes, train.num_views, args.batch, args.self_frac)
        batch = pair_batch(train, scene, a, b, depth=train_depth)
        pred = model.predict_views(batch["img"])
        loss, _ = replay_loss("dust3r", pred, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        lv = loss.detach().item()
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        elapsed = time.time() - t_train
        if step % 100 == 0:
            print(f"step {step} loss(ema) {loss_ema:.4f} lr {lr:.2e} {step / elapsed:.2f} it/s", flush=True)
        out_of_time = args.max_minutes > 0 and elapsed > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            ev = evaluate_world(ema, test, edge_pool=args.pool)["summary"]
            row = {"step": step, "minutes": round(elapsed / 60, 2), "loss_ema": round(loss_ema, 4)}
            row.update({k: round(v, 4) for k, v in ev.items()})
            card["trajectory"].append(row)
            print("eval " + json.dumps(row), flush=True)
        if time.time() - last_ckpt > args.ckpt_every or step == args.steps or out_of_time:
            card.update(steps_done=step, minutes=round(elapsed / 60, 2), final_lr=lr)
            save_checkpoint(ema, args.out, card)
            last_ckpt = time.time()
            print(f"checkpoint at step {step} -> {args.out}", flush=True)
        if out_of_time:
            stopped_early = True
            break
    card.update(stopped_early=stopped_early)
    save_checkpoint(ema, args.out, card)
    print(f"done: {step} steps in {(time.time() - t_train) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
