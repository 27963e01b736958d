"""Training memory and speed at real architecture sizes, measured side by side in one run.

CPU (default): one training step (forward, backward, AdamW on the LoRA parameters; LoRA r8 on the
encoder's ``qkv``) of DUSt3R-512 (DPT, 571 M parameters) and VGGT-1B (1.19 B parameters), random
weights, on a synthetic replay sample (batch 1, ``--views`` views) at a reduced resolution, each
configuration in its own subprocess:

  * activation checkpointing off / on (``grad_checkpointing``), fp32;
  * VGGT-1B with the frozen block weights stored in bf16 (``frozen_weights: bf16``, bf16 autocast).

For each it prints the step's CPU time (process time: other jobs on a shared machine do not
inflate it), the resident weights, and the step's peak memory above the
resident set (the activations, their gradients and the transient tensors: ``VmHWM - VmRSS`` of
the subprocess, peak reset through ``/proc/self/clear_refs`` before the step, large allocations
returned to the OS by glibc so the RSS follows the live tensors), then the ratios
checkpointing on / off (target for VGGT-1B: memory <= 0.5x at <= 1.4x the time) and the
dry-run estimate (``fin3r train --dry-run``, ``fin3r.train.memory``) over the measured peak.

``--vs-full``: Fin3R (LoRA r8 on qkv) against full fine-tuning of a ViT-B-sized DUSt3R, step time,
trainable parameters and AdamW state.

``--device cuda`` (a GPU machine): for every recipe in ``configs/{dust3r,mast3r,cut3r,vggt,pi3}.yaml``
at the paper's settings (its resolution, views, per-GPU batch, bf16 autocast, checkpointing as the
recipe says), samples/s and ``torch.cuda.max_memory_allocated`` of training steps on synthetic data.

    flock /tmp/fin3r-heavy.lock nice -n 10 python benchmarks/train.py            # CPU (needs ~10 GiB free)
    python benchmarks/train.py --vs-full
    python benchmarks/train.py --device cuda                                     # GPU machine

Results are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from fin3r.config import load_config
from fin3r.lora import inject_lora
from fin3r.models import build_model
from fin3r.train import TrainConfig
from fin3r.train.data import collate
from fin3r.train.model import LossModule, inject_encoder_lora, set_train_mode
from fin3r.train.precision import autocast, store_frozen_in_bf16

ROOT = Path(__file__).resolve().parent.parent
VITB_DUST3R = dict(family="dust3r", head_type="linear", output_mode="pts3d", img_size=[224, 224],
                   enc_embed_dim=768, enc_depth=12, enc_num_heads=12, dec_embed_dim=512, dec_depth=8,
                   dec_num_heads=16)
#: (model, height, width) of the CPU measurement: reduced resolutions, multiples of the patch size
CPU_MODELS = {"dust3r_512_dpt": (192, 256), "vggt_1b": (154, 210)}
GIB = 2**30


def synthetic_batch(kind: str, batch: int, views: int, height: int, width: int, device: torch.device, seed: int = 0):
    """A mono batch (teacher depth) or a replay batch of ``views`` views from the synthetic world."""
    from fin3r.data.world import WorldMonoDataset, WorldViewsDataset

    ds = WorldMonoDataset(batch, height, width, seed=seed) if kind == "mono" else \
        WorldViewsDataset(batch, views, height, width, seed=seed)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in collate([ds[i] for i in range(batch)]).items()}


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def train_step(loss_module, batches, params, opt, amp_dtype=None) -> None:
    """One optimizer step over ``batches`` (``[(source, batch), ...]``, accumulated)."""
    device = next(loss_module.parameters()).device
    opt.zero_grad(set_to_none=True)
    for source, batch in batches:
        with autocast(device, amp_dtype):
            loss, _ = loss_module(source, batch)
        (loss / len(batches)).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def trained_model(name: str, config: TrainConfig, device: torch.device, checkpointing: bool, frozen_bf16: bool):
    """A randomly initialised ``name`` with encoder LoRA as the engine sets it up."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    inject_encoder_lora(model, config)
    set_train_mode(model)
    model.set_grad_checkpointing(checkpointing)
    if frozen_bf16:
        store_frozen_in_bf16(model.checkpoint_blocks())
    return model


