"""What fin3r knows about a model family, in one object per family.

Each family package (``fin3r.models.croco``, ``fin3r.models.cut3r``, ``fin3r.models.vggt``)
exports a :class:`ModelFamily`; :mod:`fin3r.models.registry` lists them. Code outside a family
package asks the family's spec (``registry.family_spec(model.family)``) instead of comparing
family names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from fin3r.models.base import Reconstructor

#: ``read(path) -> (config or None, state_dict in fin3r keys)``: a file's own description of its
#: architecture (``family`` + constructor kwargs, already checked against the tensors) and weights
Reader = Callable[[Path], "tuple[dict[str, Any] | None, dict[str, Tensor]]"]
#: ``replay_loss(pred, batch, alpha) -> (loss, stats)``: the family's own multi-view criterion
ReplayLoss = Callable[..., "tuple[Tensor, dict[str, float]]"]


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    Attributes:
        name: the family name stored in files and configs (``Reconstructor.family``).
        model_class: the :class:`~fin3r.models.base.Reconstructor` subclass.
        configs: known configurations, registry name -> constructor kwargs (no ``family``).
        detect: ``detect(path) -> bool``: whether an official file or folder (no fin3r
            metadata) belongs to this family; reads headers and pickle bytes only.
        read: ``read(path)`` -> ``(config or None, state_dict)`` of an official file of this
            family (see :data:`Reader`); ``config`` is ``None`` when the file carries no
            description (then a known configuration is needed).
        check_config: ``check_config(config, state_dict, source)``: raise
            :class:`~fin3r.errors.CheckpointError` unless the description fits the tensors (block
            counts, widths), called before a model is allocated from a file.
        write_official: ``write_official(model, path)``: the file the original repository loads.
        hf_config: ``hf_config(model) -> dict``: the ``config.json`` of a Hugging Face folder.
        replay_loss: the family's multi-view training criterion (see :data:`ReplayLoss`).
        patch_size: image sides must be multiples of it.
        normalization: what the model does to ``[0, 1]`` images inside (documentation).
        eval_side: the evaluation protocols' input size: the long side (or the width, see
            ``eval_side_is_width``) in pixels.
        eval_side_is_width: ``eval_side`` fixes the width (VGGT's loader) instead of the long side.
        metric: the model predicts metric depth (evaluation reports it as ``depth_metric``).
        views_per_forward: views one forward takes (2 for pairwise models; ``None``: any number).
        layout: what :attr:`detect` looks for, in words (named in the error for files no family
            recognises).
        fallback_config: ``fallback_config(state_dict) -> registry name or None``: the known
            configuration taken for a file of this family that carries no description (VGGT's
            ``model.pt``); ``None``: such a file needs a registry name.
        export_formats: the formats ``fin3r export`` writes for this family.
        released_adapter_prefixes: for released Fin3R adapters trained on *another* family whose
            encoder this family shares: that family's encoder prefix -> ours (π3: VGGT's
            ``aggregator.patch_embed.`` -> ``encoder.``); the adapter's keys are renamed, and the
            equality of the two encoders is the user's to assert (see
            :func:`fin3r.models.loading.apply_adapter`).
    """

    name: str
    model_class: type[Reconstructor]
    configs: Mapping[str, Mapping[str, Any]]
    detect: Callable[[Path], bool]
    read: Reader
    check_config: Callable[[dict[str, Any], dict[str, Tensor], str], None]
    write_official: Callable[[Reconstructor, "str | os.PathLike"], Path]
    hf_config: Callable[[Reconstructor], dict[str, Any]]
    replay_loss: ReplayLoss
    patch_size: int = 16
    normalization: str = "[-1, 1]"
    eval_side: int = 512
    eval_side_is_width: bool = False
    metric: bool = False
    views_per_forward: int | None = None
    layout: str = ""
    fallback_config: Callable[[dict[str, Tensor]], str | None] = field(default=lambda state_dict: None)
    export_formats: tuple[str, ...] = field(default=("pth", "hf", "safetensors"))
    released_adapter_prefixes: Mapping[str, str] = field(default_factory=dict)


__all__ = ["ModelFamily", "Reader", "ReplayLoss"]
