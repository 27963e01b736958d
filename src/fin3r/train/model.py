"""The model as Fin3R trains it: the base a config names, LoRA on its encoder (everything else
frozen), eval mode except the LoRA layers, and :class:`LossModule` -- prediction and loss in one
``forward`` (one module call per micro-batch, as DDP wants).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fin3r.errors import CheckpointError, Fin3rError
from fin3r.models import MODEL_CONFIGS, load_model, replay_loss
from fin3r.train.config import TrainConfig

log = logging.getLogger(__name__)


def load_base_model(config: TrainConfig) -> nn.Module:
    """The base model ``config.model`` names (see :class:`~fin3r.train.config.ModelConfig`): the
    checkpoint as it describes itself (``model.name`` only checks the family), a registry name
    for a checkpoint without a description, or a registry name / model file alone."""
    name, ckpt = config.model.name, config.model.checkpoint
    if ckpt is None:
        if name is None:
            raise Fin3rError("model: set model.checkpoint (the base weights) or model.name")
        if name in MODEL_CONFIGS:
            log.warning("model %r has no checkpoint: training a randomly initialised model (smoke test only)", name)
        return load_model(name)
    if name is not None and name not in MODEL_CONFIGS:
        raise Fin3rError(f"model.name={name!r} is not a registry name; with model.checkpoint set, model.name is a "
                         f"registry name or null")
    try:
        model = load_model(ckpt)  # the file's own architecture
    except CheckpointError:
        if name is None:
            raise
        return load_model(name, ckpt)  # e.g. a bare state_dict: the registry name gives the architecture
    if name is not None and MODEL_CONFIGS[name]["family"] != model.family:
        raise Fin3rError(f"model.checkpoint={ckpt} holds a {model.family} model, but model.name={name!r} is a "
                         f"{MODEL_CONFIGS[name]['family']} one; set model.name=null to take the file as it is")
    return model


def adapter_base_name(config: TrainConfig) -> str:
    """What an adapter records as its base (``base_name``): the absolute, resolved path of the file
    holding the base weights (so ``fin3r export`` works from any folder), else the registry name."""
    name, ckpt = config.model.name, config.model.checkpoint
    for candidate in (ckpt, name):
        if candidate is not None and Path(candidate).exists():
            return str(Path(candidate).resolve())
    return str(ckpt or name)


def inject_encoder_lora(model: nn.Module, config: TrainConfig) -> list[str]:
    """LoRA on the encoder's linear layers matching ``config.lora.targets``; everything else frozen.
    Returns the names of the adapted layers."""
    from fin3r.lora import inject_lora

    names = model.encoder_linear_names(config.lora.targets)
    if not names:
        raise Fin3rError(f"lora.targets {config.lora.targets} match no linear layer of the encoder "
                         f"({', '.join(model.encoder_prefixes)})")
    c = config.lora
    return inject_lora(model, names, rank=c.rank, alpha=c.alpha, dropout=c.dropout, mode=c.mode)


def set_train_mode(model: nn.Module) -> None:
    """Eval mode everywhere (dropout/drop-path off: the frozen parts are deterministic), except the
    LoRA layers themselves (so a non-zero ``lora.dropout`` acts)."""
    from fin3r.lora import lora_modules

    model.eval()
    for m in lora_modules(model).values():
        m.train()


class LossModule(nn.Module):
    """Prediction + loss in one ``forward(source, batch) -> (loss, stats)``.

    ``source == "mono"``: ``predict_mono`` -> :func:`fin3r.losses.mono_distillation_loss` against the
    teacher label (``depth``/``valid``/``depth_kind`` of the batch), times ``distill.weight``;
    any other source: ``predict_views`` -> :func:`fin3r.models.replay_loss` (the family's own
    criterion), times ``replay.weight``.
    """

    def __init__(self, model: nn.Module, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, source: str, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        from fin3r.losses import mono_distillation_loss

        c = self.config
        if source == "mono":
            pred = self.model.predict_mono(batch["img"])
            if not c.distill.both_heads:
                pred = dataclasses.replace(pred, depth_aux=[], conf_aux=[])
            kinds = set(batch["depth_kind"])
            if len(kinds) != 1:
                raise Fin3rError(f"a mono batch mixes teacher depth kinds {sorted(kinds)}")
            loss, stats = mono_distillation_loss(
                pred, batch["depth"], batch["valid"], kinds.pop(), lam=c.distill.lam, rho=c.distill.rho,
                align=c.distill.align, min_valid=c.distill.min_valid, far_quantile=c.distill.far_quantile,
                teacher_weight=batch.get("teacher_conf"),
            )
            return c.distill.weight * loss, stats
        pred = self.model.predict_views(batch["img"])
        loss, stats = replay_loss(self.model.family, pred, batch, alpha=c.replay.alpha)
        return c.replay.weight * loss, stats


__all__ = ["LossModule", "adapter_base_name", "inject_encoder_lora", "load_base_model", "set_train_mode"]
