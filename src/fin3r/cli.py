"""The ``fin3r`` command: one subcommand per job, each implemented in ``fin3r.commands.<name>``.

Every command module exposes ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy dependencies
(torch, models) inside ``run`` so that ``fin3r --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("demo", "label", "train", "eval", "export", "infer", "view", "diagnose", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fin3r",
        description=(
            "Fin3R: sharpen the geometry of feed-forward 3D reconstruction models (DUSt3R, MASt3R, "
            "CUT3R, VGGT) by distilling a monocular teacher into their image encoder through "
            "re-normalized LoRA, with multi-view replay. `fin3r demo` runs the whole method on a "
            "synthetic world on the CPU; the other commands run each step on real checkpoints and data."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fin3r.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # clear one-line errors for expected failures
        from fin3r.errors import Fin3rError

        if isinstance(e, Fin3rError) and not args.verbose:
            print(f"fin3r {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
