"""`fin3r eval`: evaluate a model (optionally with an adapter) on the paper's benchmarks."""

from __future__ import annotations

import argparse

from fin3r.commands.arguments import add_model_arguments

HELP = "evaluate a model (optionally with an adapter) on the paper's benchmarks"
DESCRIPTION = """Evaluate a model, with or without a Fin3R adapter, following each benchmark's protocol
(docs/evaluation.md):

  monodepth   MoGe's monocular geometry benchmarks (.index.txt, image.jpg, log-encoded depth.png,
              meta.json): AbsRel / delta1 per alignment variant -- scale-invariant depth (the paper's
              Table 1), affine depth, affine disparity, metric, median scaling, optional point maps;
              per image, per benchmark and the mean over benchmarks
  relpose     two-view relative pose on ScanNet-1500-style pair lists: AUC@5/10/20 (Table 2); solver
              pnp | essential | cameras
  mvdepth     multi-view depth on 7-Scenes / NRGBD / ScanNet layouts: median scaling, AbsRel, inliers<1.03
  pointmap    multi-view point maps: accuracy, completeness, normal consistency after alignment
              (CUT3R's mv_recon, or --protocol pi3: 7-Scenes / NRGBD / DTU / ETH3D, Umeyama + ICP)
  videodepth  video depth on Sintel / Bonn / KITTI in CUT3R's layouts: one scale (or scale + shift) per
              sequence, CUT3R's metrics, sequences weighted by valid pixels; --mono: CUT3R's
              monocular protocol (per frame, median scaling; NYU-v2 too)
  world       export the synthetic world as benchmarks in the same layouts (for runs without data)

Each writes OUT/<task>.json (every figure, per image/pair/view records included), CSV per image,
and a Markdown table; monodepth resumes per benchmark. `fin3r eval --compare A.json B.json ...` prints
the paper-style table (one row per model, each row's difference to the first) in Markdown and LaTeX;
`--detail` adds every figure of two results with its delta.

examples:
  fin3r eval world --out data/world_eval
  fin3r eval monodepth --model dust3r_tiny --random-weights --root data/world_eval --benchmarks world
  fin3r eval monodepth --teacher moge:ckpts/moge-2-vitl/model.pt --root data/eval --out eval/moge2
  fin3r eval monodepth --model dust3r_512_dpt --checkpoint ckpts/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \\
      --adapter runs/dust3r/adapter.safetensors --root data/eval --out eval/dust3r_fin3r
  fin3r eval relpose --model mast3r_tiny --random-weights --root data/world_eval --benchmark world_pairs --solver essential
  fin3r eval pointmap --model vggt_tiny --random-weights --root data/world_eval --benchmark world_scenes
  fin3r eval pointmap --protocol pi3 --model vggt_1b --checkpoint model.pt --root data --benchmark dtu
  fin3r eval videodepth --model cut3r_512_dpt_4_64 --checkpoint cut3r_512_dpt_4_64.pth --root data --device cuda
  fin3r eval --compare eval/dust3r/monodepth.json eval/dust3r_fin3r/monodepth.json"""

TASKS = ("monodepth", "relpose", "mvdepth", "pointmap", "videodepth", "world")


