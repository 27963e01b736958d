"""`fin3r infer`: predict depth, confidence and point clouds for images."""

from __future__ import annotations

import argparse

HELP = "predict depth, confidence and point clouds for images"
DESCRIPTION = """Images in; 16-bit depth PNG, colour depth PNG, confidence and a coloured .ply out."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r infer` is not implemented yet")
