"""`fin3r eval`: evaluate a model (optionally with an adapter) on the paper's benchmarks."""

from __future__ import annotations

import argparse

HELP = "evaluate a model (optionally with an adapter) on the paper's benchmarks"
DESCRIPTION = """Monocular depth (AbsRel, delta1), relative pose (AUC@5/10/20), multi-view depth and pointmaps."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r eval` is not implemented yet")