def _model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    add_model_arguments(p, required=model_required, adapter_help="Fin3R adapter applied to the encoder")
    p.add_argument("--root", required=True, help="data root holding the benchmark folders")
    p.add_argument("--out", default=None, help="output folder (default: eval_out/<model>[+<adapter>])")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--input-long-side", type=int, default=None,
                   help="model input long side (VGGT: width); default 512 / 518, or the benchmark's own")
    p.add_argument("--config", default=None, help="YAML with the task's settings (see docs/evaluation.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set variants=[depth_scale_invariant] (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", nargs="+", metavar="RESULT_JSON", default=None,
                        help="print the paper-style table of two or more result JSONs of one task (one row per "
                             "model, benchmarks as columns, each row's difference to the first) and exit")
    parser.add_argument("--format", dest="table_format", default="both", choices=("markdown", "latex", "both"),
                        help="with --compare: table format (default: both)")
    parser.add_argument("--variant", default=None, help="with --compare: the monodepth variant or videodepth "
                        "alignment to tabulate (default: the result's table variant / first alignment)")
    parser.add_argument("--detail", action="store_true", help="with --compare of two results: also every shared "
                        "figure with its delta, one row per (benchmark, metric)")
    parser.add_argument("--keys", default=None, help="with --detail: comma-separated substrings of the metric "
                        "paths to show (e.g. depth_scale_invariant)")
    sub = parser.add_subparsers(dest="eval_task", metavar="TASK")
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("monodepth", help="MoGe monocular benchmarks (Table 1)", formatter_class=fmt,
                       description="Monocular geometry on MoGe's benchmark layout. --teacher scores a monocular "
                                   "teacher (moge:, da3:, hf:, depthpro:, ensemble:) instead of a model, same protocol.")
    _model_args(p, model_required=False)
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="evaluate a teacher instead of --model (moge:<model.pt>, da3:<folder>, hf:<folder>, depthpro:<folder>, "
                        "ensemble:<spec>,<spec>; docs/data.md)")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated names (NYUv2,KITTI,ETH3D,iBims-1,DDAD,DIODE,HAMMER,GSO,Sintel,Spring, "
                        "world); 'paper' = the seven of Table 1 (default)")
    p.add_argument("--variants", default=None, help="comma-separated alignment variants (default: all depth variants)")
    p.add_argument("--points", action="store_true", help="also score point maps (slower)")
    p.add_argument("--full-metrics", action="store_true", help="also delta2/3, delta103, sq_rel, rmse, log_rmse")
    p.add_argument("--fov", action="store_true", help="also MoGe's fov_x from the intrinsics the model predicts "
                   "(VGGT, CUT3R; a second forward)")
    p.add_argument("--max-images", type=int, default=None, help="first N instances of each benchmark only")
    p.add_argument("--no-resume", action="store_true", help="re-evaluate benchmarks already in OUT")

    p = sub.add_parser("relpose", help="ScanNet-1500-style relative pose (Table 2)", formatter_class=fmt,
                       description="Two-view relative pose; AUC of max(rotation, translation-direction) error.")
    _model_args(p)
    p.add_argument("--benchmark", default="scannet1500", help="pair-list folder under ROOT (world: world_pairs)")
    p.add_argument("--solver", default=None, choices=("pnp", "essential", "cameras"),
                   help="pnp (default): PnP-RANSAC on view 1's point map with GT K; essential: E-matrix from "
                        "mutual-NN descriptor (MASt3R) or point matches; cameras: the model's camera head")
    p.add_argument("--format", default=None, choices=("auto", "superglue", "loftr", "roma"), help="pair-list format")
    p.add_argument("--max-pairs", type=int, default=None, help="first N pairs only")

    for task, text in (("mvdepth", "multi-view depth (median scaling, inliers < 1.03)"),
                       ("pointmap", "multi-view point maps (accuracy, completeness, normal consistency)")):
        p = sub.add_parser(task, help=text, formatter_class=fmt, description=text)
        _model_args(p)
        p.add_argument("--benchmark", required=True, help="scene-set folder under ROOT (world: world_scenes)")
        p.add_argument("--layout", default=None, choices=("7scenes", "nrgbd", "scannet"), help="scene layout")
        p.add_argument("--kf-every", type=int, default=None, help="keep every k-th frame")
        p.add_argument("--num-views", type=int, default=None,
                       help="views per forward (default 2 for DUSt3R/MASt3R; more: global alignment)")
        p.add_argument("--align-graph", default=None, help="DUSt3R/MASt3R beyond pairs: pair graph (default complete)")
        p.add_argument("--align-iters", type=int, default=None,
                       help="DUSt3R/MASt3R beyond pairs: global-alignment iterations (default 100)")
        p.add_argument("--max-scenes", type=int, default=None, help="first N scenes only")
        if task == "pointmap":
            p.add_argument("--protocol", default="cut3r", choices=("cut3r", "pi3"),
                           help="cut3r (default): CUT3R's mv_recon on the 7scenes/nrgbd/scannet layouts; pi3: pi3's "
                                "mv_recon (--benchmark 7scenes|nrgbd|dtu|eth3d under ROOT, Umeyama + ICP, normals "
                                "estimated from the clouds)")
            p.add_argument("--seq-id-map", default=None, help="with --protocol pi3: JSON {sequence: [frame ids]}")

    p = sub.add_parser("videodepth", help="video depth on Sintel / Bonn / KITTI (CUT3R's protocol)", formatter_class=fmt,
                       description="Video depth: each sequence through the model's multi-view path, one alignment "
                                   "per sequence (CUT3R / MonST3R / pi3 tables). ROOT is CUT3R's data/ folder.")
    _model_args(p)
    p.add_argument("--datasets", default=None, help="comma-separated: sintel,bonn,kitti (default: all three; "
                   "with --mono also nyu)")
    p.add_argument("--align", default=None, help="comma-separated alignments: scale (default, CUT3R's IRLS), "
                   "scale&shift (Adam LAD), median, metric")
    p.add_argument("--per-frame", action="store_true", help="also report each alignment solved per frame")
    p.add_argument("--mono", action="store_true", help="CUT3R's monocular protocol instead: each frame alone through "
                   "the monocular path, aligned per frame (default --align median; data sets also nyu)")
    p.add_argument("--window", type=int, default=None, help="frames per forward (default: the whole sequence)")
    p.add_argument("--max-sequences", type=int, default=None, help="first N sequences of each data set only")
    p.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence only")

    p = sub.add_parser("world", help="export the synthetic world as benchmarks", formatter_class=fmt,
                       description="Write world/ (MoGe layout), world_pairs/ (SuperGlue pairs) and world_scenes/ "
                                   "(7-Scenes layout) from held-out synthetic scenes.")
    p.add_argument("--out", required=True, help="data root to write")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--num-pairs", type=int, default=16)
    p.add_argument("--num-scenes", type=int, default=3)
    p.add_argument("--views-per-scene", type=int, default=4)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def _load_model(args):
    from pathlib import Path

    from fin3r.models import load

    model = load(args.model, args.checkpoint, adapter=args.adapter, device=args.device, adapter_base=args.adapter_base,
                 random_weights=args.random_weights)
    tag = Path(str(args.model)).stem if Path(str(args.model)).exists() else str(args.model)
    if args.adapter:
        tag += "+" + Path(args.adapter).stem
    return model.eval(), tag