# --- CPU: one configuration per subprocess -----------------------------------------------------------
def _status_kib() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def worker(args) -> None:
    """Measure one step of one configuration; print one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    config = load_config(TrainConfig, None, [f"model.name={args.model}", "lora.targets=[qkv]", "distill.min_valid=10"])
    model = trained_model(args.model, config, device, args.checkpointing, args.frozen_bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))
    batch = synthetic_batch("replay", 1, args.views, args.height, args.width, device)
    loss_module = LossModule(model, config)
    amp = torch.bfloat16 if args.frozen_bf16 else None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib()
    t = time.process_time()  # CPU seconds of this process: robust to other jobs on a shared machine
    train_step(loss_module, [("replay", batch)], params, opt, amp)
    step_s = time.process_time() - t
    after = _status_kib()
    print(json.dumps({"step_s": step_s, "resident": before["VmRSS"] * 1024,
                      "peak": (after["VmHWM"] - before["VmRSS"]) * 1024}))


def measure(model: str, height: int, width: int, views: int, threads: int, checkpointing: bool,
            frozen_bf16: bool = False) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--height", str(height), "--width", str(width),
           "--views", str(views), "--threads", str(threads)]
    cmd += ["--checkpointing"] * checkpointing + ["--frozen-bf16"] * frozen_bf16
    # large allocations straight from (and back to) the OS: the RSS follows the live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimated_peak(model: str, height: int, width: int, views: int, checkpointing: bool) -> int:
    """The dry-run's activation estimate for one replay sample of this configuration."""
    from fin3r.train.memory import build_on_meta, trace_sample

    config = load_config(TrainConfig, None, [f"model.name={model}", "lora.targets=[qkv]"])
    meta = build_on_meta(config)
    trace = trace_sample(meta, "replay", height, width, views)
    return trace.checkpointed if checkpointing else trace.total


def run_cpu(args) -> None:
    rows = []
    print(f"one training step, replay sample of {args.views} views, batch 1, LoRA r8 qkv, {args.threads} thread(s), "
          f"random weights; peak = step's VmHWM - VmRSS before it")
    print(f"{'model':16s} {'HxW':>8s} {'ckpt':>5s} {'frozen':>6s} {'step CPU s':>10s} {'weights GiB':>12s} "
          f"{'peak GiB':>9s} {'estimate GiB':>13s} {'est/meas':>9s}")
    configs = [(m, False, False) for m in CPU_MODELS] + [(m, True, False) for m in CPU_MODELS] + [("vggt_1b", True, True)]
    for model, ckpt, frozen in sorted(configs, key=lambda c: (c[0], c[2], c[1])):
        h, w = CPU_MODELS[model]
        r = measure(model, h, w, args.views, args.threads, ckpt, frozen)
        r["estimate"] = estimated_peak(model, h, w, args.views, ckpt)
        rows.append((model, ckpt, frozen, r))
        print(f"{model:16s} {f'{h}x{w}':>8s} {'on' if ckpt else 'off':>5s} {'bf16' if frozen else 'fp32':>6s} "
              f"{r['step_s']:10.1f} {r['resident'] / GIB:12.2f} {r['peak'] / GIB:9.3f} {r['estimate'] / GIB:13.3f} "
              f"{r['estimate'] / r['peak']:9.2f}")
    by = {(m, c, f): r for m, c, f, r in rows}
    for model in CPU_MODELS:
        off, on = by[(model, False, False)], by[(model, True, False)]
        print(f"{model}: checkpointing on / off: peak memory {on['peak'] / off['peak']:.2f}x, step time "
              f"{on['step_s'] / off['step_s']:.2f}x (target <= 0.50x memory at <= 1.40x time)")
    if ("vggt_1b", True, True) in by:
        fp32, bf16 = by[("vggt_1b", True, False)], by[("vggt_1b", True, True)]
        print(f"vggt_1b frozen weights bf16 / fp32 (checkpointing on): resident {bf16['resident'] / fp32['resident']:.2f}x "
              f"({(fp32['resident'] - bf16['resident']) / GIB:.2f} GiB saved), step peak {bf16['peak'] / fp32['peak']:.2f}x, "
              f"step time {bf16['step_s'] / fp32['step_s']:.2f}x")


