"""`fin3r label`: run a monocular teacher once per image and cache its depth labels."""

from __future__ import annotations

import argparse

HELP = "run a monocular teacher once per image and cache its depth labels"
DESCRIPTION = """Pseudo-label cache: runs a teacher (moge, hf:<folder>, oracle) on a folder or tar shards of
images and stores depth, mask and a sidecar JSON per image. Sharded and resumable."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r label` is not implemented yet")
