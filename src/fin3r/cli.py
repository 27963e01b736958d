"""The ``fin3r`` command: one subcommand per job, each implemented in ``fin3r.commands.<name>``.

Every command module exposes ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy dependencies
(torch, models) inside ``run`` so that ``fin3r --help`` stays fast.

Errors end in one line on stderr and a non-zero exit code, never a traceback: ``fin3r X: error:
...`` (exit 2) for bad input -- a :class:`fin3r.errors.Fin3rError`, which names the file, key or
option and what is allowed -- and ``fin3r X: unexpected error: ...`` (exit 1) for anything else.
``--debug`` (before or after the command name) shows the traceback instead.
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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
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
    except Exception as e:  # one line, never a traceback (unless --debug)
        from fin3r.errors import Fin3rError

        if args.debug:
            raise
        if isinstance(e, Fin3rError):
            print(f"fin3r {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        if isinstance(e, (OSError, MemoryError, RecursionError)):  # disk full, permissions, exhausted
            print(f"fin3r {args.command}: error: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
            return 1
        print(f"fin3r {args.command}: unexpected error: {type(e).__name__}: {_one_line(str(e))} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
