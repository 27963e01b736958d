"""`fin3r demo`: run Fin3R end to end on the synthetic world (CPU, no downloads)."""

from __future__ import annotations

import argparse

HELP = "run Fin3R end to end on the synthetic world (CPU, no downloads)"
DESCRIPTION = """Pre-trained base model -> teacher labels -> Fin3R fine-tuning (re-normalized LoRA on the
encoder + multi-view replay) -> evaluation before and after, on the synthetic world that
fin3r ships. Writes runs/demo/report.md, report.json and a figure."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r demo` is not implemented yet")
