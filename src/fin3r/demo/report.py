"""The demo's report: findings as JSON (per-model summaries, paired differences, pose AUCs,
acceptance checks) and as Markdown tables."""

from __future__ import annotations

import math

from fin3r.config import to_dict
from fin3r.eval.paired import paired_auc_difference, paired_difference


METRICS = (  # key, label, better ("lower"/"higher")
    ("abs_rel", "mono AbsRel (scale-inv.)", "lower"),
    ("edge_abs_rel", "edge AbsRel", "lower"),
    ("delta1", "mono delta1", "higher"),
    ("mv_err", "multi-view pointmap err", "lower"),
    ("norm_post", "enc. token norm (after enc_norm)", "-"),
    ("norm_pre", "enc. token norm (before enc_norm)", "-"),
)



def build_report(cfg, card, results, train_info, floor, pool, threads, thread_timings, names) -> dict:
    """The demo's findings as a JSON-able dict: per-model summaries, paired differences against the
    base and against the replay-only control (the teacher-specific part), pose AUCs with paired
    bootstrap standard errors, and the acceptance checks of the demo (docs/demo.md)."""
    keys = [k for k, _, _ in METRICS]
    per = {n: r["per_scene"] for n, r in results.items()}
    report = {
        "what": "fin3r demo: Fin3R on the synthetic world -- base -> teacher distillation into the encoder "
                "(LoRA) + multi-view replay -> the same held-out views before and after",
        "teacher": cfg.teacher,
        "teacher_note": ("ORACLE teacher: the world's exact depth behind an unknown per-image scale (a perfect "
                         "monocular teacher; real runs use MoGe or another model)") if cfg.teacher == "oracle" else "",
        "base": {"file": cfg.base or "fin3r/assets/demo_base.safetensors",
                 "params": card.get("params"), "steps": card.get("steps_done"), "minutes": card.get("minutes"),
                 "supervision": f"depth avg-pooled by {pool} then bilinearly up-sampled"},
        "eval": {"scenes": results["base"]["n_scenes"], "views": results["base"]["n_views"],
                 "edge_pool": pool, "split": "test (held-out scenes)"},
        "floor_blurred_gt": floor,
        "threads": {"used": threads, "measured_s_per_step": {str(k): v for k, v in thread_timings.items()}},
        "config": to_dict(cfg),
        "models": {n: r["summary"] for n, r in results.items()},
        "training": train_info,
        "vs_base": {}, "vs_control": {}, "pose": {},
    }
    for n in names:
        report["vs_base"][n] = {k: paired_difference(per[n][k], per["base"][k]) for k in keys}
        report["pose"][n] = paired_auc_difference(per[n]["pose_err"], per["base"]["pose_err"])
        if n != "replay_only" and "replay_only" in per:
            report["vs_control"][n] = {k: paired_difference(per[n][k], per["replay_only"][k]) for k in keys}
    main = "fin3r" if "fin3r" in names else ("renorm_row_replay" if "renorm_row_replay" in names else None)
    if main is not None:
        vb, vc = report["vs_base"][main], report["vs_control"].get(main, {})
        best_mono = min(vb["abs_rel"]["rel"], vb["edge_abs_rel"]["rel"])
        checks = {
            "target: >= 10% lower mono or edge AbsRel vs base": best_mono <= -0.10,
            "target: multi-view pointmap error <= 5% worse": vb["mv_err"]["rel"] <= 0.05,
            "minimum: edge AbsRel vs base <= -5%": vb["edge_abs_rel"]["rel"] <= -0.05,
        }
        if vc:
            checks["minimum: teacher-specific edge gain (vs control) >= 4 paired SE"] = vc["edge_abs_rel"]["z"] <= -4
        report["acceptance"] = {"variant": main, "checks": checks}
    return report


def _fmt_delta(p: dict, digits: int = 4) -> str:
    if not math.isfinite(p["diff"]):
        return "n/a"
    rel = f", {100 * p['rel']:+.1f}%" if math.isfinite(p["rel"]) else ""
    return f"{p['diff']:+.{digits}f} ± {p['se']:.{digits}f}{rel}"


