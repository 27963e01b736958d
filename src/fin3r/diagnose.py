"""Encoder feature-norm diagnostics: the paper's drift signal, base vs adapted model.

Fin3R reports the mean L2 norm of the encoder tokens the frozen decoder consumes (9.61 base,
10.53 naive LoRA, 9.73 re-normalised LoRA, DUSt3R). We measure it at two places:

- ``feat_norm``: :meth:`Reconstructor.encode` -- after the encoder's final norm (what the
  decoder sees; for DUSt3R a LayerNorm with affine parameters, so its scale is not fixed);
- ``feat_norm_prenorm``: :meth:`Reconstructor.encode_prenorm` -- the residual stream before that
  norm, where drift shows even when the final norm pins the output (``docs/training.md``).

:func:`encoder_feature_norms` is what the training engine logs every epoch;
:func:`diagnose` is ``fin3r diagnose`` (JSON + histogram PNG).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fin3r.errors import InputError
from fin3r.io import write_json_atomic
from fin3r.media import open_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@torch.no_grad()
def token_norms(model: nn.Module, images: Tensor, batch_size: int = 8) -> dict[str, Tensor]:
    """Per-token L2 norms of the encoder output, ``{"post": (N·T,), "pre": (N·T,)}``.

    ``images``: ``(N, 3, H, W)`` in ``[0, 1]``; the model is run as it is (call ``eval()`` first).
    ``"pre"`` is absent when the model has no ``encode_prenorm``.
    """
    post, pre = [], []
    device = next(model.parameters()).device
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        post.append(model.encode(x).float().norm(dim=-1).flatten().cpu())
        try:
            pre.append(model.encode_prenorm(x).float().norm(dim=-1).flatten().cpu())
        except NotImplementedError:
            pass
    out = {"post": torch.cat(post)}
    if pre:
        out["pre"] = torch.cat(pre)
    return out


def encoder_feature_norms(model: nn.Module, images: Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean encoder token norm over ``images (N, 3, H, W)`` and all tokens:
    ``{"feat_norm": after the final norm, "feat_norm_prenorm": before it}``."""
    norms = token_norms(model, images, batch_size)
    out = {"feat_norm": float(norms["post"].mean())}
    if "pre" in norms:
        out["feat_norm_prenorm"] = float(norms["pre"].mean())
    return out


def summarize(norms: Tensor) -> dict[str, float]:
    """Mean, std and quantiles of a 1-D tensor of norms."""
    q = torch.quantile(norms.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"mean": float(norms.mean()), "std": float(norms.std()), "p05": float(q[0]),
            "median": float(q[1]), "p95": float(q[2]), "tokens": int(norms.numel())}


def load_images(folder: str | Path, height: int, width: int, limit: int = 64) -> Tensor:
    """Up to ``limit`` images of ``folder`` (sorted by name), resized (bilinear) and centre-cropped
    to ``height x width``: ``(N, 3, H, W)`` float in ``[0, 1]``."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for f in files:
        try:
            im = Image.fromarray(open_rgb(f)[0])  # upright, as in labelling, training and inference
        except Exception as e:
            raise InputError(f"{f}: cannot read as an image ({e})") from e
        s = max(width / im.width, height / im.height)
        w, h = max(width, round(im.width * s)), max(height, round(im.height * s))
        im = im.resize((w, h), Image.BILINEAR)
        x0, y0 = (w - width) // 2, (h - height) // 2
        im = im.crop((x0, y0, x0 + width, y0 + height))
        out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(height, width, 3))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0


def _histogram_png(series: dict[str, Tensor], path: Path, title: str) -> str:
    """Overlaid histograms of token norms; matplotlib when installed, else drawn with PIL.
    Returns the backend used (``"matplotlib"`` or ``"pil"``)."""
    lo = min(float(v.min()) for v in series.values())
    hi = max(float(v.max()) for v in series.values())
    if hi <= lo:
        hi = lo + 1.0
    bins = 50
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for (name, v), c in zip(series.items(), colors):
            ax.hist(v.numpy(), bins=bins, range=(lo, hi), alpha=0.5, label=f"{name} (mean {float(v.mean()):.3f})",
                    color=[x / 255 for x in c], density=True)
        ax.set_xlabel("token L2 norm")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return "matplotlib"
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    W, H, margin = 640, 400, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    hists = {k: torch.histc(v.float(), bins=bins, min=lo, max=hi) / v.numel() for k, v in series.items()}
    top = max(float(h.max()) for h in hists.values()) or 1.0
    pw, ph = W - 2 * margin, H - 2 * margin - 20
    bw = pw / bins
    for (name, h), c in zip(hists.items(), colors):
        for i, val in enumerate(h.tolist()):
            y = margin + 20 + ph * (1 - val / top)
            x0 = margin + i * bw
            draw.rectangle([x0, y, x0 + bw - 1, margin + 20 + ph], outline=c)
    draw.line([margin, margin + 20 + ph, margin + pw, margin + 20 + ph], fill="black")
    draw.text((margin, 5), title, fill="black")
    for j, ((name, v), c) in enumerate(zip(series.items(), colors)):
        draw.text((margin + 200 * j, 22), f"{name}: mean {float(v.mean()):.3f}", fill=c)
    draw.text((margin, H - margin + 5), f"{lo:.2f}", fill="black")
    draw.text((W - margin - 40, H - margin + 5), f"{hi:.2f}", fill="black")
    draw.text((W // 2 - 40, H - margin + 5), "token L2 norm", fill="black")
    img.save(path)
    return "pil"


def diagnose(
    base: nn.Module,
    images: Tensor,
    out_dir: str | Path,
    adapted: nn.Module | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Token-norm statistics of ``base`` (and ``adapted``) on ``images (N, 3, H, W)``.

    Writes ``out_dir/feature_norms.json`` and ``out_dir/feature_norms_{post,pre}.png``
    (histograms of the post-norm and pre-norm token norms) and returns the JSON dict: per model and place
    (``post``/``pre``) ``mean, std, p05, median, p95, tokens``, plus ``relative_change`` of the
    means when an adapted model is given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = {"base": base} if adapted is None else {"base": base, "adapted": adapted}
    norms = {}
    for name, m in models.items():
        m.eval()
        norms[name] = token_norms(m, images, batch_size)
    report: dict[str, Any] = {"images": int(images.shape[0]), "size": list(images.shape[-2:])}
    for name, per_place in norms.items():
        report[name] = {place: summarize(v) for place, v in per_place.items()}
    if adapted is not None:
        report["relative_change"] = {
            place: report["adapted"][place]["mean"] / report["base"][place]["mean"] - 1.0
            for place in report["base"] if place in report["adapted"]
        }
    backends = []
    for place, label in (("post", "after the encoder's final norm"), ("pre", "before the final norm")):
        series = {name: per[place] for name, per in norms.items() if place in per}
        if series:
            backends.append(_histogram_png(series, out_dir / f"feature_norms_{place}.png", f"encoder token norms, {label}"))
    report["plot_backend"] = backends[0] if backends else None
    write_json_atomic(out_dir / "feature_norms.json", report, indent=2)
    return report


__all__ = ["diagnose", "encoder_feature_norms", "load_images", "summarize", "token_norms"]
