"""The ensemble teacher on the synthetic world with noisy oracle members of known error.

    OMP_NUM_THREADS=1 python scripts/measure_ensemble.py [--images 48] [--size 96x128]

Each member is the world's exact depth degraded by a known amount (``fin3r.teachers.oracle``:
log-normal noise, blur, low resolution) times its own unknown per-image scale. For every member
and for the ensemble label, the error against the ground truth is measured after the per-image
scale fit the distillation loss uses (``exp(median log(gt / label))``): mean |log(label / gt)|
over the labelled pixels. Then how well the ensemble's confidence ranks its own errors: AUROC of
"confidence separates the pixels with error above the median error from the rest" (1 = perfect
ranking, 0.5 = none), and a calibration table of mean error per confidence bin.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch


def _log_error(label: torch.Tensor, mask: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel |log(s * label / gt)| with the per-image median-log scale ``s``; NaN off the mask."""
    ok = mask & valid & (label > 0) & (gt > 0)
    r = torch.where(ok, torch.log(gt.clamp_min(1e-12)) - torch.log(label.clamp_min(1e-12)), torch.full_like(gt, float("nan")))
    s = torch.nanmedian(r.flatten(1), dim=1).values.view(-1, 1, 1)
    return (r - s).abs()


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` class (ties counted half)."""
    order = torch.argsort(score)
    ranks = torch.empty_like(score, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.float64)
    # average ranks of ties
    uniq, inv = torch.unique(score, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    ranks = (sums / counts)[inv]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(1, n_pos * n_neg))


def main(argv: list[str] | None = None) -> int:
    from fin3r.data.world import WorldMonoDataset
    from fin3r.teachers import load_teacher

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--size", default="96x128", help="HxW of the world renders")
    p.add_argument("--members", nargs="+", default=[
        "oracle:noise=0.08,seed=1", "oracle:noise=0.04,blur=1.5,seed=2", "oracle:noise=0.04,pool=4,seed=3"],
        help="member specs (the first is the reference)")
    args = p.parse_args(argv)
    h, _, w = args.size.partition("x")
    ds = WorldMonoDataset(args.images, int(h), int(w), seed=11, split="test")
    spec = "ensemble:" + ",".join(args.members)
    ens = load_teacher(spec)
    members = ens.members
    errs = {m.name: [] for m in members}
    errs["ensemble"] = []
    confs = []
    for start in range(0, args.images, 8):
        batch = torch.utils.data.default_collate([ds[i] for i in range(start, min(args.images, start + 8))])
        gt, valid = batch["depth"], batch["valid"]
        out = ens.predict(batch["img"], depth=gt, valid=valid)
        both = out.mask.clone()
        for m_out_mask in out.extras["members_mask"]:
            both &= m_out_mask
        for m, label, mask in zip(members, out.extras["members_aligned"], out.extras["members_mask"]):
            e = _log_error(label, mask, gt, valid)
            errs[m.name].append(e[both & valid])
        e = _log_error(out.depth, out.mask, gt, valid)
        errs["ensemble"].append(e[both & valid])
        confs.append(out.extras["confidence"][both & valid])
    print(f"# {spec}\n# {args.images} world test views {args.size}; error = mean |log(s * label / gt)| after the "
          "per-image median-log scale fit, on pixels every member and the ensemble label")
    print("| label | mean log error | median | 90th percentile |\n|---|---|---|---|")
    for name, parts in errs.items():
        e = torch.cat(parts)
        e = e[torch.isfinite(e)]
        print(f"| {name} | {e.mean():.4f} | {e.median():.4f} | {torch.quantile(e, 0.9):.4f} |")
    e = torch.cat(errs["ensemble"])
    c = torch.cat(confs)
    ok = torch.isfinite(e)
    e, c = e[ok], c[ok]
    print(f"\nhow the ensemble's confidence ranks its label errors ({len(e)} pixels): AUROC of -confidence for")
    for q in (0.5, 0.9):
        t = torch.quantile(e.double(), q)
        print(f"  errors above their {int(q * 100)}th percentile ({t:.4f}): {auroc(-c.double(), e.double() > t):.3f}")
    print("\n| confidence bin | pixels | mean log error |\n|---|---|---|")
    edges = torch.quantile(c.double(), torch.linspace(0, 1, 6, dtype=torch.float64))
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (c.double() >= lo) & (c.double() <= hi)
        print(f"| {lo:.3f} - {hi:.3f} | {int(sel.sum())} | {e[sel].mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