# --- Fin3R vs full fine-tuning (ViT-B DUSt3R) --------------------------------------------------------
def time_steps(model, config, batches, steps: int, warmup: int, amp_dtype=None) -> dict[str, float]:
    """Seconds per optimizer step over ``batches``, trainable params, AdamW state bytes."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))
    loss_module = LossModule(model, config)
    device = next(model.parameters()).device
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(loss_module, batches, params, opt, amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    samples = sum(b["img"].shape[0] for _, b in batches)
    return {"step_s": times[len(times) // 2], "trainable": sum(p.numel() for p in params),
            "opt_bytes": optimizer_state_bytes(opt), "samples_per_s": samples / times[len(times) // 2]}


def run_vs_full(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(TrainConfig, None, ["distill.min_valid=10"])
    base = build_model(dict(VITB_DUST3R)).eval()
    n_total = sum(p.numel() for p in base.parameters())
    n_enc = sum(p.numel() for p in base.encoder_parameters().values())
    cpu = torch.device("cpu")
    batches = [("mono", synthetic_batch("mono", args.batch, 2, args.size, args.size, cpu)),
               ("replay", synthetic_batch("replay", args.batch, 2, args.size, args.size, cpu))]
    print(f"model: ViT-B DUSt3R, {n_total / 1e6:.1f} M parameters ({n_enc / 1e6:.1f} M in the encoder); "
          f"images {args.size}x{args.size}, batch {args.batch} mono + {args.batch} pairs per step, "
          f"{args.threads} thread(s), median of {args.steps} steps")

    def fin3r_model():
        model = copy.deepcopy(base)
        inject_lora(model, model.encoder_linear_names(["qkv"]), rank=8, alpha=8.0, mode="weight_row")
        return model.eval()

    def full_model():
        model = copy.deepcopy(base).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    rows = {name: time_steps(make(), config, batches, args.steps, args.warmup)
            for name, make in (("fin3r (LoRA r8 qkv)", fin3r_model), ("full fine-tuning", full_model))}
    print(f"{'':22s} {'step s':>8s} {'samples/s':>10s} {'trainable':>12s} {'AdamW state':>14s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['step_s']:8.3f} {r['samples_per_s']:10.2f} {r['trainable']:12,d} "
              f"{r['opt_bytes'] / 2**20:11.2f} MiB")
    f, full = rows["fin3r (LoRA r8 qkv)"], rows["full fine-tuning"]
    print(f"ratios fin3r / full: step time {f['step_s'] / full['step_s']:.3f}, trainable "
          f"{f['trainable'] / full['trainable']:.4%}, optimizer state {f['opt_bytes'] / full['opt_bytes']:.4%} "
          f"(target < 1%)")


# --- GPU: the recipes at the paper's settings --------------------------------------------------------
def run_cuda(args) -> None:
    if not torch.cuda.is_available():
        print("--device cuda: no CUDA device on this machine; nothing measured")
        return
    device = torch.device("cuda")
    for recipe in ("dust3r", "mast3r", "cut3r", "vggt", "pi3"):
        if not (ROOT / "configs" / f"{recipe}.yaml").is_file():
            continue
        config = load_config(TrainConfig, ROOT / "configs" / f"{recipe}.yaml", [])
        d = config.data
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        for ckpt in sorted({config.grad_checkpointing, False}, reverse=True):
            model = trained_model(config.model.name, config, device, ckpt, config.frozen_weights == "bf16")
            batches = [("mono", synthetic_batch("mono", d.batch_size, d.num_views, d.height, d.width, device)),
                       ("replay", synthetic_batch("replay", d.batch_size, d.num_views, d.height, d.width, device))]
            torch.cuda.reset_peak_memory_stats()
            try:
                r = time_steps(model, config, batches, args.steps, args.warmup, amp_dtype=amp)
                peak = torch.cuda.max_memory_allocated() / GIB
                print(f"{recipe:7s} {config.model.name:28s} {d.height}x{d.width}, {d.num_views} views, batch "
                      f"{d.batch_size} mono + {d.batch_size} replay, {str(amp).split('.')[-1]}, checkpointing "
                      f"{'on ' if ckpt else 'off'}: {r['samples_per_s']:.2f} samples/s, step {r['step_s']:.3f} s, "
                      f"peak {peak:.2f} GiB")
            except torch.cuda.OutOfMemoryError:
                print(f"{recipe:7s} {config.model.name:28s} checkpointing {'on ' if ckpt else 'off'}: out of memory")
            del model, batches
            gc.collect()
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--vs-full", action="store_true", help="Fin3R vs full fine-tuning of a ViT-B DUSt3R (CPU)")
    parser.add_argument("--views", type=int, default=2, help="views of the CPU replay sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=128, help="--vs-full: image side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=2, help="--vs-full: batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    # one CPU measurement (the subprocess side)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frozen-bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.device == "cuda":
        run_cuda(args)
    elif args.vs_full:
        run_vs_full(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
