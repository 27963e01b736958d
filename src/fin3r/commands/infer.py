"""`fin3r infer`: predict depth, confidence and point clouds for images."""

from __future__ import annotations

import argparse

from fin3r.commands.arguments import add_model_arguments

HELP = "predict depth, confidence and point clouds for images"
DESCRIPTION = """Runs a reconstruction model (DUSt3R, MASt3R, CUT3R, VGGT; optionally with a Fin3R LoRA
adapter) on an image or a folder of images and writes, per image:

  <stem>_depth.png        16-bit depth; depth = value * depth_scale (PNG text chunk and
                          predictions.json); 0 = invalid
  <stem>_depth_color.png  inverse depth, turbo colour map
  <stem>_conf.png/.npy    confidence (8-bit log-scaled picture / float32 array)
  <stem>.ply              coloured point cloud in the camera frame (OpenCV axes)
  predictions.json        sizes, crops, depth ranges, PNG scales

Images are read upright (EXIF orientation applied, as in labelling and training), resized so their
long side is --size (default: the model's training size) and centre-cropped to multiples of the
patch size; outputs have that size and predictions.json records each image's resize and crop. A
video is sampled at --fps frames per second (OpenCV; frames named <video>_f<index>.png). --views predicts all
images as one set (points in the first image's frame; DUSt3R/MASt3R take any number of views
through the global alignment: the model runs on the pairs of --graph, then the point-cloud
optimiser (--align-iters) recovers per-view depth, poses and focal lengths; a pair gets cameras
without optimisation; docs/alignment.md) and adds:

  scene.ply / scene.glb   the fused, confidence-filtered coloured cloud (the .glb also draws
                          every known camera as a frustum; glTF axes: x, -y, -z of OpenCV)
  cameras.json            models that predict cameras: cam2world and K per view
  colmap/                 every view has a camera: images/ + sparse/0/{cameras,images,points3D}
                          .bin and .txt (COLMAP conventions; opens in COLMAP, trains gsplat)

Frames, units and every file: docs/outputs.md.

examples:
  fin3r infer photo.jpg --model DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth --out out/
  fin3r infer photos/ --model dust3r_512_dpt --checkpoint dust3r.pth --adapter adapter.safetensors
  fin3r infer pair/ --model mast3r.pth --views --conf-threshold 1.5
  fin3r infer walk.mp4 --fps 2 --max-frames 24 --model vggt_1b --checkpoint vggt.pt --views --out walk/
  fin3r infer scene/ --model DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth --views --graph swin-4 --align-iters 300"""


#: global-alignment iterations of `fin3r infer --views` (the spanning-tree start is close already)
DEFAULT_ALIGN_ITERS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fin3r.commands.arguments import device_name, nonneg_float, positive_float, positive_int, percentage

    parser.add_argument("input", help="an image file, a folder of images (any sizes) or a video file")
    parser.add_argument("--fps", type=positive_float, default=None,
                        help="video input: keep this many frames per second (default: every frame)")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="video input: at most this many frames")
    add_model_arguments(parser)
    parser.add_argument("--out", default="infer_out", help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=positive_int, default=None, help="long side in pixels (default: the model's)")
    parser.add_argument("--views", action="store_true", help="predict all images as one multi-view set")
    parser.add_argument("--preprocess", default="default", choices=("default", "crop", "pad", "square"),
                        help="default: long side --size, sides cropped to patch multiples; crop / pad: VGGT's modes "
                             "(width --size, height cropped to it / long side --size, padded white to a square); "
                             "square: DUSt3R's 224 mode (short side --size, centre square)")
    parser.add_argument("--graph", default="complete",
                        help="DUSt3R/MASt3R --views: pair graph complete | swin-K | logwin-K | oneref-R "
                             "(-noncyclic variants) (default: %(default)s)")
    parser.add_argument("--align-iters", type=positive_int, default=DEFAULT_ALIGN_ITERS,
                        help="DUSt3R/MASt3R --views: global-alignment iterations (default: %(default)s; the "
                             "official demo: 300)")
    parser.add_argument("--conf-threshold", type=nonneg_float, default=0.0,
                        help="leave points with a lower confidence out of the point clouds (default: keep all)")
    parser.add_argument("--conf-percentile", type=percentage, default=0.0,
                        help="also leave out the least confident P %% of the pixels (0-100; default: 0)")
    parser.add_argument("--colmap-points", type=positive_int, default=100_000,
                        help="at most this many points in the COLMAP model (default: %(default)s)")
    parser.add_argument("--camera-model", default="auto", choices=["auto", "SIMPLE_PINHOLE", "PINHOLE"],
                        help="COLMAP camera model (auto: SIMPLE_PINHOLE when fx == fy, else PINHOLE)")
    parser.add_argument("--npy", action="store_true", help="also write <stem>_depth.npy (float32)")
    parser.add_argument("--view", action="store_true",
                        help="also write OUT/view.html: the base model against --adapter on these images "
                             "(see fin3r view)")
    parser.add_argument("--device", type=device_name, default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="run a base whose weights hold NaN/inf with a warning instead of refusing it")


def run(args: argparse.Namespace) -> int:
    import torch

    from fin3r.align import AlignConfig, OptimizerConfig
    from fin3r.commands.arguments import check_device
    from fin3r.errors import InputError
    from fin3r.infer import list_inputs, run_inference
    from fin3r.io import prepare_output_dir
    from fin3r.models import apply_adapter, load_model

    prepare_output_dir(args.out)
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.view and not args.adapter:
        raise InputError("--view compares the base model with an adapter: pass --adapter")
    inputs = list_inputs(args.input, args.fps, args.max_frames)
    model = load_model(args.model, checkpoint=args.checkpoint, random_weights=args.random_weights,
                       nonfinite="warn" if args.allow_nonfinite else "error")
    model = model.to(args.device).eval()
    align = AlignConfig(graph=args.graph, optimizer=OptimizerConfig(niter=args.align_iters))
    if args.adapter:
        def adapt():
            info = apply_adapter(model, args.adapter, adapter_base=args.adapter_base)
            model.to(args.device).eval()
            print(f"adapter {args.adapter}: {len(info['targets'])} layers, mode {info['mode']}")

        if args.view:  # the base predictions first, then the adapter goes in
            from pathlib import Path

            from fin3r.infer import default_long_side, prepare_image, prepare_image_set
            from fin3r.outputs.before_after import write_before_after

            long_side = args.size or default_long_side(model)
            images = (prepare_image_set(inputs, long_side, model.patch_size) if args.views
                      else [prepare_image(p, long_side, model.patch_size) for p in inputs])
            page = write_before_after(Path(args.out) / "view.html", model, adapt, images, args.views,
                                      note=f"base: {args.model}; adapted: {args.adapter}",
                                      conf_threshold=args.conf_threshold, conf_percentile=args.conf_percentile,
                                      device=args.device)
            print(f"viewer: {page}")
        else:
            adapt()
    summary = run_inference(model, inputs, args.out, long_side=args.size, views=args.views,
                            conf_threshold=args.conf_threshold, conf_percentile=args.conf_percentile,
                            save_npy=args.npy, device=args.device, progress=not args.no_progress,
                            model_name=str(args.model), colmap_points=args.colmap_points,
                            camera_model=args.camera_model, align=align,
                            preprocess=args.preprocess)
    print(f"wrote {len(summary['images'])} prediction(s) to {args.out}")
    if isinstance(summary.get("colmap"), dict):
        print(f"COLMAP model: {summary['colmap']['folder']} ({summary['colmap']['points']} points)")
    return 0