def report_markdown(report: dict) -> str:
    """``report.md``: the table the CLI prints, then the details."""
    lines = ["# fin3r demo report", ""]
    lines.append(report["what"] + ".")
    if report.get("teacher_note"):
        lines += ["", f"Teacher: **{report['teacher']}** -- {report['teacher_note']}."]
    b, e = report["base"], report["eval"]
    lines += ["", f"Base: `{b['file']}` ({b['params']} parameters, {b['steps']} pretraining steps, "
              f"{b['supervision']}). Evaluation: {e['scenes']} held-out scenes, {e['views']} views "
              f"(mono figures over both views of each scene; standard errors over scenes, paired).", ""]
    lines += summary_table(report)
    fl = report["floor_blurred_gt"]
    lines += ["", f"Floor (the blurred ground truth itself, what a perfect coarse model scores): "
              f"AbsRel {fl['abs_rel']:.4f}, edge AbsRel {fl['edge_abs_rel']:.4f}, delta1 {fl['delta1']:.4f}; "
              f"edge pixels: {100 * fl['edge_fraction']:.0f}%.", ""]
    lines += ["## Relative pose (AUC, paired bootstrap SE of the difference)", "",
              "| model | AUC@5 | AUC@10 | AUC@20 |", "|---|---|---|---|"]
    m0 = report["models"]["base"]
    lines.append(f"| base | {m0['auc5']:.3f} | {m0['auc10']:.3f} | {m0['auc20']:.3f} |")
    for n, p in report["pose"].items():
        cells = [f"{p[k]['after']:.3f} ({p[k]['diff']:+.3f} ± {p[k]['se']:.3f})" for k in ("auc5", "auc10", "auc20")]
        lines.append(f"| {report['training'][n]['label']} | " + " | ".join(cells) + " |")
    if report["vs_control"]:
        lines += ["", "## Teacher-specific effect (paired difference vs the replay-only control)", "",
                  "| model | " + " | ".join(lbl for _, lbl, _ in METRICS[:4]) + " |",
                  "|---|" + "---|" * 4]
        for n, d in report["vs_control"].items():
            lines.append(f"| {report['training'][n]['label']} | "
                         + " | ".join(_fmt_delta(d[k]) + f" (z {d[k]['z']:+.1f})" for k, _, _ in METRICS[:4]) + " |")
    if "acceptance" in report:
        lines += ["", f"## Checks for `{report['acceptance']['variant']}`", ""]
        lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in report["acceptance"]["checks"].items()]
    lines += ["", "## Training runs", "", "| variant | steps | trainable params | seconds |", "|---|---|---|---|"]
    for n, t in report["training"].items():
        lines.append(f"| {t['label']} | {t['steps']} | {t['trainable_params']} | {t['seconds']:.0f} |")
    th = report["threads"]
    lines += ["", f"Threads: {th['used']} (measured seconds per training step: {th['measured_s_per_step'] or 'not measured'}). "
              f"Wall time: {report.get('total_s', 0):.0f} s ({report.get('timings_s', {})}).", "",
              "![figure](figure.png)", "",
              "Before/after viewer of the held-out pairs (point clouds, cameras, depth): `view.html` "
              "(`fin3r view <this folder>`).", ""]
    return "\n".join(lines)


def summary_table(report: dict) -> list[str]:
    """The main table: every model's figures, and its paired difference vs the base."""
    head = "| model | " + " | ".join(lbl for _, lbl, _ in METRICS) + " | AUC@5/10/20 |"
    lines = [head, "|---|" + "---|" * (len(METRICS) + 1)]
    m0 = report["models"]["base"]
    lines.append("| base | " + " | ".join(f"{m0[k]:.4f}" for k, _, _ in METRICS)
                 + f" | {m0['auc5']:.3f}/{m0['auc10']:.3f}/{m0['auc20']:.3f} |")
    for n, d in report["vs_base"].items():
        m = report["models"][n]
        cells = [f"{m[k]:.4f} ({_fmt_delta(d[k])})" for k, _, _ in METRICS]
        lines.append(f"| {report['training'][n]['label']} | " + " | ".join(cells)
                     + f" | {m['auc5']:.3f}/{m['auc10']:.3f}/{m['auc20']:.3f} |")
    return lines


__all__ = ["METRICS", "build_report", "report_markdown", "summary_table"]
