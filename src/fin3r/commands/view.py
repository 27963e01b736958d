"""`fin3r view`: the before/after viewer of a run (base model vs adapted model, same images)."""

from __future__ import annotations

import argparse

HELP = "interactive before/after view (point clouds, cameras, depth) of a base and an adapted model"
DESCRIPTION = """Writes one self-contained HTML page (no server, no internet) showing the point clouds and
cameras the base model and the adapted model predict for the same images, toggled (space bar) or
side by side, with each image's depth maps beside them on one shared colour range; then opens it
in the default browser (--no-open: only write it).

RUN is a `fin3r demo` output folder (its view.html is opened), a training run folder (its
adapter.safetensors is used), an adapter file (fin3r or released *_lora.pth) or a PEFT-layout
adapter folder. The base model is the adapter's base_name unless
--model is given. Without --views each image is its own scene (monocular prediction, camera at the
origin); with --views all images form one multi-view scene (DUSt3R/MASt3R: exactly 2).

examples:
  fin3r view runs/demo
  fin3r view runs/dust3r --images photos/ --checkpoint DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth
  fin3r view runs/vggt/adapter.safetensors --images scene/ --views --conf-percentile 30 --out vggt_view.html"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="demo output folder, training run folder or adapter file")
    parser.add_argument("--images", default=None, help="an image, a folder of images or a video (see fin3r infer)")
    parser.add_argument("--fps", type=float, default=None, help="video input: frames per second to keep")
    parser.add_argument("--model", default=None, help="base model: registry name or model file (default: the "
                                                      "adapter's base_name)")
    parser.add_argument("--checkpoint", default=None, help="weights for a registry-name --model")
    parser.add_argument("--views", action="store_true", help="predict all images as one multi-view set")
    parser.add_argument("--size", type=int, default=None, help="long side in pixels (default: the model's)")
    parser.add_argument("--conf-threshold", type=float, default=0.0, help="leave less confident points out")
    parser.add_argument("--conf-percentile", type=float, default=0.0,
                        help="also leave out the least confident P %% of the pixels")
    parser.add_argument("--out", default=None, help="the page to write (default: RUN/view.html, or view.html)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--no-open", action="store_true", help="write the page, do not open a browser")


def find_adapter(run):
    """The adapter of ``run``: the file itself, or ``adapter.safetensors`` in a run folder."""
    from pathlib import Path

    from fin3r.errors import InputError

    run = Path(run)
    if run.is_file() or (run / "adapter_config.json").is_file():  # a file, or a PEFT-layout folder
        return run
    for name in ("adapter.safetensors", "fin3r/adapter.safetensors"):
        if (run / name).is_file():
            return run / name
    raise InputError(f"{run}: no adapter.safetensors in this folder (pass the adapter file)")


def run(args: argparse.Namespace) -> int:
    import webbrowser
    from pathlib import Path

    from fin3r.errors import InputError

    run_path = Path(args.run)
    if not run_path.exists():
        raise InputError(f"{run_path}: no such file or folder")
    if args.images is None:
        page = run_path / "view.html" if run_path.is_dir() else None
        if page is None or not page.is_file():
            raise InputError(f"{run_path}: no view.html here; pass --images to predict one")
    else:
        from fin3r.export import load_base_for_adapter
        from fin3r.infer import default_long_side, list_inputs, prepare_image, prepare_image_set
        from fin3r.models import apply_adapter
        from fin3r.outputs.before_after import write_before_after

        adapter = find_adapter(run_path)
        model = load_base_for_adapter(adapter, args.model, args.checkpoint).to(args.device).eval()
        inputs = list_inputs(args.images, args.fps)
        long_side = args.size or default_long_side(model)
        images = (prepare_image_set(inputs, long_side, model.patch_size) if args.views
                  else [prepare_image(p, long_side, model.patch_size) for p in inputs])
        page = Path(args.out) if args.out else (run_path / "view.html" if run_path.is_dir() else Path("view.html"))

        def adapt():
            apply_adapter(model, adapter)
            model.to(args.device).eval()

        base_name = args.model or getattr(model, "name", "") or "the adapter's base model"
        write_before_after(page, model, adapt, images, args.views, note=f"base: {base_name}; adapted: {adapter}",
                           conf_threshold=args.conf_threshold,
                           conf_percentile=args.conf_percentile, device=args.device)
    print(f"viewer: {page}")
    if not args.no_open:
        webbrowser.open(page.resolve().as_uri())
    return 0
