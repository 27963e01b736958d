"""`fin3r infer`: predict depth, confidence and point clouds for images."""

from __future__ import annotations

import argparse

HELP = "predict depth, confidence and point clouds for images"
DESCRIPTION = """Runs a reconstruction model (DUSt3R, MASt3R, CUT3R, VGGT; optionally with a Fin3R LoRA
adapter) on an image or a folder of images and writes, per image:

  <stem>_depth.png        16-bit depth; depth = value * depth_scale (PNG text chunk and
                          predictions.json); 0 = invalid
  <stem>_depth_color.png  inverse depth, turbo colour map
  <stem>_conf.png/.npy    confidence (8-bit log-scaled picture / float32 array)
  <stem>.ply              coloured point cloud in the camera frame (OpenCV axes)
  predictions.json        sizes, crops, depth ranges, PNG scales

Images are resized so their long side is --size (default: the model's training size) and
centre-cropped to multiples of the patch size; outputs have that size. --views predicts all
images as one set (points in the first image's frame; DUSt3R/MASt3R take exactly 2 images) and
adds scene.ply and, for models that predict cameras, cameras.json.

examples:
  fin3r infer photo.jpg --model DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth --out out/
  fin3r infer photos/ --model dust3r_512_dpt --checkpoint dust3r.pth --adapter adapter.safetensors
  fin3r infer pair/ --model mast3r.pth --views --conf-threshold 1.5"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("--model", required=True,
                        help="registry name (e.g. dust3r_512_dpt), official .pth, Hugging Face folder or fin3r "
                             ".safetensors file")
    parser.add_argument("--checkpoint", default=None, help="weights for a registry-name --model (any format)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter to apply (.safetensors from `fin3r train`, or a released "
                             "Fin3R *_lora.pth)")
    parser.add_argument("--adapter-base", default=None,
                        help="the checkpoint a released adapter of another model was trained on (a VGGT adapter on "
                             "π3: VGGT-1B); the two encoders are compared tensor by tensor, a difference is refused")
    parser.add_argument("--out", default="infer_out", help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=None, help="long side in pixels (default: the model's)")
    parser.add_argument("--views", action="store_true", help="predict all images as one multi-view set")
    parser.add_argument("--conf-threshold", type=float, default=0.0,
                        help="leave points with a lower confidence out of the .ply (default: keep all)")
    parser.add_argument("--npy", action="store_true", help="also write <stem>_depth.npy (float32)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from fin3r.infer import list_images, run_inference
    from fin3r.models import apply_adapter, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = list_images(args.input)
    model = load_model(args.model, checkpoint=args.checkpoint)
    if args.adapter:
        info = apply_adapter(model, args.adapter, adapter_base=args.adapter_base)
        print(f"adapter {args.adapter}: {len(info['targets'])} layers, mode {info['mode']}")
    model = model.to(args.device).eval()
    summary = run_inference(model, inputs, args.out, long_side=args.size, views=args.views,
                            conf_threshold=args.conf_threshold, save_npy=args.npy, device=args.device,
                            progress=not args.no_progress, model_name=str(args.model))
    print(f"wrote {len(summary['images'])} prediction(s) to {args.out}")
    return 0
