"""`fin3r train`: fine-tune a model's encoder with Fin3R (LoRA, distillation + replay)."""

from __future__ import annotations

import argparse

HELP = "fine-tune a model's encoder with Fin3R (LoRA, distillation + replay)"
DESCRIPTION = """Fin3R training: LoRA on the image encoder only, decoder and heads frozen; monocular
distillation from cached teacher labels mixed with multi-view replay. Config: YAML + key=value overrides."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r train` is not implemented yet")
