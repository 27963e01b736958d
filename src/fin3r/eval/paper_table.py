"""The paper-style results table of several ``fin3r eval`` results (``fin3r eval --compare``).

One row per model (result JSON), benchmarks as column groups (plus the average when the results
carry one), the protocol and the aggregation named above the table, in Markdown or LaTeX. Every
row after the first also shows its difference to the first row, in the printed units. When both
results carry per-item records of a figure that is a plain mean over items (monodepth images --
not ``depth_median``, which is pixel-weighted --, mvdepth keyframes, pointmap reconstructions),
the difference is paired: the mean of the per-item differences over the items both results
scored, with its standard error (``± SE``).

Which figures fill the columns depends on the task:

============  ==================================  =====================================
task          figures                             taken from
============  ==================================  =====================================
monodepth     Rel, δ1 (x 100)                     the variant (default: the table variant)
videodepth    Rel, δ1 (x 100)                     the alignment (default: the first one)
relpose       AUC@5, AUC@10, AUC@20 (x 100)       the benchmark
mvdepth       AbsRel, inliers<1.03 (x 100)        the benchmark
pointmap      Acc, Comp (m), NC                   the benchmark
============  ==================================  =====================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["paper_table", "paired_difference", "TASK_COLUMNS"]

#: task -> (metric key, printed label, higher is better, printed x 100)
TASK_COLUMNS: dict[str, tuple[tuple[str, str, bool, bool], ...]] = {
    "monodepth": (("rel", "Rel", False, True), ("delta1", "δ1", True, True)),
    "videodepth": (("rel", "Rel", False, True), ("delta1", "δ1", True, True)),
    "relpose": (("auc@5", "AUC@5", True, True), ("auc@10", "AUC@10", True, True), ("auc@20", "AUC@20", True, True)),
    "mvdepth": (("absrel", "AbsRel", False, True), ("inliers103", "τ<1.03", True, True)),
    "pointmap": (("acc", "Acc", False, False), ("comp", "Comp", False, False), ("nc", "NC", True, False)),
}


def _group(result: dict, group: str | None) -> str | None:
    """The variant / alignment whose figures are tabulated (None: figures sit at the top)."""
    task = result.get("task")
    if task == "monodepth":
        return group or result.get("config", {}).get("table_variant") or "depth_scale_invariant"
    if task == "videodepth":
        return group or (result.get("alignments") or ["scale"])[0]
    return None


def _protocol(result: dict, group: str | None) -> str:
    task = result.get("task")
    agg = result.get("aggregation")
    if isinstance(agg, dict):
        agg = "; ".join(f"{k}: {v}" for k, v in agg.items())
    if task == "monodepth":
        proto = ("CUT3R's per-image median scaling" if group == "depth_median"
                 else f"MoGe's monocular protocol, `{group}`")
    elif task == "videodepth":
        proto = f"CUT3R's video depth, one `{group}` alignment per sequence"
    elif task == "relpose":
        proto = f"relative pose, solver `{result.get('solver', '?')}`, translation {result.get('translation_sign', '?')}"
    elif task == "pointmap":
        proto = f"point maps, alignment `{result.get('config', {}).get('align', '?')}`"
    else:
        proto = str(task)
    return f"{task}: {proto}" + (f". Aggregation: {agg}" if agg else "")


def _value(block: dict | None, group: str | None, key: str) -> float:
    if not isinstance(block, dict):
        return math.nan
    if group is not None:
        block = block.get(group)
        if not isinstance(block, dict):
            return math.nan
    v = block.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _fmt(x: float, percent: bool) -> str:
    if math.isnan(x):
        return "-"
    return f"{100 * x:.2f}" if percent else f"{x:.4f}"


def _fmt_diff(d: float, percent: bool, se: float | None = None) -> str:
    if math.isnan(d):
        return ""
    k = 100.0 if percent else 1.0
    prec = 2 if percent else 4
    err = f" ± {k * se:.{prec}f}" if se is not None and not math.isnan(se) else ""
    return f" ({k * d:+.{prec}f}{err})"


#: per task: the fields naming one record (items are paired by them)
RECORD_IDS = {"monodepth": ("name",), "mvdepth": ("scene", "frame"), "pointmap": ("scene", "frames")}


def _records(result: dict, bench: str, group: str | None, key: str) -> dict[tuple, float] | None:
    """``{item id: figure}`` of a benchmark's records when the figure is a plain mean over them."""
    task = result.get("task")
    recs = (result.get("records") or {}).get(bench)
    if task not in RECORD_IDS or not recs or group == "depth_median":
        return None
    out = {}
    for r in recs:
        block = r.get(group) if group is not None else r
        v = block.get(key) if isinstance(block, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            out[tuple(r.get(f) for f in RECORD_IDS[task])] = float(v)
    return out or None


def paired_difference(ref: dict, other: dict, bench: str, group: str | None, key: str) -> tuple[float, float, int] | None:
    """``(mean of other - ref over the shared items, its standard error, n)`` from the records,
    or None when either result lacks per-item records of that figure."""
    a, b = _records(ref, bench, group, key), _records(other, bench, group, key)
    if a is None or b is None:
        return None
    shared = [k for k in a if k in b]
    if not shared:
        return None
    d = [b[k] - a[k] for k in shared]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.nan
    return mean, se, n


def paper_table(results: Sequence[dict], fmt: str = "markdown", group: str | None = None) -> str:
    """The table of ``results`` (see the module doc) as ``fmt`` = ``"markdown"`` or ``"latex"``.

    Args:
        results: result dicts of one task (the first row is the reference for the differences).
        group: the monodepth variant / videodepth alignment to tabulate (default: the result's).

    Raises:
        ValueError: results of different tasks, or a task without a table layout.
    """
    if not results:
        raise ValueError("no results to tabulate")
    tasks = {r.get("task") for r in results}
    if len(tasks) != 1:
        raise ValueError(f"cannot tabulate results of different tasks together: {sorted(map(str, tasks))}")
    task = tasks.pop()
    if task not in TASK_COLUMNS:
        raise ValueError(f"no table layout for task {task!r}; known: {list(TASK_COLUMNS)}")
    cols = TASK_COLUMNS[task]
    grp = _group(results[0], group)
    benches: list[str] = []
    for r in results:
        benches += [b for b in r.get("benchmarks", {}) if b not in benches]
    with_mean = len(benches) > 1 and all(isinstance(r.get("mean"), dict) for r in results)
    groups = benches + (["Avg"] if with_mean else [])

    def cells(r: dict) -> list[float]:
        out = []
        for b in groups:
            block = r.get("mean") if b == "Avg" else r.get("benchmarks", {}).get(b)
            out += [_value(block, grp, key) for key, *_ in cols]
        return out

    ref = cells(results[0])
    rows = []
    any_paired = False
    for i, r in enumerate(results):
        vals = cells(r)
        texts = []
        for j, v in enumerate(vals):
            key, _, _, pct = cols[j % len(cols)]
            bench = groups[j // len(cols)]
            paired = paired_difference(results[0], r, bench, grp, key) if i and bench != "Avg" else None
            any_paired |= paired is not None
            diff = _fmt_diff(paired[0], pct, paired[1]) if paired else _fmt_diff(v - ref[j], pct)
            texts.append(_fmt(v, pct) + (diff if i else ""))
        rows.append((str(r.get("model") or f"model {i}"), texts))
    protocols = {_protocol(r, grp) for r in results}
    header = "Protocol: " + " | ".join(sorted(protocols))
    units = "Acc and Comp in metres, NC in [0, 1]" if task == "pointmap" else "Figures in %"
    note = (f"{units}; ↓ lower is better, ↑ higher is better; in parentheses: the row minus the "
            f"first row ({rows[0][0]}), same benchmarks"
            + ("; ± the standard error of the paired per-item differences where both results hold per-item "
               "records." if any_paired else "."))
    labels = [f"{lab}{'↑' if hib else '↓'}" for _, lab, hib, _ in cols]
    if fmt == "markdown":
        head = "| model | " + " | ".join(f"{b} {lab}" for b in groups for lab in labels) + " |"
        sep = "|---|" + "---|" * (len(groups) * len(cols))
        body = [f"| {name} | " + " | ".join(t) + " |" for name, t in rows]
        return "\n".join([header, "", head, sep, *body, "", note]) + "\n"
    if fmt == "latex":
        def esc(x: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                         ("δ", r"$\delta$"), ("τ", r"$\tau$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"),
                         ("±", r"$\pm$")):
                x = x.replace(a, b)
            return x

        n = len(cols)
        spec = "l" + ("|" + "c" * n) * len(groups)
        top = " & ".join([""] + [rf"\multicolumn{{{n}}}{{c}}{{{esc(b)}}}" for b in groups]) + r" \\"
        mid = " & ".join(["Model"] + [esc(lab) for _ in groups for lab in labels]) + r" \\"
        body = [" & ".join([esc(name)] + [esc(t) for t in texts]) + r" \\" for name, texts in rows]
        return "\n".join([f"% {esc(header)}", f"% {esc(note)}", r"\begin{tabular}{" + spec + "}", r"\toprule", top,
                          mid, r"\midrule", *body, r"\bottomrule", r"\end{tabular}"]) + "\n"
    raise ValueError(f"unknown table format {fmt!r} (markdown | latex)")
