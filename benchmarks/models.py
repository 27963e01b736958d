"""Model zoo speed and memory: full-size models on the CPU (or a GPU), ours beside the official code.

Default: DUSt3R 512 DPT (random weights) at 512x384, batch 1:

* ``fin3r/dust3r_512_dpt/mono``  -- ``predict_mono`` (the image as both views, encoded once);
* ``fin3r/dust3r_512_dpt/pair``  -- our pair forward (encodes both views, as the official model);
* ``official/dust3r_512_dpt/pair`` -- naver's ``AsymmetricCroCo3DStereo`` forward on the same input,
  if ``--official-dust3r <checkout>`` names a checkout of naver/dust3r with its croco submodule
  (pure-PyTorch RoPE fallback; its ``huggingface_hub`` import must resolve: pass ``--python`` of an
  environment that has it; fin3r is found through ``PYTHONPATH=src``).

VGGT-1B (``--families vggt``; ``fin3r/vggt_1b/{mono,views4}``, ``official/vggt_1b/...`` with ``--official-vggt <checkout>``
of facebookresearch/vggt, track head off): the image is resized to 518x392; ``views4`` times one
4-view set (4 shifted copies of the image). Full size fp32 needs ~5 GB per model.

π3 (``--families pi3``; ``fin3r/pi3/{mono,views4}``, ``official/pi3/...`` with ``--official-pi3 <checkout>``
of yyfz/Pi3): the image is resized to 518x392 as for VGGT; ``views4`` times one 4-view set. Full size
fp32: ~3.8 GB of weights per model.

CUT3R 512 DPT (``--families cut3r``; ``fin3r/cut3r_512_dpt_4_64/{mono,views4}``): ``mono`` is one
frame from the initial state at the benchmark size, ``views4`` one 4-frame sequence decoded with the
recurrent state (shifted copies of the image). ~3.9 GB peak RSS. There is no official variant: the
official CUT3R needs the compiled CUDA cuRoPE (its PyTorch fallback fails on the pose token).

Two phases, each in fresh subprocesses so that peak RSS is per model:
1. memory: one process per variant builds it and runs one forward; reports peak RSS (ru_maxrss);
2. time: one process holds all variants and times them round-robin (one repetition of each in
   turn, median of ``--repeats``) for each thread count, so load from other processes hits all
   variants alike; prints seconds per image and the ratio official / ours.

Other families add entries to :data:`BUILDERS` (name -> function(args) -> ``run(img)``). Heavy:

    flock /tmp/fin3r-heavy.lock nice -n 10 python benchmarks/models.py \\
        --official-dust3r /path/to/dust3r --python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

Runner = Callable[[torch.Tensor], object]


def _fin3r(name: str, mode: str) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        from fin3r.models.registry import build_model

        model = build_model(name).eval().to(args.device)
        if mode == "mono":
            return model.predict_mono
        return lambda img: model(img, img)

    return build


def _official_dust3r(name: str) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        from fin3r.models.croco.checkpoint import FIN3R_ONLY_ARGS
        from fin3r.models.registry import MODEL_CONFIGS

        here = Path(__file__).resolve().parent  # this file is `models`, which croco's `models` package would hit
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        sys.path.insert(0, str(Path(args.official_dust3r).resolve()))
        from dust3r.model import AsymmetricCroCo3DStereo  # noqa: E402 (a user-supplied checkout)

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in MODEL_CONFIGS[name].items()
                  if k != "family" and k not in FIN3R_ONLY_ARGS}
        net = AsymmetricCroCo3DStereo(patch_embed_cls="PatchEmbedDust3R", landscape_only=False, **kwargs)
        net = net.eval().to(args.device)

        def run(img: torch.Tensor) -> object:
            b = img.shape[0]
            shape = torch.tensor(img.shape[-2:])[None].repeat(b, 1)
            x = (img - 0.5) / 0.5  # the official Normalize(0.5, 0.5), outside the model
            return net(dict(img=x, true_shape=shape, instance=["0"] * b),
                       dict(img=x, true_shape=shape, instance=["1"] * b))

        return run

    return build


VGGT_HW = (392, 518)  # VGGT's native width; the VGGT variants resize the benchmark image to it (~ms)


def _vggt_views(img: torch.Tensor, views: int) -> torch.Tensor:
    """``img (B, 3, H, W)`` -> ``(B, views, 3, 392, 518)``: resized, shifted copies (distinct views)."""
    img = torch.nn.functional.interpolate(img, size=VGGT_HW, mode="bilinear", align_corners=False)
    return torch.stack([img.roll(7 * k, dims=-1) for k in range(views)], dim=1)


def _fin3r_vggt(views: int) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        from fin3r.models.registry import build_model

        model = build_model("vggt_1b").eval().to(args.device)
        if views == 1:
            return lambda img: model.predict_mono(_vggt_views(img, 1)[:, 0])
        return lambda img: model.predict_views(_vggt_views(img, views))

    return build


def _official_vggt(views: int) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        sys.path.insert(0, str(Path(args.official_vggt).resolve()))
        from vggt.models.vggt import VGGT  # noqa: E402 (a user-supplied checkout)

        net = VGGT(enable_track=False).eval().to(args.device)
        return lambda img: net(_vggt_views(img, views))  # images in [0, 1]; normalised inside

    return build


def _fin3r_pi3(views: int) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        from fin3r.models.registry import build_model

        model = build_model("pi3").eval().to(args.device)
        if views == 1:
            return lambda img: model.predict_mono(_vggt_views(img, 1)[:, 0])
        return lambda img: model.predict_views(_vggt_views(img, views))

    return build


def _official_pi3(views: int) -> Callable[[argparse.Namespace], Runner]:
    def build(args: argparse.Namespace) -> Runner:
        sys.path.insert(0, str(Path(args.official_pi3).resolve()))
        from pi3.models.pi3 import Pi3  # noqa: E402 (a user-supplied checkout)

        net = Pi3().eval().to(args.device)
        return lambda img: net(_vggt_views(img, views))  # images in [0, 1]; normalised inside

    return build


def _fin3r_cut3r(views: int) -> Callable[[argparse.Namespace], Runner]:
    """CUT3R 512 DPT at the benchmark size: one frame from the initial state, or a ``views``-frame
    sequence (shifted copies of the image) decoded recurrently (time per sequence)."""

    def build(args: argparse.Namespace) -> Runner:
        from fin3r.models.registry import build_model

        model = build_model("cut3r_512_dpt_4_64").eval().to(args.device)
        if views == 1:
            return model.predict_mono
        return lambda img: model.predict_views(torch.stack([img.roll(16 * k, dims=-1) for k in range(views)], 1))

    return build


#: variant name -> builder; a builder returns ``run(img (B, 3, H, W) in [0, 1])``
BUILDERS: dict[str, Callable[[argparse.Namespace], Runner]] = {
    "fin3r/dust3r_512_dpt/mono": _fin3r("dust3r_512_dpt", "mono"),
    "fin3r/dust3r_512_dpt/pair": _fin3r("dust3r_512_dpt", "pair"),
    "official/dust3r_512_dpt/pair": _official_dust3r("dust3r_512_dpt"),
    # VGGT-1B at 518x392 (the input is resized): one image (S = 1), and one 4-view set (time per set)
    "fin3r/vggt_1b/mono": _fin3r_vggt(1),
    "fin3r/vggt_1b/views4": _fin3r_vggt(4),
    "official/vggt_1b/mono": _official_vggt(1),
    "official/vggt_1b/views4": _official_vggt(4),
    # π3 at 518x392 (--families pi3): one image, and one 4-view set (time per set)
    "fin3r/pi3/mono": _fin3r_pi3(1),
    "fin3r/pi3/views4": _fin3r_pi3(4),
    "official/pi3/mono": _official_pi3(1),
    "official/pi3/views4": _official_pi3(4),
    # CUT3R 512 DPT (--families cut3r; no official variant: its RoPE needs the compiled CUDA cuRoPE)
    "fin3r/cut3r_512_dpt_4_64/mono": _fin3r_cut3r(1),
    "fin3r/cut3r_512_dpt_4_64/views4": _fin3r_cut3r(4),
}
#: ratios printed: (numerator, denominator)
RATIOS = [("official/dust3r_512_dpt/pair", "fin3r/dust3r_512_dpt/pair"),
          ("official/dust3r_512_dpt/pair", "fin3r/dust3r_512_dpt/mono"),
          ("official/vggt_1b/mono", "fin3r/vggt_1b/mono"), ("official/vggt_1b/views4", "fin3r/vggt_1b/views4"),
          ("official/pi3/mono", "fin3r/pi3/mono"), ("official/pi3/views4", "fin3r/pi3/views4")]


def _image(args: argparse.Namespace) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(args.batch, 3, args.height, args.width, generator=g).to(args.device)


def _context(args: argparse.Namespace):
    if args.device.startswith("cuda") and args.amp != "none":
        dtype = torch.float16 if args.amp == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def _sync(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def worker_memory(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads[-1])
    t0 = time.perf_counter()
    run = BUILDERS[args.variants[0]](args)
    build_s = time.perf_counter() - t0
    img = _image(args)
    with torch.inference_mode(), _context(args):
        run(img)
    _sync(args)
    out = {"variant": args.variants[0], "build_s": build_s,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if args.device.startswith("cuda"):
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def worker_time(args: argparse.Namespace) -> dict:
    runs = {name: BUILDERS[name](args) for name in args.variants}
    img = _image(args)
    results: dict = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.inference_mode(), _context(args):
            for name, run in runs.items():  # warm-up
                run(img)
            _sync(args)
            for _ in range(args.repeats):
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    run(img)
                    _sync(args)
                    times[name].append(time.perf_counter() - t0)
        results[str(threads)] = {name: statistics.median(t) / args.batch for name, t in times.items()}
    return results


def _spawn(args: argparse.Namespace, phase: str, variants: list[str]) -> dict:
    cmd = [args.python, __file__, "--worker", phase, "--variants", *variants, "--threads",
           *map(str, args.threads), "--repeats", str(args.repeats), "--height", str(args.height),
           "--width", str(args.width), "--batch", str(args.batch), "--device", args.device, "--amp", args.amp]
    if args.official_dust3r:
        cmd += ["--official-dust3r", args.official_dust3r]
    if args.official_vggt:
        cmd += ["--official-vggt", args.official_vggt]
    if args.official_pi3:
        cmd += ["--official-pi3", args.official_pi3]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker {phase} {variants} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=None, help=f"default: all of {list(BUILDERS)} that can run")
    p.add_argument("--official-dust3r", default=None, help="checkout of naver/dust3r (with croco) to compare")
    p.add_argument("--official-vggt", default=None, help="checkout of facebookresearch/vggt to compare")
    p.add_argument("--official-pi3", default=None, help="checkout of yyfz/Pi3 to compare")
    p.add_argument("--families", nargs="+", default=["dust3r"], help="model families to run (dust3r, vggt, cut3r, pi3)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the workers (default: this one)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"], help="autocast dtype on CUDA")
    p.add_argument("--worker", choices=["memory", "time"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        out = worker_memory(args) if args.worker == "memory" else worker_time(args)
        print(json.dumps(out))
        return 0

    official = {"dust3r": args.official_dust3r, "vggt": args.official_vggt, "pi3": args.official_pi3}
    family = lambda v: v.split("/")[1].split("_")[0]  # noqa: E731  "fin3r/vggt_1b/mono" -> "vggt"
    variants = args.variants or [v for v in BUILDERS if family(v) in args.families
                                 and (not v.startswith("official/") or official.get(family(v)))]
    print(f"{args.width}x{args.height}, batch {args.batch}, device {args.device}, amp {args.amp}, "
          f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}")
    print("\npeak memory (one process per variant: build + one forward)")
    for v in variants:
        m = _spawn(args, "memory", [v])
        extra = f", peak CUDA {m['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in m else ""
        print(f"  {v:34s} peak RSS {m['peak_rss_gib']:.2f} GiB{extra} (build {m['build_s']:.1f} s)")
    print("\ntime per image (median, variants round-robin in one process)")
    t = _spawn(args, "time", variants)
    for threads, row in t.items():
        for v, sec in row.items():
            print(f"  threads {threads}  {v:34s} {sec:8.3f} s   {1 / sec:7.3f} img/s")
        for num, den in RATIOS:
            if num in row and den in row:
                print(f"  threads {threads}  ratio {num} / {den} = {row[num] / row[den]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
