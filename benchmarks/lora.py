"""LoRA cost on a ViT-B-sized encoder (CPU): merged / output-mode inference and training steps.

Prints, side by side in one run and for each thread count, the ratios fin3r targets:

* merged ``weight_row`` forward / base forward            (target <= 1.02: it is the same graph)
* train step (fwd + bwd, LoRA on qkv) ``weight_row`` / plain LoRA        (target <= 1.15)
* ``output``-mode (released Fin3R) unmerged inference / base forward     (reported)

plus the alternative ``weight_row`` implementations (norm of ``W + dW`` materialised, or the whole
``W'`` materialised for the matmul) that ``LoRALinear`` does not use by default.

Variants are timed round-robin (one repetition of each in turn) so that load from other processes
hits all variants alike; ratios are given of the minimum and median wall-clock times and of the
minimum process CPU time (on a shared machine the minima are the better estimate). Heavy: run it as

    flock /tmp/fin3r-heavy.lock nice -n 10 python benchmarks/lora.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fin3r.lora import LoRAMode, inject_lora, lora_modules, lora_parameters, merge_and_unload, merge_lora
from fin3r.lora.modes import WeightRenorm


class DenseNorm(WeightRenorm):
    """``weight_row`` / ``weight_fro`` taking ``n(W + dW)`` of the materialised ``W + dW``."""

    def adapted_norm_sq(self, layer):
        return self.norm_sq(layer.base_weight() + layer.delta_weight())


class Materialize(DenseNorm):
    """Also multiplying by the materialised ``W'`` instead of scaling the output by ``g``."""

    def forward(self, layer, x):
        return F.linear(x, self.effective_weight(layer), layer.bias)


def _variant(mode: LoRAMode, norm_impl: str, forward_impl: str) -> LoRAMode:
    """The strategy to time: the library's, or one of the alternatives above."""
    if not isinstance(mode, WeightRenorm) or (norm_impl, forward_impl) == ("gram", "gain"):
        return mode
    return (Materialize if forward_impl == "materialize" else DenseNorm)(mode.norm)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm ViT block (CroCo/DINOv2 layout without LayerScale)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def make_encoder(depth: int, dim: int, heads: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*(Block(dim, heads) for _ in range(depth))).eval()


def with_lora(base: nn.Sequential, mode: str | None, seed: int = 1) -> nn.Sequential:
    """A copy of ``base`` with LoRA (r=8, alpha=8) on every qkv and random A, B."""
    model = make_encoder(len(base), base[0].attn.qkv.in_features, base[0].attn.heads)
    model.load_state_dict(base.state_dict())
    inject_lora(model, ["attn.qkv"], rank=8, alpha=8.0, mode=mode)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def round_robin(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, dict[str, list[float]]]:
    """Time each variant ``reps`` times, one repetition of each in turn.

    Returns ``{variant: {"wall": [s, ...], "cpu": [s, ...]}}``; ``cpu`` is the process CPU time
    (all threads), which ignores time spent descheduled by other processes' load.
    """
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k]["cpu"].append(time.process_time() - c0)
            times[k]["wall"].append(time.perf_counter() - w0)
    return times


def forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def train_fn(model: nn.Module, x: torch.Tensor, norm_impl: str, forward_impl: str) -> Callable[[], None]:
    params = lora_parameters(model)
    layers = list(lora_modules(model).values())

    def run() -> None:
        library = [m.strategy for m in layers]
        for m in layers:
            m.strategy = _variant(m.strategy, norm_impl, forward_impl)
        try:
            for p in params:
                p.grad = None
            model(x).square().mean().backward()
        finally:
            for m, strategy in zip(layers, library):
                m.strategy = strategy

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per variant")
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    base = make_encoder(args.depth, args.dim, args.heads)
    x = torch.randn(args.batch, args.tokens, args.dim, generator=torch.Generator().manual_seed(0))
    merged = with_lora(base, "weight_row")
    merge_lora(merged)
    unloaded = merge_and_unload(with_lora(base, "weight_row"))
    output = with_lora(base, "output")
    plain, row = with_lora(base, None).train(), with_lora(base, "weight_row").train()

    print(
        f"torch {torch.__version__}; ViT encoder: {args.depth} blocks, dim {args.dim}, "
        f"{args.heads} heads, {args.tokens} tokens, batch {args.batch}; LoRA r=8 on qkv; "
        f"fp32 CPU; {args.reps} round-robin reps per variant"
    )
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        inf = round_robin(
            {
                "base fwd": forward_fn(base, x),
                "weight_row merged fwd": forward_fn(merged, x),
                "weight_row merge_and_unload fwd": forward_fn(unloaded, x),
                "output (unmerged) fwd": forward_fn(output, x),
            },
            args.reps,
        )
        trn = round_robin(
            {
                "plain LoRA train step": train_fn(plain, x, "gram", "gain"),
                "weight_row train step": train_fn(row, x, "gram", "gain"),
                "weight_row train step (dense norm)": train_fn(row, x, "dense", "gain"),
                "weight_row train step (materialise W')": train_fn(row, x, "dense", "materialize"),
            },
            args.reps,
        )
        rows.append((threads, {**inf, **trn}))

    stats = {"min wall": lambda t: min(t["wall"]), "median wall": lambda t: statistics.median(t["wall"]),
             "min cpu": lambda t: min(t["cpu"])}  # fmt: skip
    cols = [(th, name) for th, _ in rows for name in stats]
    head = "".join(f"{f'{th}T {name}':>16s}" for th, name in cols)
    print(f"\n{'time [ms]':42s}{head}")
    for k in rows[0][1]:
        cells = "".join(f"{stats[name](dict(rows)[th][k]) * 1e3:16.1f}" for th, name in cols)
        print(f"{k:42s}{cells}")
    checks = [
        ("merged weight_row fwd / base fwd", "weight_row merged fwd", "base fwd", 1.02),
        ("merge_and_unload fwd / base fwd", "weight_row merge_and_unload fwd", "base fwd", 1.02),
        ("train weight_row / plain LoRA", "weight_row train step", "plain LoRA train step", 1.15),
        ("  dense-norm variant / plain", "weight_row train step (dense norm)", "plain LoRA train step", None),
        ("  materialise-W' variant / plain", "weight_row train step (materialise W')", "plain LoRA train step", None),
        ("output-mode fwd / base fwd", "output (unmerged) fwd", "base fwd", None),
    ]
    print(f"\n{'ratio':42s}{head}")
    for label, a, b, target in checks:
        cells = "".join(
            f"{stats[name](dict(rows)[th][a]) / stats[name](dict(rows)[th][b]):16.3f}" for th, name in cols
        )
        note = f"   target <= {target}" if target else "   (reported)"
        print(f"{label:42s}{cells}{note}")

if __name__ == "__main__":
    main()
