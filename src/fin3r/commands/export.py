"""`fin3r export`: merge an adapter into its base model and write the official checkpoint format."""

from __future__ import annotations

import argparse

HELP = "merge an adapter into its base model and write the official checkpoint format"
DESCRIPTION = """Merges weight-mode adapters into the base weights (zero inference overhead) and writes a
checkpoint the original repositories load; output-mode adapters are written with the base's hash."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from fin3r.errors import Fin3rError

    raise Fin3rError("`fin3r export` is not implemented yet")
