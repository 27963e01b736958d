"""Paired statistics: two models scored on the same units (scenes), compared unit by unit."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fin3r.eval.metrics import pose_auc


def paired_difference(after: Tensor, before: Tensor) -> dict:
    """Paired comparison of per-scene values (the same held-out scenes before and after).

    Returns ``{"before", "after", "diff", "se", "rel", "z", "n"}``: the means, the mean of
    ``after - before``, its standard error ``std / sqrt(n)``, the relative change
    ``diff / before`` and ``z = diff / se``. Scenes where either value is NaN are left out. An
    undefined figure is NaN with ``"<name>_null_reason"`` saying why (strict JSON writers put
    ``null`` beside that reason: :func:`fin3r.io.write_json_atomic`)."""
    ok = torch.isfinite(after) & torch.isfinite(before)
    a, b = after[ok].double(), before[ok].double()
    n = int(ok.sum())
    d = a - b
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    diff = float(d.mean()) if n else math.nan
    mb = float(b.mean()) if n else math.nan
    stats = {
        "before": mb,
        "after": float(a.mean()) if n else math.nan,
        "diff": diff,
        "se": se,
        "rel": diff / mb if mb else math.nan,
        "z": diff / se if se and se > 0 else math.nan,
        "n": n,
    }
    return _with_reasons(stats, n)


def _with_reasons(stats: dict, n: int) -> dict:
    """``stats`` plus ``rel_null_reason`` / ``z_null_reason`` where those are undefined."""
    if not math.isfinite(stats["rel"]):
        stats["rel_null_reason"] = ("no scene with finite values" if not n else
                                    f"relative change undefined: the base's value is {stats['before']}")
    if not math.isfinite(stats["z"]):
        stats["z_null_reason"] = ("no scene with finite values" if not n else
                                  f"z undefined: the standard error of the difference is {stats['se']}")
    return stats


def paired_auc_difference(err_after: Tensor, err_before: Tensor, reps: int = 500, seed: int = 0) -> dict:
    """Pose AUC@5/10/20 before/after, with a paired bootstrap standard error of each difference
    (scenes resampled with replacement, both models on the same resample)."""
    gen = torch.Generator().manual_seed(seed)
    n = err_after.numel()
    a0, b0 = pose_auc(err_after), pose_auc(err_before)
    diffs = []
    for _ in range(reps):
        idx = torch.randint(n, (n,), generator=gen)
        a, b = pose_auc(err_after[idx]), pose_auc(err_before[idx])
        diffs.append([x - y for x, y in zip(a, b)])
    d = torch.tensor(diffs, dtype=torch.float64)
    out = {}
    for i, t in enumerate((5, 10, 20)):
        se = float(d[:, i].std())
        diff = a0[i] - b0[i]
        out[f"auc{t}"] = _with_reasons({"before": b0[i], "after": a0[i], "diff": diff, "se": se,
                                        "rel": diff / b0[i] if b0[i] else math.nan,
                                        "z": diff / se if se > 0 else math.nan, "n": n}, n)
    return out


__all__ = ["paired_difference", "paired_auc_difference"]
