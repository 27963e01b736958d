"""Data pipeline speed: label cache vs teacher on the fly, and the synthetic world's render time.

Prints, measured side by side in one run (one torch thread):

1. samples/s of the mixture loader reading teacher labels from the cache (``LabelledImages``:
   image decode + label decode + crop/resize) vs computing the same teacher on the fly for every
   batch (image decode + crop/resize + teacher forward), and their ratio (target: cache >= 3x);
   the teacher is a randomly initialised transformers Depth Anything model (``--teacher-arch``:
   ``vits`` = the Depth Anything V2 Small architecture, 25M parameters, or ``tiny``), or a small
   conv net standing in when transformers is absent (said in the output);
2. the world's render time per view at 256x192 (with and without shadows): wall and CPU time.

    python benchmarks/data.py [--images 24] [--batch-size 4] [--teacher-arch vits|tiny]

With ``--teachers`` it measures labelling throughput instead: images/s of ``fin3r label`` (teacher
forward + label write, the labelling loop's own clock) for every teacher kind fin3r supports, on
tiny random configurations in each teacher's real format (``fin3r.teachers.tiny``; MoGe needs
scripts/install_teachers.sh, the others transformers), at batch 1 and ``--batch-size``, or for the
teachers given with ``--spec`` (a real checkpoint on a GPU: see the command it prints)::

    python benchmarks/data.py --teachers [--images 16] [--batch-size 4]
    python benchmarks/data.py --teachers --spec moge:/ckpts/moge-2-vitl-normal/model.pt \\
        --device cuda --precision fp16 --batch-size 8 --images 256 --size 768
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_hf_teacher(folder: Path, arch: str) -> str:
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    if arch == "vits":  # Depth Anything V2 Small's shapes
        backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                                patch_size=14, image_size=518, out_features=["stage3", "stage6", "stage9", "stage12"],
                                reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                     neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
    else:
        backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                                reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                     neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, head_hidden_size=8)
    AutoModelForDepthEstimation.from_config(config).save_pretrained(folder)
    # the network input: the short side at 196 px (multiple of 14), as a small-resolution teacher
    DPTImageProcessor(size={"height": 196, "width": 196}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(folder)
    return f"hf:{folder}"


class ConvTeacher:
    """Stand-in teacher when transformers is missing: a 6-layer conv net (random weights)."""

    name, version, depth_kind, needs_ground_truth = "conv-standin", "1", "scale", False

    def __init__(self):
        torch.manual_seed(0)
        layers = []
        c = 3
        for width in (32, 64, 64, 64, 32):
            layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.ReLU()]
            c = width
        self.net = torch.nn.Sequential(*layers, torch.nn.Conv2d(c, 1, 3, padding=1)).eval()

    def metadata(self):
        return {"teacher": self.name, "teacher_version": "1", "depth_kind": "scale", "is_oracle": False}

    @torch.inference_mode()
    def predict(self, img, **_):
        from fin3r.teachers.base import TeacherOutput

        d = torch.nn.functional.softplus(self.net(img)[:, 0]) + 0.1
        return TeacherOutput(d, torch.ones_like(d, dtype=torch.bool), "scale")


def loader_rate(dataset, sampler, step, warmup: int = 1) -> float:
    from fin3r.data.mixture import MixtureDataset

    loader = torch.utils.data.DataLoader(MixtureDataset({"sa1b": dataset}), batch_sampler=sampler,
                                         collate_fn=lambda b: b, num_workers=0)
    it = iter(loader)
    for _ in range(warmup):  # first batches: lazy imports, opened files
        step(next(it))
    n, t0 = 0, time.perf_counter()
    for batch in it:  # the timed span covers reading, decoding, resizing and `step`
        step(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def tiny_teacher_specs(folder: Path) -> list[tuple[str, str]]:
    """``(description, spec)`` of a tiny random teacher of every supported kind that can be built here."""
    from fin3r.teachers import tiny

    specs = []
    if importlib.util.find_spec("moge") is not None:
        for version in (1, 2):
            tiny.save_tiny_moge(folder / f"moge{version}" / "model.pt", version)
            specs.append((f"MoGe-{version} (dlr-moge classes, tiny DINOv2)", f"moge:{folder / f'moge{version}' / 'model.pt'}"))
    if importlib.util.find_spec("depth_anything_3") is not None:
        tiny.save_tiny_da3(folder / "da3", "mono")
        specs.append(("Depth Anything 3 mono (depth-anything-3 classes, tiny ViT)", f"da3:{folder / 'da3'}"))
    if importlib.util.find_spec("transformers") is not None:
        tiny.save_tiny_depth_anything(folder / "da")
        specs.append(("Depth Anything (transformers, relative)", f"hf:{folder / 'da'}"))
        tiny.save_tiny_depth_pro(folder / "dp")
        specs.append(("Depth Pro (transformers, FoV head)", f"depthpro:{folder / 'dp'}"))
    if len(specs) >= 2 and specs[0][1].startswith("moge:"):
        specs.append(("ensemble of the two MoGe", f"ensemble:{specs[0][1]},{specs[1][1]}"))
    return specs


def teacher_throughput(args) -> None:
    """Images/s of ``fin3r label`` per teacher at batch 1 and ``--batch-size`` (see the module docstring)."""
    import json

    from fin3r.cli import main as fin3r_main
    from fin3r.data.world import export_world_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        side = args.size
        export_world_images(tmp / "images", args.images, side * 3 // 4, side, seed=0)
        specs = [(s, s) for s in args.spec] if args.spec else tiny_teacher_specs(tmp / "teachers")
        if not specs:
            print("no teacher can be built here: install transformers and/or MoGe (scripts/install_teachers.sh)")
            return
        print(f"labelling throughput: {args.images} world images {side}x{side * 3 // 4} (PNG), device {args.device}, "
              f"precision {args.precision or 'teacher default'}, {torch.get_num_threads()} thread(s)")
        print("| teacher | batch | images/s |\n|---|---|---|")
        for desc, spec in specs:
            for batch in sorted({1, args.batch_size}):
                out = tmp / f"labels_{abs(hash((spec, batch)))}"
                cmd = ["label", "--teacher", spec, "--images", str(tmp / "images"), "--out", str(out),
                       "--batch-size", str(batch), "--device", args.device, "--max-size", str(side)]
                if args.precision:
                    cmd += ["--precision", args.precision]
                if fin3r_main(cmd) != 0:
                    print(f"| {desc} | {batch} | failed |")
                    continue
                report = json.loads((out / "label_report_0of1.json").read_text())
                rate = report["labelled"] / max(report["seconds"], 1e-9)
                print(f"| {desc} | {batch} | {rate:.1f} |")
    if not args.spec:
        print("\non a GPU with a real checkpoint (weights from the teacher's own release, never downloaded by fin3r):\n"
              "  python benchmarks/data.py --teachers --spec moge:/ckpts/moge-2-vitl-normal/model.pt --device cuda "
              "--precision fp16 --batch-size 8 --images 256 --size 768")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", action="store_true", help="measure labelling throughput per teacher instead")
    parser.add_argument("--spec", action="append", default=[], help="with --teachers: teacher spec(s) to measure")
    parser.add_argument("--device", default="cpu", help="with --teachers: the teacher's device")
    parser.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16"), help="with --teachers")
    parser.add_argument("--size", type=int, default=256, help="with --teachers: image width (height 3/4 of it)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--teacher-arch", choices=("vits", "tiny"), default="vits")
    parser.add_argument("--render-views", type=int, default=40)
    args = parser.parse_args()
    if args.teachers:
        if args.device == "cpu":
            torch.set_num_threads(1)
        teacher_throughput(args)
        return
    torch.set_num_threads(1)

    from fin3r.data.labels import LabelledImages
    from fin3r.data.mixture import MixtureSampler
    from fin3r.data.sa1b import SA1BImages
    from fin3r.data.views import crop_resize_view, make_view
    from fin3r.data.world import export_world_images, intrinsics_from_fov, make_scene, render_view, sample_trajectory

    H, W = args.height, args.width
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        export_world_images(images, args.images, 384, 512, seed=0)  # larger than the training size

        if importlib.util.find_spec("transformers") is not None:
            from fin3r.teachers import load_teacher

            teacher = load_teacher(make_hf_teacher(tmp / "teacher", args.teacher_arch))
            teacher_desc = f"random-weight Depth Anything ({args.teacher_arch}) via transformers, input short side 196"
        else:
            teacher = ConvTeacher()
            teacher_desc = "a 6-layer conv net standing in (transformers not installed)"

        # label once (the cache), timed
        from fin3r.data.labels import write_label

        src = SA1BImages([images])
        t0 = time.perf_counter()
        for i in range(len(src)):
            s = src[i]
            out = teacher.predict(s["img"][None])
            write_label(tmp / "labels", s["key"], out.depth[0], out.mask[0], teacher.metadata())
        label_rate = len(src) / (time.perf_counter() - t0)

        cached = LabelledImages(images, tmp / "labels", H, W)
        sampler = MixtureSampler({"sa1b": len(cached)}, {"sa1b": args.images}, args.batch_size, seed=0)
        rate_cache = loader_rate(cached, sampler, lambda batch: torch.stack([b["depth"] for b in batch]))

        class OnTheFly(torch.utils.data.Dataset):
            def __len__(self):
                return len(src)

            def __getitem__(self, i):
                s = src[i]
                view = make_view(s["img"], torch.ones(s["img"].shape[-2:]), torch.eye(3), source="sa1b")
                return crop_resize_view(view, H, W)

        def run_teacher(batch):
            return teacher.predict(torch.stack([b["img"] for b in batch])).depth

        rate_fly = loader_rate(OnTheFly(), sampler, run_teacher)

    print(f"teacher: {teacher_desc}")
    print(f"images: {args.images} world renders 512x384 (PNG), batches of {args.batch_size} at {W}x{H}, 1 thread")
    print(f"labelling (teacher + write, 1 image per call): {label_rate:8.2f} images/s")
    print(f"loader from the label cache:                   {rate_cache:8.2f} samples/s")
    print(f"loader with the teacher on the fly:            {rate_fly:8.2f} samples/s")
    print(f"ratio cache / on the fly:                      {rate_cache / rate_fly:8.1f}x  (target >= 3x)")

    K = intrinsics_from_fov(256, 192)
    for shadows in (True, False):
        walls, cpus = [], []
        for k in range(args.render_views):
            scene = make_scene(1000 + k)
            cam = sample_trajectory(scene, 1, seed=k)[0]
            render_view(scene, cam, K, 192, 256, shadows)  # scene tensors cached, as in a data set
            t0, c0 = time.perf_counter(), time.process_time()
            render_view(scene, cam, K, 192, 256, shadows)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        print(f"world render 256x192, shadows={shadows!s:5}: wall median {1e3 * statistics.median(walls):6.1f} ms "
              f"(mean {1e3 * statistics.mean(walls):6.1f}, max {1e3 * max(walls):6.1f}); "
              f"CPU median {1e3 * statistics.median(cpus):6.1f} ms per view ({args.render_views} scenes)")


if __name__ == "__main__":
    main()
