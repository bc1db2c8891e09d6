"""The ``tdsnn`` command line; each subcommand lives in :mod:`tdsnn.commands`.

User mistakes (:class:`tdsnn.errors.UserError`) are printed as one line with a non-zero exit;
set ``TDSNN_DEBUG=1`` to see their traceback, with the exception that caused them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from tdsnn.commands import COMMANDS
from tdsnn.errors import UserError

# The commands that follow the stop policy of tdsnn.runtime.StopSignals, and what their help says
LONG_COMMANDS = ("train", "record", "evaluate", "experiment", "sheet optimize")
STOP_NOTE = (
    "Ctrl-C or SIGTERM stops it at the next safe point with usable files and exit status 130; "
    "a second one at least 2 s later quits at once (README: Stopping a long command)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdsnn", description="Topographic deep spiking neural networks of the ventral stream."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for name, sub in _commands(parser):
        if name in LONG_COMMANDS:
            sub.epilog = STOP_NOTE
    return parser


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(name, parser)`` of every command and subcommand, e.g. ``("sheet optimize", ...)``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from _commands(sub, prefix + name + " ")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if os.environ.get("TDSNN_DEBUG"):
            raise
        print(f"tdsnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a command's stop points
        print(f"tdsnn {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``tdsnn`` program: :func:`main`, then exit with its status.

    Once the command has finished, Ctrl-C and SIGTERM are ignored while the interpreter shuts
    down, so a late signal cannot turn a completed command into a kill.
    """
    code = main()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
