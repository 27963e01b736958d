"""Evaluation overhead: metric computation time / model forward time on the world benchmark.

Exports the synthetic-world monocular benchmark (MoGe layout) to a temporary folder, then runs
``evaluate_monodepth`` with a model of the zoo (random weights; default the full-size
``dust3r_512_dpt`` at the protocol's 512 input) and reports, from the same run, the seconds per
image spent in the model (resize + forward + resize back) and in scoring (alignment sample,
every requested alignment variant, metrics), and their ratio (target < 5 %). A second table times
the scoring alone per variant at real benchmark resolutions (NYUv2 640x480, KITTI 750x375,
ETH3D 2048x1365) so the ratio can be judged for the real data too. Heavy with the full-size model:

    flock /tmp/fin3r-heavy.lock nice -n 10 python benchmarks/eval.py
    python benchmarks/eval.py --model dust3r_tiny --input-long-side 128   # quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def _score_times(variants: list[str], repeats: int) -> list[tuple[str, str, float]]:
    import torch

    from fin3r.eval.mono_scoring import MonoGT, score_mono

    rows = []
    for bench, (H, W) in (("NYUv2", (480, 640)), ("KITTI", (375, 750)), ("ETH3D", (1365, 2048))):
        g = torch.Generator().manual_seed(0)
        depth = torch.rand(H, W, generator=g) * 9 + 1
        mask = torch.rand(H, W, generator=g) < 0.7
        pts = torch.stack([torch.zeros_like(depth), torch.zeros_like(depth), depth], -1)
        pred = depth * torch.exp(torch.randn(H, W, generator=g) * 0.1)
        for v in variants:
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                score_mono({"depth_scale_invariant": pred}, MonoGT(depth, mask, pts), variants=[v])
                ts.append(time.perf_counter() - t0)
            rows.append((bench, v, statistics.median(ts)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dust3r_512_dpt", help="registry name (random weights)")
    ap.add_argument("--input-long-side", type=int, default=512, help="model input long side (protocol: 512)")
    ap.add_argument("--num-images", type=int, default=8)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the per-variant scoring timings")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fin3r.eval.mono_scoring import DEPTH_VARIANTS
    from fin3r.eval.monodepth import MonodepthConfig, evaluate_monodepth
    from fin3r.eval.world_benchmarks import export_world_monodepth
    from fin3r.models.registry import build_model

    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path

        export_world_monodepth(Path(tmp), args.num_images, args.height, args.width, seed=0)
        model = build_model(args.model).eval()
        print(f"model {args.model} (random weights), input long side {args.input_long_side}, "
              f"{args.num_images} world images {args.width}x{args.height}, {args.threads} thread(s)")
        print("| scored variants | forward s/img | metrics s/img | metrics / forward |")
        print("|---|---|---|---|")
        for name, variants in (("depth_scale_invariant (Table 1)", ["depth_scale_invariant"]),
                               ("all depth variants (default)", list(DEPTH_VARIANTS))):
            cfg = MonodepthConfig(benchmarks=["world"], variants=variants, input_long_side=args.input_long_side)
            with torch.inference_mode():
                res = evaluate_monodepth(model, tmp, config=cfg, progress=False)
            s = res["benchmarks"]["world"]
            n = s["num_images"]
            fwd, met = s["forward_time_s"] / n, s["metric_time_s"] / n
            print(f"| {name} | {fwd:.3f} | {met:.4f} | {100 * met / fwd:.2f} % |")
    print()
    print("Scoring alone at real benchmark resolutions (one image, median of repeats):")
    print("| benchmark | variant | s/img |")
    print("|---|---|---|")
    for bench, v, t in _score_times(list(DEPTH_VARIANTS), args.repeats):
        print(f"| {bench} | {v} | {t:.4f} |")


if __name__ == "__main__":
    main()
