"""The same images through the base model and the adapted model, as scenes for the viewer
(:mod:`fin3r.outputs.viewer`): what ``fin3r view`` and ``fin3r infer --view`` write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fin3r.errors import InputError


def predict_scenes(model, images: Sequence, views: bool, conf_threshold: float = 0.0, conf_percentile: float = 0.0,
                   device: torch.device | str = "cpu", progress: bool = False) -> list:
    """:class:`~fin3r.outputs.scene.Scene` s of prepared images (:class:`fin3r.infer.PreparedImage`):
    one scene of all of them (``views=True``, one multi-view prediction) or one per image (mono)."""
    from tqdm import tqdm

    from fin3r.infer import predict_mono, predict_views
    from fin3r.outputs.scene import scene_from_mono, scene_from_views

    if views:
        pred = predict_views(model, list(images), device)
        return [scene_from_views(pred, [im.rgb for im in images], [im.source.name for im in images], conf_threshold,
                                 conf_percentile)]
    return [scene_from_mono(predict_mono(model, im, device), im.rgb, im.source.name, conf_threshold, conf_percentile)
            for im in tqdm(images, desc="predict", unit="img", disable=not progress)]


def before_after_scenes(before: list, after: list, labels: tuple[str, str] = ("base", "Fin3R")) -> list:
    """Pair the scenes of two models on the same images into viewer scenes."""
    from fin3r.outputs.viewer import ViewerScene

    if len(before) != len(after):
        raise InputError(f"before/after: {len(before)} scenes against {len(after)}")
    out = []
    for b, a in zip(before, after):
        name = b.names[0] if len(b.names) == 1 else f"{b.names[0]} + {len(b.names) - 1} views"
        out.append(ViewerScene(name, {labels[0]: b, labels[1]: a}))
    return out


def write_before_after(path: str | Path, model, apply_adapter: Callable[[], object], images: Sequence, views: bool,
                       labels: tuple[str, str] = ("base", "Fin3R"), note: str = "", **predict_kw) -> Path:
    """Predict ``images`` with ``model``, call ``apply_adapter()`` (which adapts ``model`` in place),
    predict again and write the viewer page to ``path``."""
    from fin3r.outputs.viewer import write_viewer

    before = predict_scenes(model, images, views, **predict_kw)
    apply_adapter()
    after = predict_scenes(model, images, views, **predict_kw)
    return write_viewer(path, before_after_scenes(before, after, labels), note=note)


__all__ = ["predict_scenes", "before_after_scenes", "write_before_after"]
