"""Fin3R training cost vs full fine-tuning of the same model, measured side by side in one run.

CPU (default): a ViT-B-sized DUSt3R (ViT-B/16 encoder, 8+8 decoder blocks of width 512, linear
head; about 150 M parameters) on small images. For each of
  * Fin3R: LoRA (rank 8, alpha 8) on the encoder's ``qkv`` layers, everything else frozen;
  * full fine-tuning: every parameter trainable;
it times optimizer steps of the training engine's own loss path (one mono distillation batch +
one replay pair batch per step, AdamW) and reports step time, trainable parameters and AdamW
state bytes, and the Fin3R / full ratios (target: trainable and optimizer state < 1%).

GPU (``--gpu``, when CUDA is available): training samples/s of Fin3R for VGGT-1B at 518 px and
DUSt3R 512 (DPT) in bf16 autocast (random weights: throughput does not depend on them).

    flock /tmp/fin3r-heavy.lock nice -n 10 python benchmarks/train.py            # CPU
    python benchmarks/train.py --gpu                                             # GPU machine

Results are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fin3r.config import load_config
from fin3r.lora import inject_lora
from fin3r.models.registry import build_model
from fin3r.train import TrainConfig
from fin3r.train.data import collate
from fin3r.train.model import LossModule

VITB_DUST3R = dict(family="dust3r", head_type="linear", output_mode="pts3d", img_size=[224, 224],
                   enc_embed_dim=768, enc_depth=12, enc_num_heads=12, dec_embed_dim=512, dec_depth=8,
                   dec_num_heads=16)


def synthetic_batches(batch: int, height: int, width: int, device: torch.device, seed: int = 0):
    """A mono batch (teacher depth) and a replay pair batch from the synthetic world."""
    from fin3r.data.world import WorldMonoDataset, WorldViewsDataset

    mono = WorldMonoDataset(batch, height, width, seed=seed)
    views = WorldViewsDataset(batch, 2, height, width, seed=seed)
    to = lambda b: {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}  # noqa: E731
    return to(collate([mono[i] for i in range(batch)])), to(collate([views[i] for i in range(batch)]))


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def time_steps(model, config, mono, pair, steps: int, warmup: int, amp_dtype=None) -> dict[str, float]:
    """Seconds per optimizer step (mono + replay micro-batches), trainable params, AdamW state bytes."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))
    loss_module = LossModule(model, config)
    device = next(model.parameters()).device
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for source, batch in (("mono", mono), ("replay", pair)):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, _ = loss_module(source, batch)
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"step_s": times[len(times) // 2], "trainable": sum(p.numel() for p in params),
            "opt_bytes": optimizer_state_bytes(opt), "samples_per_s": 2 * mono["img"].shape[0] / times[len(times) // 2]}


def fin3r_model(base, targets=("qkv",), rank=8):
    model = copy.deepcopy(base)
    inject_lora(model, model.encoder_linear_names(list(targets)), rank=rank, alpha=float(rank), mode="weight_row")
    return model.eval()


def full_model(base):
    model = copy.deepcopy(base).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def run_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(TrainConfig, None, ["distill.min_valid=10"])
    base = build_model(dict(VITB_DUST3R)).eval()
    n_total = sum(p.numel() for p in base.parameters())
    n_enc = sum(p.numel() for p in base.encoder_parameters().values())
    mono, pair = synthetic_batches(args.batch, args.size, args.size, torch.device("cpu"))
    print(f"model: ViT-B DUSt3R, {n_total / 1e6:.1f} M parameters ({n_enc / 1e6:.1f} M in the encoder); "
          f"images {args.size}x{args.size}, batch {args.batch} mono + {args.batch} pairs per step, "
          f"{args.threads} thread(s), median of {args.steps} steps")
    rows = {}
    for name, make in (("fin3r (LoRA r8 qkv)", fin3r_model), ("full fine-tuning", full_model)):
        rows[name] = time_steps(make(base), config, mono, pair, args.steps, args.warmup)
    print(f"{'':22s} {'step s':>8s} {'samples/s':>10s} {'trainable':>12s} {'AdamW state':>14s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['step_s']:8.3f} {r['samples_per_s']:10.2f} {r['trainable']:12,d} "
              f"{r['opt_bytes'] / 2**20:11.2f} MiB")
    f, full = rows["fin3r (LoRA r8 qkv)"], rows["full fine-tuning"]
    print(f"ratios fin3r / full: step time {f['step_s'] / full['step_s']:.3f}, trainable "
          f"{f['trainable'] / full['trainable']:.4%}, optimizer state {f['opt_bytes'] / full['opt_bytes']:.4%} "
          f"(target < 1%)")


def run_gpu(args) -> None:
    if not torch.cuda.is_available():
        print("--gpu: no CUDA device on this machine; nothing measured")
        return
    device = torch.device("cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = load_config(TrainConfig, None, [])
    for name, (h, w), views in (("vggt_1b", (392, 518), 4), ("dust3r_512_dpt", (384, 512), 2)):
        torch.manual_seed(0)
        base = build_model(name).to(device).eval()
        model = fin3r_model(base)
        del base
        mono, pair = synthetic_batches(args.gpu_batch, h, w, device)
        if views != 2:
            from fin3r.data.world import WorldViewsDataset

            ds = WorldViewsDataset(args.gpu_batch, views, h, w)
            pair = {k: (v.to(device) if torch.is_tensor(v) else v)
                    for k, v in collate([ds[i] for i in range(args.gpu_batch)]).items()}
        r = time_steps(model, config, mono, pair, args.steps, args.warmup, amp_dtype=dtype)
        print(f"{name} {h}x{w} {dtype}: {r['samples_per_s']:.2f} samples/s (batch {args.gpu_batch} mono + "
              f"{args.gpu_batch} x {views}-view replay per step, step {r['step_s']:.3f} s; paper: ~0.6 samples/s "
              f"per L20, target >= 2.4)")
        del model
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="CPU image side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="GPU throughput of VGGT-1B and DUSt3R 512 instead")
    parser.add_argument("--gpu-batch", type=int, default=4)
    args = parser.parse_args()
    run_gpu(args) if args.gpu else run_cpu(args)


if __name__ == "__main__":
    main()
