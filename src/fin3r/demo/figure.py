"""The demo's figure (PIL only): held-out views with the teacher, base, fine-tuned and ground-truth
depth, the error maps, and bars of the encoder feature norms of every model.

Depth maps are aligned to the ground truth by the same AbsRel-optimal scale as the evaluation and
share one colour range per row (near = bright); error maps show ``|d - gt| / gt`` clipped at 0.3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fin3r.colormap import turbo
from fin3r.data.world_views import WorldViews, teacher_labels
from fin3r.demo.config import DemoConfig, variant_label
from fin3r.eval.alignment import absrel_scaled

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _tile(arr: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def demo_figure(
    path: str | Path,
    images: Tensor,
    gt_depth: Tensor,
    valid: Tensor,
    teacher_depth: Tensor | None,
    predictions: dict[str, Tensor],
    norms: dict[str, tuple[float, float]],
    labels: dict[str, str] | None = None,
    teacher_name: str = "teacher",
    scale: int = 3,
) -> Path:
    """Write the figure.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1], the views to show (one row each).
        gt_depth, valid: ``(N, H, W)`` ground truth.
        teacher_depth: ``(N, H, W)`` the teacher's labels of the same views (any scale) or None.
        predictions: model name -> aligned-or-not depth ``(N, H, W)``, in column order (e.g.
            base, fine-tuned, control); each is aligned to the ground truth here.
        norms: model name -> ``(norm before enc_norm, norm after enc_norm)`` for the bars.
        labels: display names of the models.
    """

    labels = labels or {}
    N, _, H, W = images.shape
    cols: list[tuple[str, list[np.ndarray]]] = [("image", [])]
    if teacher_depth is not None:
        cols.append((teacher_name, []))
    for name in predictions:
        cols.append((labels.get(name, name), []))
    cols.append(("ground truth", []))
    err_cols: list[tuple[str, list[np.ndarray]]] = [(f"|err| {labels.get(n, n)}", []) for n in predictions]
    for i in range(N):
        m = valid[i]
        gt = gt_depth[i]
        lo, hi = float(gt[m].min()), float(gt[m].max())

        def shade(d: Tensor) -> np.ndarray:
            inv = (1.0 / d.clamp_min(1e-6) - 1.0 / hi) / max(1.0 / lo - 1.0 / hi, 1e-9)  # near = bright
            return turbo(torch.where(m, inv, torch.zeros_like(inv)).numpy())

        k = 0
        cols[k][1].append((images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
        k += 1
        if teacher_depth is not None:
            cols[k][1].append(shade(absrel_scaled(teacher_depth[i], gt, m & (teacher_depth[i] > 0))))
            k += 1
        for j, (name, d) in enumerate(predictions.items()):
            aligned = absrel_scaled(d[i], gt, m)
            cols[k][1].append(shade(aligned))
            k += 1
            err = ((aligned - gt).abs() / gt.clamp_min(1e-6)).clamp(0, 0.3) / 0.3
            err_cols[j][1].append(turbo(torch.where(m, err, torch.zeros_like(err)).numpy()))
        cols[k][1].append(shade(gt))
    cols += err_cols

    pad, title_h, left = 4, 18, 4
    tw, th = W * scale, H * scale
    grid_w = left + len(cols) * (tw + pad)
    bars_h = 30 + 16 * len(norms) + 8
    fig_h = title_h + N * (th + pad) + bars_h
    fig = Image.new("RGB", (grid_w, fig_h), "white")
    draw = ImageDraw.Draw(fig)
    font = _font(11)
    for c, (name, tiles) in enumerate(cols):
        x = left + c * (tw + pad)
        draw.text((x, 3), name[:26], fill="black", font=font)
        for r, arr in enumerate(tiles):
            fig.paste(_tile(arr, scale), (x, title_h + r * (th + pad)))
    # feature-norm bars
    y0 = title_h + N * (th + pad) + 6
    draw.text((left, y0), "mean encoder token norm (held-out views): before enc_norm (residual stream) | "
              "after enc_norm (what the decoder sees)", fill="black", font=font)
    y = y0 + 18
    max_pre = max(v[0] for v in norms.values()) or 1.0
    max_post = max(v[1] for v in norms.values()) or 1.0
    half = (grid_w - 2 * left) // 2 - 200
    palette = [(90, 90, 90), (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    for idx, (name, (pre, post)) in enumerate(norms.items()):
        color = palette[idx % len(palette)]
        lbl = labels.get(name, name)[:22]
        for j, (v, vmax) in enumerate(((pre, max_pre), (post, max_post))):
            x = left + j * (half + 210)
            draw.text((x, y), lbl, fill="black", font=font)
            bw = int(half * v / vmax)
            draw.rectangle([x + 130, y + 2, x + 130 + bw, y + 12], fill=color)
            draw.text((x + 134 + bw, y), f"{v:.2f}", fill="black", font=font)
        y += 16
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)
    return path


@torch.no_grad()
def write_figure(path, cfg: DemoConfig, eval_views: WorldViews, figure_depth: dict, results: dict, names) -> None:
    """The figure: held-out views (image, teacher, base, fine-tuned, control, ground truth, error
    maps) and the feature-norm bars of every model. ``figure_depth``: model name -> ``(n, H, W)``
    monocular depth of views 0 of the first ``n`` held-out scenes."""
    n = next(iter(figure_depth.values())).shape[0]
    sub = WorldViews(eval_views.img[:n, :1], eval_views.depth[:n, :1], eval_views.valid[:n, :1],
                     eval_views.K[:n, :1], eval_views.cam2world[:n, :1])
    t_depth, _, _ = teacher_labels(cfg.teacher, sub)
    images = sub.img[:, 0].float() / 255.0
    main = [m for m in ("fin3r", "renorm_row_replay") if m in names][:1]
    shown = ["base"] + main + (["replay_only"] if "replay_only" in names else [])
    preds = {m: figure_depth[m] for m in shown}
    labels = {m: variant_label(cfg, m) for m in results if m != "base"}
    labels.update({"base": "base", "fin3r": "Fin3R (fine-tuned)", "replay_only": "control (replay only)"})
    norms = {m: (results[m]["summary"]["norm_pre"], results[m]["summary"]["norm_post"]) for m in results}
    demo_figure(path, images, sub.depth[:, 0], sub.valid[:, 0], t_depth[:, 0], preds, norms, labels,
                teacher_name=f"teacher ({cfg.teacher})")


__all__ = ["demo_figure", "write_figure"]
