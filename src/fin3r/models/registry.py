"""The model families fin3r knows, and their known configurations.

This is the only module that lists the families: each family package exports one
:class:`~fin3r.models.spec.ModelFamily` and :data:`FAMILIES` names them. Everything else asks a
family's spec (:func:`family_spec`) instead of comparing family names.

- :data:`MODEL_CONFIGS`: registry name -> config dict (``family`` + constructor kwargs);
- :func:`build_model`: a randomly initialised model from a registry name or a config dict;
- :func:`replay_loss`: the family's own multi-view criterion.

Loading files is :mod:`fin3r.models.loading` (``fin3r.models.load``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fin3r.errors import CheckpointError, InputError
from fin3r.models.base import Reconstructor
from fin3r.models.croco import DUST3R, MAST3R
from fin3r.models.cut3r import CUT3R
from fin3r.models.pi3 import PI3
from fin3r.models.spec import ModelFamily
from fin3r.models.vggt import VGGT

#: every model family, in the order files are tried against their official layouts
FAMILIES: tuple[ModelFamily, ...] = (DUST3R, MAST3R, CUT3R, VGGT, PI3)
_BY_NAME: dict[str, ModelFamily] = {spec.name: spec for spec in FAMILIES}

#: registry name -> {"family": ..., **constructor kwargs}
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    name: {"family": spec.name, **config} for spec in FAMILIES for name, config in spec.configs.items()
}


def family_spec(family: str) -> ModelFamily:
    """The spec of ``family`` (e.g. ``model.family``); :class:`CheckpointError` if unknown."""
    if family not in _BY_NAME:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[family]


def find_family(family: str) -> ModelFamily | None:
    """The spec of ``family``, or ``None`` for a model fin3r does not register."""
    return _BY_NAME.get(family)


def family_class(family: str) -> type[Reconstructor]:
    """The model class of ``family``."""
    return family_spec(family).model_class


def resolve_config(name_or_config: str | dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict a registry name (or a config dict) stands for."""
    if isinstance(name_or_config, dict):
        config = dict(name_or_config)
    elif name_or_config in MODEL_CONFIGS:
        config = dict(MODEL_CONFIGS[name_or_config])
    else:
        raise CheckpointError(f"unknown model name {name_or_config!r}; known: {', '.join(MODEL_CONFIGS)}")
    if "family" not in config:
        raise CheckpointError(f"model config has no 'family': {config}")
    return config


def build_model(name_or_config: str | dict[str, Any], device: torch.device | str | None = None) -> Reconstructor:
    """A randomly initialised model from a registry name or a config dict (``family`` + kwargs).

    ``device="meta"`` builds without allocating weights (for key checks of full-size models).
    """
    config = resolve_config(name_or_config)
    cls = family_class(config.pop("family"))
    if device is None:
        return cls(**config)
    with torch.device(device):
        return cls(**config)


def replay_loss(family: str, pred: Any, batch: dict[str, Any], alpha: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """The model family's own multi-view criterion on a replay batch.

    Args:
        family: the model's family (``Reconstructor.family``).
        pred: the model's ``ViewsPrediction`` for ``batch["img"] (B, S, 3, H, W)``.
        batch: a collated multi-view batch (``depth``, ``valid``, ``K``, ``cam2world``,
            ``depth_kind``; the sample contract of :mod:`fin3r.data.views`).
        alpha: weight of ``-log conf``.
    """
    spec = find_family(family)
    if spec is None:
        raise InputError(f"replay_loss: unknown model family {family!r} (known: {', '.join(_BY_NAME)})")
    return spec.replay_loss(pred, batch, alpha=alpha)


__all__ = ["FAMILIES", "MODEL_CONFIGS", "build_model", "family_class", "family_spec", "find_family",
           "replay_loss", "resolve_config"]
