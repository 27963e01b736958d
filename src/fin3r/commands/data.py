"""`fin3r data`: prepare data folders -- a monodepth benchmark from your depth maps, world images."""

from __future__ import annotations

import argparse

HELP = "prepare data folders: a MoGe-layout benchmark from depth maps, synthetic-world images"
DESCRIPTION = """Writes data folders the other commands read.

  moge-benchmark   images + depth maps -> a monocular benchmark in MoGe's layout for
                   `fin3r eval monodepth` (.index.txt, <name>/image.jpg, depth.png, meta.json,
                   edge.png, benchmark.json); see docs/evaluation.md
  world-images     images of the synthetic world with their scene keys, for
                   `fin3r label --teacher oracle` (the oracle re-renders each image's exact depth)

examples:
  fin3r data moge-benchmark --images shots/ --depths shots_depth/ --intrinsics K.txt --metric --out bench/MyScenes
  fin3r eval monodepth --model dust3r_512_dpt --checkpoint D.pth --root bench --benchmarks MyScenes
  fin3r data world-images --out world_imgs --num 256 --height 192 --width 256
  fin3r label --teacher oracle --images world_imgs --out world_labels"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_task", metavar="TASK", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("moge-benchmark", formatter_class=fmt, help="images + depth maps -> MoGe-layout benchmark",
                       description="Pairs every image of --images with the depth map of the same stem in --depths "
                                   "(<stem>.npy, <stem>.png, <stem>_depth.npy or <stem>_depth.png; planar depth, "
                                   "0/NaN = unknown) and writes a MoGe-layout benchmark folder. Images without a "
                                   "usable depth map are skipped and listed.")
    p.add_argument("--images", required=True, help="folder of images (.jpg, .png)")
    p.add_argument("--depths", required=True, help="folder of depth maps (.npy float, or 16-bit .png)")
    p.add_argument("--out", required=True, help="the benchmark folder to write (its name is the benchmark's)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--metric", action="store_true", help="depths are in metres (depth_unit 1)")
    kind.add_argument("--relative", action="store_true", help="depths are known up to scale (depth_unit null)")
    cam = p.add_mutually_exclusive_group(required=True)
    cam.add_argument("--intrinsics", help="pixel intrinsics: .txt (3x3, every image) or .json ({'K': 3x3} or "
                                          "{stem: 3x3})")
    cam.add_argument("--fov-x", type=float, help="horizontal field of view in degrees, every image")
    p.add_argument("--depth-scale", type=float, default=None,
                   help="metres (or units) per stored value (16-bit PNG: required unless the PNG has a depth_scale "
                        "chunk; .npy: default 1)")
    p.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None,
                   help="evaluation size (default: the first image's)")
    p.add_argument("--no-edges", action="store_true", help="do not write edge.png (depth-edge pixels)")
    w = sub.add_parser("world-images", formatter_class=fmt, help="synthetic-world images for the oracle teacher",
                       description="Writes world_NNNNNN.png images of the synthetic world (train split by "
                                   "default), each with its scene key in a PNG text chunk.")
    w.add_argument("--out", required=True, help="folder to write")
    w.add_argument("--num", type=int, default=64, help="number of images (default %(default)s)")
    w.add_argument("--height", type=int, default=192)
    w.add_argument("--width", type=int, default=256)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--split", choices=("train", "test"), default="train")


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import InputError

    if args.data_task == "world-images":
        from fin3r.data.world import export_world_images

        if args.num < 1 or args.height < 8 or args.width < 8:
            raise InputError("world-images: --num >= 1, --height and --width >= 8")
        paths = export_world_images(args.out, args.num, args.height, args.width, seed=args.seed, split=args.split)
        print(f"wrote {len(paths)} world images to {args.out}")
        return 0
    from fin3r.eval.custom_benchmark import write_monodepth_benchmark

    if args.depth_scale is not None and not args.depth_scale > 0:
        raise InputError("--depth-scale must be positive")
    report = write_monodepth_benchmark(args.images, args.depths, args.out, metric=args.metric,
                                       intrinsics=args.intrinsics, fov_x_deg=args.fov_x, depth_scale=args.depth_scale,
                                       size=tuple(args.size) if args.size else None, edges=not args.no_edges)
    print(f"wrote {len(report.written)} instances to {report.folder} ({'metric' if args.metric else 'relative'} "
          f"depth); {len(report.skipped)} skipped")
    for name, why in report.skipped[:20]:
        print(f"  skipped {name}: {why}")
    return 0
