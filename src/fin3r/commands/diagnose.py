"""`fin3r diagnose`: encoder feature-norm statistics, base vs adapted model."""

from __future__ import annotations

import argparse

HELP = "encoder feature-norm statistics, base vs adapted model"
DESCRIPTION = """The paper's drift signal: mean norm of the encoder tokens the frozen decoder consumes,
for the base and the adapted model, with a histogram PNG and a JSON."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r diagnose` is not implemented yet")
