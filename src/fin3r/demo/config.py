"""``fin3r demo`` configuration: the world slices, the fine-tuning recipe, the variants, the base."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from fin3r.config import bounded
from fin3r.errors import CheckpointError
from fin3r.models import load_model


@dataclass
class DemoWorldConfig:
    """The demo's slices of the synthetic world (all deterministic from ``seed``).

    ``label_*``: held-in scenes (train split, not the base's own pretraining scenes) whose images
    the teacher labels; ``replay_*``: train-split scenes for multi-view replay, with the base's own
    low-resolution depth (``pool`` comes from the base's card); ``eval_scenes``: held-out (test
    split) scenes, one pair each -- two views per scene for the monocular figures.
    """

    height: int = bounded(48, ge=8)
    width: int = bounded(64, ge=8)
    seed: int = bounded(1, ge=0)
    kind: str | None = "indoor"
    label_scenes: int = bounded(256, ge=1)
    label_views: int = bounded(4, ge=1)
    replay_scenes: int = bounded(256, ge=1)
    replay_views: int = bounded(4, ge=2)
    replay_pairs: int = bounded(4096, ge=1)
    self_frac: float = bounded(0.0, ge=0, le=1)
    eval_scenes: int = bounded(256, ge=2)
    pool: int = bounded(0, ge=0)  # 0 = the base card's pool


@dataclass
class FinetuneConfig:
    """Fin3R fine-tuning (one ``fin3r.train`` run): LoRA on the encoder, distillation + replay.

    ``steps`` optimizer steps, each on one single-source batch of ``batch_size``: a fraction
    ``mono_fraction`` of them distillation batches, the rest replay batches. Variants without
    distillation or without replay spend all their steps on the other source (equal steps).
    """

    steps: int = bounded(600, ge=1)
    mono_fraction: float = bounded(0.75, ge=0, le=1)
    batch_size: int = bounded(16, ge=1)
    lr: float = bounded(2e-3, gt=0)
    min_lr_frac: float = bounded(0.1, ge=0, le=1)
    warmup_steps: int = bounded(20, ge=0)
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])
    rank: int = bounded(8, ge=1)
    alpha: float = bounded(8.0, gt=0)
    mode: str | None = "weight_row"
    distill_weight: float = bounded(3.0, ge=0)
    replay_weight: float = bounded(1.0, ge=0)
    rho: str = "abs"
    lam: float = bounded(0.2, ge=0)


@dataclass
class DemoConfig:
    """``fin3r demo``: see :func:`run_demo`. ``base``: a fin3r model file ("" = the packaged
    ``fin3r/assets/demo_base.safetensors``); ``teacher``: a ``fin3r.teachers`` spec;
    ``threads``: torch threads (0 = measure 1 vs 2 and take the faster); ``jobs``: fine-tuning
    runs trained at once in worker processes of one thread each (0 = as many as there are cores
    and runs, unless two threads measured more than 1.8x faster than one); ``figure_views``:
    held-out views shown in the figure."""

    base: str = ""
    teacher: str = "oracle"
    out_dir: str = "runs/demo"
    seed: int = bounded(0, ge=0)
    threads: int = bounded(0, ge=0)
    jobs: int = bounded(0, ge=0)
    world: DemoWorldConfig = field(default_factory=DemoWorldConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    figure_views: int = bounded(4, ge=1)
    ablation: bool = False
    progress: bool = True


#: the variants of ``fin3r demo --ablation`` (all with the same steps, seed and data):
#: ``distill``/``replay``: which losses; ``mode``: the LoRA re-normalisation (``"config"`` = the
#: configured one). ``fin3r`` is the method; ``replay_only`` is the control every run includes.
VARIANTS: dict[str, dict] = {
    "replay_only": {"distill": False, "replay": True, "mode": "config",
                    "label": "control: replay only (no teacher)"},
    "naive_lora": {"distill": True, "replay": False, "mode": None, "label": "naive LoRA (distillation only)"},
    "lora_replay": {"distill": True, "replay": True, "mode": None, "label": "LoRA + replay"},
    "renorm_row_replay": {"distill": True, "replay": True, "mode": "weight_row",
                          "label": "re-norm LoRA (weight_row) + replay"},
    "renorm_output_replay": {"distill": True, "replay": True, "mode": "output",
                             "label": "re-norm LoRA (output) + replay"},
}
MAIN_VARIANTS = ("fin3r", "replay_only")
ABLATION_VARIANTS = ("replay_only", "naive_lora", "lora_replay", "renorm_row_replay", "renorm_output_replay")


def default_base_path():
    """The packaged base model (``fin3r/assets/demo_base.safetensors``)."""
    return files("fin3r") / "assets" / "demo_base.safetensors"


def load_base(path: str = ""):
    """``(model (fp32, eval), card dict)`` of the demo base (``""`` = the packaged asset)."""
    p = Path(str(default_base_path())) if not path else Path(path)
    if not p.is_file():
        raise CheckpointError(f"demo base model not found: {p} (make it with scripts/pretrain_world.py)")
    model = load_model(str(p)).float().eval()
    card_path = p.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return model, card


def variant_label(cfg: DemoConfig, name: str) -> str:
    """The display name of a variant."""
    if name == "fin3r":
        return f"Fin3R: re-norm LoRA ({cfg.finetune.mode}) + replay" if cfg.finetune.mode else "Fin3R: LoRA + replay"
    return VARIANTS[name]["label"]


__all__ = ["DemoWorldConfig", "FinetuneConfig", "DemoConfig", "VARIANTS", "MAIN_VARIANTS", "ABLATION_VARIANTS",
           "default_base_path", "load_base", "variant_label"]
