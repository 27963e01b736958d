"""Result tables: the paper-style Markdown tables and before/after comparisons with deltas.

Every ``fin3r eval`` task writes a JSON ``{"task", "model", "benchmarks": {name: metrics},
"mean": metrics, ...}`` where ``metrics`` is a nested dict of numbers. Depth / pose figures are
fractions in the JSON and printed ``x 100`` in the tables (as the papers do); reconstruction
distances are printed as they are (metres).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fin3r.io import read_json, write_json_atomic

__all__ = ["monodepth_table", "summary_table", "compare_results", "load_result", "save_result", "PERCENT_KEYS"]

#: leaf metric names printed x 100
PERCENT_KEYS = {"rel", "delta0", "delta1", "delta2", "delta3", "delta103", "rel_edge", "delta1_edge", "sq_rel",
                "auc@5", "auc@10", "auc@20", "absrel", "inliers103"}
#: leaf metrics where higher is better (for the arrows and the sign of improvements)
HIGHER_IS_BETTER = {"delta0", "delta1", "delta2", "delta3", "delta103", "delta1_edge", "auc@5", "auc@10", "auc@20",
                    "inliers103", "nc", "nc_med", "nc1", "nc2"}


def _fmt(x, key: str) -> str:
    if not isinstance(x, (int, float)) or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.2f}" if key in PERCENT_KEYS else f"{x:.4f}"


def _arrow(key: str) -> str:
    return "↑" if key in HIGHER_IS_BETTER else "↓"


def load_result(path: str | Path) -> dict:
    """Read a result JSON written by ``fin3r eval``; :class:`fin3r.errors.InputError` (naming the
    file) for an unreadable file or JSON that is not a result object."""
    from fin3r.errors import InputError

    try:
        result = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a readable result JSON ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("benchmarks", {}), dict) \
            or not isinstance(result.get("mean", {}), dict):
        raise InputError(f"{path}: not a fin3r eval result (expected a JSON object with 'benchmarks' and 'mean', "
                         f"got {type(result).__name__})")
    return result


def save_result(path: str | Path, result: dict) -> None:
    """Write a result dict as the JSON ``load_result`` reads, atomically: strict JSON, a
    non-finite metric written as ``null`` with ``<key>_null_reason`` beside it."""
    write_json_atomic(path, result)


def monodepth_table(result: dict, variant: str = "depth_scale_invariant") -> str:
    """The paper's Table 1 layout: one row, ``Rel / delta1`` (x 100) per benchmark and their mean."""
    names = list(result["benchmarks"])
    head = "| model | " + " | ".join(f"{n} Rel↓ | {n} δ1↑" for n in names) + " | Avg Rel↓ | Avg δ1↑ |"
    sep = "|" + "---|" * (2 * len(names) + 3)
    cells = []
    for n in names:
        m = result["benchmarks"][n].get(variant, {})
        cells += [_fmt(m.get("rel"), "rel"), _fmt(m.get("delta1"), "delta1")]
    mean = result["mean"].get(variant, {})
    cells += [_fmt(mean.get("rel"), "rel"), _fmt(mean.get("delta1"), "delta1")]
    row = f"| {result.get('model') or 'model'} | " + " | ".join(cells) + " |"
    per_image = ("mean over images weighted by valid pixels (CUT3R)" if variant == "depth_median"
                 else "mean over images (MoGe)")
    notes = [f"Variant `{variant}`; Rel and δ1 in %; per benchmark: {per_image}; "
             "Avg = unweighted mean over benchmarks."]
    excl = {k: len(v) for k, v in result.get("excluded", {}).items() if v}
    if excl:
        notes.append("Excluded instances (no valid GT pixel): " + ", ".join(f"{k}: {v}" for k, v in excl.items()) + ".")
    return "\n".join([head, sep, row, "", *notes]) + "\n"


def _leaves(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _skip(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf.endswith("_time_s") or leaf.startswith("num_") or leaf == "valid_pixels"


def summary_table(result: dict) -> str:
    """All figures of a result: one row per (benchmark, metric), benchmarks plus ``mean``."""
    rows = ["| benchmark | metric | value |", "|---|---|---|"]
    for name, metrics in [*result["benchmarks"].items(), ("mean", result.get("mean", {}))]:
        for key, v in _leaves(metrics).items():
            if _skip(key):
                continue
            leaf = key.rsplit(".", 1)[-1]
            rows.append(f"| {name} | {key} {_arrow(leaf)} | {_fmt(v, leaf)} |")
    agg = result.get("aggregation")
    if isinstance(agg, dict):
        agg = "; ".join(f"{k}: {v}" for k, v in agg.items())
    if agg:
        rows += ["", f"Aggregation: {agg}."]
    return "\n".join(rows) + "\n"


def compare_results(base: dict, tuned: dict, keys: list[str] | None = None) -> str:
    """Before/after Markdown table with deltas for every figure the two results share.

    ``keys`` restricts to metric paths containing one of the given substrings (e.g.
    ``["depth_scale_invariant"]``). Delta = tuned - base (in the printed units); "better" says
    whether the change is an improvement for that metric."""
    if base.get("task") != tuned.get("task"):
        raise ValueError(f"cannot compare a {base.get('task')!r} result with a {tuned.get('task')!r} result")
    rows = [
        f"| benchmark | metric | {base.get('model') or 'base'} | {tuned.get('model') or 'tuned'} | Δ | better |",
        "|---|---|---|---|---|---|",
    ]
    names = [n for n in base["benchmarks"] if n in tuned["benchmarks"]] + ["mean"]
    for name in names:
        a = _leaves(base["benchmarks"].get(name, {}) if name != "mean" else base.get("mean", {}))
        b = _leaves(tuned["benchmarks"].get(name, {}) if name != "mean" else tuned.get("mean", {}))
        for key in a:
            if key not in b or _skip(key) or (keys and not any(s in key for s in keys)):
                continue
            leaf = key.rsplit(".", 1)[-1]
            x, y = a[key], b[key]
            scale = 100.0 if leaf in PERCENT_KEYS else 1.0
            d = (y - x) * scale
            better = "" if d == 0 or math.isnan(d) else ("yes" if (d > 0) == (leaf in HIGHER_IS_BETTER) else "no")
            dtxt = f"{d:+.2f}" if scale == 100.0 else f"{d:+.4f}"
            rows.append(f"| {name} | {key} {_arrow(leaf)} | {_fmt(x, leaf)} | {_fmt(y, leaf)} | {dtxt} | {better} |")
    return "\n".join(rows) + "\n"
