"""The one colour map of fin3r's pictures: turbo (``fin3r infer`` depth pictures, the demo figure).

:func:`turbo` is Mikhailov's polynomial approximation of Google's Turbo map (2019, Apache-2.0
formula), pure NumPy; :func:`colorize` normalises values to percentiles first.
"""

from __future__ import annotations

import numpy as np

_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] (clipped) -> ``(H, W, 3)`` uint8 turbo colours."""
    x = np.clip(x, 0.0, 1.0)
    powers = np.stack([x**i for i in range(6)], -1)
    rgb = np.stack([powers @ np.array(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def colorize(values: np.ndarray, valid: np.ndarray | None = None, lo: float = 2.0, hi: float = 98.0,
             value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 turbo colours, normalised to the ``lo``-``hi``
    percentiles of the valid (and finite) values, or to ``value_range`` (one range shared by
    several pictures); invalid pixels black."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values) if valid is None else (valid & np.isfinite(values))
    out = np.zeros((*values.shape, 3), dtype=np.uint8)
    if not valid.any():
        return out
    a, b = value_range if value_range is not None else np.percentile(values[valid], [lo, hi])
    rgb = turbo(np.where(valid, np.clip((values - a) / max(b - a, 1e-12), 0, 1), 0.0))
    out[valid] = rgb[valid]
    return out


__all__ = ["turbo", "colorize"]