def _config(cls, args, extra: dict):
    from fin3r.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
    from fin3r.errors import Fin3rError

    try:
        cfg = load_config(cls, args.config, list(args.overrides))
        data = to_dict(cfg)
        data.update({k: v for k, v in extra.items() if v is not None})
        return from_dict(cls, apply_overrides(data, []))
    except ConfigError as e:
        raise Fin3rError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    import torch

    with torch.no_grad():  # a context, not a process-wide switch: callers keep their grad mode
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fin3r.errors import Fin3rError

    if args.compare:
        import json

        from fin3r.eval.paper_table import paper_table
        from fin3r.eval.report import compare_results, load_result

        if len(args.compare) < 2:
            raise Fin3rError("--compare needs at least two result JSONs")
        results = []
        for p in args.compare:
            if not Path(p).is_file():
                raise Fin3rError(f"--compare: missing file {p}")
            try:
                res = load_result(p)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise Fin3rError(f"--compare: {p} is not a result JSON") from None
            if not isinstance(res, dict) or not isinstance(res.get("benchmarks"), dict):
                raise Fin3rError(f"--compare: {p} is not a result JSON (no 'benchmarks')")
            if res.get("task") == "monodepth" and not res.get("records"):  # per-image records sit beside it
                res["records"] = {}
                for bench in res["benchmarks"]:
                    side = Path(p).parent / "monodepth" / f"{bench}.json"
                    if side.is_file():
                        try:
                            res["records"][bench] = load_result(side).get("records") or []
                        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                            raise Fin3rError(f"--compare: {side} is not a result JSON") from None
            results.append(res)
        try:
            for fmt in (("markdown", "latex") if args.table_format == "both" else (args.table_format,)):
                print(paper_table(results, fmt, args.variant))
            if args.detail:
                if len(results) != 2:
                    raise ValueError("--detail compares exactly two results")
                keys = args.keys.split(",") if args.keys else None
                print(compare_results(results[0], results[1], keys), end="")
        except ValueError as e:
            raise Fin3rError(str(e)) from None
        return 0
    if args.eval_task is None:
        raise Fin3rError("name a task (" + " | ".join(TASKS) + ") or use --compare; see `fin3r eval --help`")
    if args.eval_task == "world":
        from fin3r.eval.world_benchmarks import export_world_benchmarks
        from fin3r.io import check_output_dir

        check_output_dir(args.out)

        folders = export_world_benchmarks(args.out, args.num_images, args.num_pairs, args.num_scenes,
                                          args.views_per_scene, args.height, args.width, args.seed, progress=True)
        for task, f in folders.items():
            print(f"{task}: {f}")
        return 0

    from fin3r.io import check_output_dir, prepare_output_dir

    if args.out:
        check_output_dir(args.out)
    if getattr(args, "teacher", None):
        if args.model or args.adapter or args.checkpoint:
            raise Fin3rError("--teacher evaluates a teacher: leave out --model/--checkpoint/--adapter")
        from fin3r.teachers import load_teacher
        from fin3r.teachers.evaluation import teacher_predictor

        teacher = load_teacher(args.teacher, device=args.device)
        model, tag = teacher_predictor(teacher), teacher.name
    elif not args.model:
        raise Fin3rError(f"fin3r eval {args.eval_task}: give --model" + (" or --teacher" if args.eval_task == "monodepth" else ""))
    else:
        model, tag = _load_model(args)
    out = prepare_output_dir(Path(args.out or Path("eval_out") / tag.replace("/", "_").replace(":", "_")))
    progress = not args.quiet
    if args.eval_task == "monodepth":
        from fin3r.eval.monodepth import PAPER_BENCHMARKS, MonodepthConfig, evaluate_monodepth
        from fin3r.eval.report import monodepth_table

        benches = None
        if args.benchmarks:
            benches = []
            for b in args.benchmarks.split(","):
                benches += list(PAPER_BENCHMARKS) if b.strip() == "paper" else [b.strip()]
        extra = dict(benchmarks=benches, input_long_side=args.input_long_side,
                     variants=args.variants.split(",") if args.variants else None,
                     points=True if args.points else None, full_metrics=True if args.full_metrics else None,
                     fov=True if args.fov else None,
                     max_images=args.max_images)
        cfg = _config(MonodepthConfig, args, extra)
        res = evaluate_monodepth(model, args.root, cfg.benchmarks, out, cfg, tag, progress, resume=not args.no_resume)
        print(monodepth_table(res, cfg.table_variant), end="")
        print(f"wrote {out / 'monodepth.json'}, {out / 'monodepth.md'}, {out / 'monodepth'}/<benchmark>.csv")
        return 0
    if args.eval_task == "relpose":
        from fin3r.eval.relpose import RelposeConfig, evaluate_relpose, relpose_table

        cfg = _config(RelposeConfig, args, dict(solver=args.solver, format=args.format, max_pairs=args.max_pairs,
                                                input_long_side=args.input_long_side))
        res = evaluate_relpose(model, args.root, args.benchmark, out, cfg, tag, progress)
        print(relpose_table(res), end="")
        print(f"wrote {out / 'relpose.json'}, {out / 'relpose_pairs.csv'}")
        return 0
    if args.eval_task == "videodepth":
        from fin3r.eval.videodepth import VideoDepthConfig, evaluate_videodepth, videodepth_table

        cfg = _config(VideoDepthConfig, args, dict(
            datasets=args.datasets.split(",") if args.datasets else (["sintel", "bonn", "kitti", "nyu"] if args.mono else None),
            alignments=args.align.split(",") if args.align else (["median"] if args.mono else None),
            per_frame=True if args.per_frame else None, mono=True if args.mono else None,
            window=args.window, max_sequences=args.max_sequences, max_frames=args.max_frames,
            input_long_side=args.input_long_side))
        res = evaluate_videodepth(model, args.root, cfg.datasets, out, cfg, tag, progress, device=args.device)
        table = videodepth_table(res)
        from fin3r.io import write_text_atomic

        write_text_atomic(out / "videodepth.md", table)
        print(table, end="")
        print(f"wrote {out / 'videodepth.json'}, {out / 'videodepth.md'}")
        return 0
    if args.eval_task == "pointmap" and args.protocol == "pi3":
        from fin3r.eval.pi3_recon import Pi3ReconConfig, evaluate_pi3_pointmap
        from fin3r.eval.report import summary_table
        from fin3r.io import write_text_atomic

        cfg = _config(Pi3ReconConfig, args, dict(kf_every=args.kf_every, seq_id_map=args.seq_id_map,
                                                 max_sequences=args.max_scenes, input_long_side=args.input_long_side))
        res = evaluate_pi3_pointmap(model, args.root, args.benchmark, out, cfg, tag, progress)
        table = summary_table(res) + "\nProtocol: pi3 mv_recon (Umeyama Sim(3) + ICP).\n"
        write_text_atomic(out / "pointmap.md", table)
        print(table, end="")
        print(f"wrote {out / 'pointmap.json'}")
        return 0
    from fin3r.eval.mvdepth import MultiViewConfig, evaluate_mvdepth
    from fin3r.eval.pointmap import evaluate_pointmap
    from fin3r.eval.report import summary_table

    cfg = _config(MultiViewConfig, args, dict(layout=args.layout, kf_every=args.kf_every, num_views=args.num_views,
                                              max_scenes=args.max_scenes, input_long_side=args.input_long_side,
                                              align_graph=args.align_graph, align_iters=args.align_iters))
    fn = evaluate_mvdepth if args.eval_task == "mvdepth" else evaluate_pointmap
    res = fn(model, args.root, args.benchmark, out, cfg, tag, progress)
    table = summary_table(res)
    (out / f"{args.eval_task}.md").write_text(table)
    print(table, end="")
    print(f"wrote {out / (args.eval_task + '.json')}")
    return 0
