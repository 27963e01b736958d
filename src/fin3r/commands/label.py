"""`fin3r label`: run a monocular teacher once per image and cache its depth labels."""

from __future__ import annotations

import argparse

HELP = "run a monocular teacher once per image and cache its depth labels"
DESCRIPTION = """Pseudo-label cache: runs a teacher once per image of folders and/or tar shards (SA-1B's
sa_*.tar; a folder is searched for images and for .tar shards, so SA-1B as downloaded -- a folder
of shards -- is given as that folder) and stores, per image key <source>/<name>:

  <key>.depth.png   16-bit log-encoded depth (MoGe's convention; --format npy: float16 .npy)
  <key>.mask.png    where the teacher's label is defined
  <key>.json        teacher name/version, depth_kind, resolution, encoding range, image path
  <key>.normal.png  (optional) the teacher's normals (MoGe-2 -normal checkpoints), 16-bit RGB
  <key>.conf.png    (optional) the label's confidence (ensemble teachers), 16-bit

Teachers: moge:<model.pt> (MoGe-1: depth up to scale; MoGe-2: metric, plus normals for -normal
checkpoints), hf:<folder> (a local transformers depth model; relative Depth Anything / DPT outputs
are stored as disparity with depth_kind affine_disparity), da3:<folder> (Depth Anything 3: mono
affine depth, metric with #focal=<px>), depthpro:<folder> (Depth Pro, metric),
ensemble:<spec>,<spec>,... (median of aligned members + agreement confidence, <key>.conf.png),
oracle[:noise=..,blur=..,pool=..] (ground truth of images exported from fin3r's synthetic world --
NOT a model; the label says so).

Sharded: --shard i/n takes every n-th image starting at i (run n of these on n machines or GPUs
into the same --out); under torchrun each rank takes shard RANK/WORLD_SIZE on cuda:LOCAL_RANK
(torchrun --nproc_per_node 8 -m fin3r.cli label ... --device cuda). Batched: --batch-size groups
same-size images; --precision fp16|bf16 runs the teacher in half precision on GPU. Resumable: images with a finished label are skipped; every file is written
atomically (sidecar last). Corrupt, truncated or unreadable images are skipped and listed at the
end and in <out>/label_report_<i>of<n>.json; --strict stops at the first one instead.
Exit status: 0 when the shard has labels (some bad images allowed), 1 when every image of the
shard failed, 2 when no image was found (or another one-line error).

examples:
  fin3r label --teacher moge:checkpoints/moge-vitl/model.pt --images /data/sa1b --out labels/   # folder of sa_*.tar
  fin3r label --teacher moge:checkpoints/moge-vitl/model.pt --images sa1b/sa_000000.tar --out labels/
  fin3r label --teacher hf:models/depth-anything-v2-small --images photos/ --out labels/ --shard 0/4
  fin3r label --teacher oracle --images world_images/ --out labels/
  torchrun --nproc_per_node 8 -m fin3r.cli label --teacher moge:ckpts/moge-2-vitl-normal/model.pt \\
      --images sa1b/ --out labels/ --device cuda --batch-size 8 --precision bf16"""


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def _shard_and_device(shard: tuple[int, int] | None, device: str) -> tuple[int, int, str]:
    """``(i, n, device)``: ``--shard`` if given, else torchrun's ``RANK``/``WORLD_SIZE`` (each rank
    labels its own images, no process group, no shared state), else 0/1; a bare ``cuda`` device
    becomes ``cuda:LOCAL_RANK`` under torchrun."""
    import os

    from fin3r.errors import InputError

    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if shard is None and env_rank is not None and env_world is not None:
        try:
            shard = _shard(f"{int(env_rank)}/{int(env_world)}")
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise InputError(f"RANK={env_rank!r} WORLD_SIZE={env_world!r}: {e}") from None
        if device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    i, n = shard or (0, 1)
    return i, n, device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fin3r.commands.arguments import device_name, nonneg_int, positive_int

    parser.add_argument("--teacher", required=True,
                        help="moge:<model.pt>[#opts] | da3:<folder>[#opts] | hf:<folder>[#kind=..,size=HxW] | depthpro:<folder> | "
                             "ensemble:<spec>,<spec>,... | oracle[:opts] (docs/data.md)")
    parser.add_argument("--images", required=True, nargs="+", metavar="DIR|TAR",
                        help="image folders (searched recursively for images and .tar shards), .tar shards or "
                             "image files")
    parser.add_argument("--out", required=True, help="the label cache folder")
    parser.add_argument("--shard", type=_shard, default=None, metavar="i/n",
                        help="label only shard i of n (default 0/1; under torchrun: RANK/WORLD_SIZE)")
    parser.add_argument("--format", choices=("png", "npy"), default="png",
                        help="png: 16-bit log-encoded (default, ~1e-4 relative precision); npy: float16")
    parser.add_argument("--max-size", type=nonneg_int, default=1024,
                        help="images are shrunk so their long side is at most this before labelling; labels are "
                             "stored at that working resolution (default 1024; 0 = never resize; else >= --min-size)")
    parser.add_argument("--min-size", type=positive_int, default=MIN_IMAGE_SIDE,
                        help="images whose short side is below this many pixels are skipped and reported "
                             "(default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="images per teacher call; images are grouped by size (up to 8 sizes pending at once)")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="torch device of the teacher (cpu, cuda, cuda:1, mps; must exist on this machine; under "
                             "torchrun 'cuda' = cuda:LOCAL_RANK)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                        help="teacher inference precision (default: the teacher's own; MoGe: fp16 on CUDA, else fp32); "
                             "labels are stored the same way whatever it is")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad image, member or shard instead of skipping it")


#: the default --min-size: smaller images are skipped (a 1x1 picture carries no geometry to distil)
MIN_IMAGE_SIDE = 16


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from fin3r.commands.arguments import check_device
    from fin3r.data.label_job import LabelJob
    from fin3r.data.labels import label_done
    from fin3r.data.sa1b import IMAGE_EXTENSIONS, ImageReader, scan_images
    from fin3r.errors import InputError
    from fin3r.io import check_output_dir, sweep_temp_files, write_json_atomic
    from fin3r.teachers import load_teacher

    i, n, device = _shard_and_device(args.shard, args.device)
    if args.max_size and args.max_size < args.min_size:
        raise InputError(f"--max-size {args.max_size}: must be 0 (never resize) or >= --min-size {args.min_size}")
    out = check_output_dir(args.out)
    check_device(device, "--device")
    swept = sweep_temp_files(out)
    refs, left_out = scan_images(args.images)
    if left_out and args.strict:
        raise InputError(f"bad input (--strict): {left_out[0]['image']}: {left_out[0]['error']}")
    if not refs and not left_out:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}, also inside .tar shards) in "
                         f"{' '.join(map(str, args.images))}")
    refs = refs[i::n]
    left_out = [dict(entry, kind="listing") for entry in left_out[i::n]]  # each shard reports its share
    teacher = load_teacher(args.teacher, device=device)
    if args.precision:
        teacher.set_precision(args.precision)
    todo = [r for r in refs if not label_done(out, r.key)]
    done_before = len(refs) - len(todo)
    job = LabelJob(teacher, out, fmt=args.format, max_size=args.max_size, min_size=args.min_size,
                   batch_size=args.batch_size, strict=args.strict, shard=f"{i}/{n}")
    t0 = time.time()
    print(f"fin3r label: teacher {teacher.name} ({teacher.depth_kind}), shard {i}/{n}: {len(refs)} images, "
          f"{done_before} already labelled, {len(todo)} to do -> {out}"
          + (f" ({len(swept)} abandoned temp files removed)" if swept else ""), file=sys.stderr)
    reader = ImageReader()
    try:
        for ref in tqdm(todo, desc=f"label {i}/{n}", unit="img", dynamic_ncols=True):
            job.add(reader, ref)
        job.flush()
    finally:
        reader.close()
    bad = left_out + job.bad
    report = {"teacher": teacher.metadata(), "shard": f"{i}/{n}", "images": len(refs), "labelled": job.labelled,
              "already_labelled": done_before, "bad": bad, "skipped_counts": job.counts(left_out),
              "temp_files_removed": len(swept), "seconds": round(time.time() - t0, 1)}
    report_path = out / f"label_report_{i}of{n}.json"
    write_json_atomic(report_path, report, default=str)
    print(f"fin3r label: {job.labelled} labelled, {done_before} skipped (already labelled), {len(bad)} bad "
          f"in {report['seconds']} s", file=sys.stderr)
    for b in bad[:20]:
        print(f"  bad: {b['image']}: {b['error']}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (see {report_path})", file=sys.stderr)
    if todo and job.labelled + done_before == 0:  # every image of this shard failed
        print(f"fin3r label: error: none of the {len(todo)} images could be labelled", file=sys.stderr)
        return 1
    return 0
