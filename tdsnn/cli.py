"""The ``tdsnn`` command line; each subcommand lives in :mod:`tdsnn.commands`.

User mistakes (:class:`tdsnn.errors.UserError`) are printed as one line with exit status 2;
set ``TDSNN_DEBUG=1`` to see their traceback, with the exception that caused them. A long
command stopped by Ctrl-C or SIGTERM (:class:`tdsnn.errors.Stopped`) says how to continue in one
line and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from tdsnn.commands import COMMANDS
from tdsnn.errors import Stopped, UserError
from tdsnn.fields import as_flags
from tdsnn.host_memory import keep_freed_memory

# The commands that follow the stop policy of tdsnn.runtime.StopSignals, and what their help says
LONG_COMMANDS = ("train", "record", "evaluate", "experiment", "sheet optimize")
STOP_NOTE = (
    "Ctrl-C or SIGTERM stops it at the next safe point with usable files and exit status 130; "
    "a second one at least 2 s later quits at once (README: Stopping a long command)."
)
# The commands whose stop message goes to stdout after a blank line, where their results go;
# the others prefix it with the command's name on stderr, beside their progress bars
STOPS_ON_STDOUT = ("train", "experiment")


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
            sub.set_defaults(long_command=name)  # the name its stop message gives
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
    keep_freed_memory()
    try:
        return _run(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a command's stop points
        print(f"tdsnn {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command's exit status: its own, 2 for a user mistake, 130 for a stop."""
    try:
        return args.func(args)
    except UserError as exc:
        if os.environ.get("TDSNN_DEBUG"):
            raise
        print(f"tdsnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
            _say_stopped(args.long_command, as_flags(str(exc), list(exc.continue_with)))
        return 130


def _say_stopped(command: str, message: str) -> None:
    """Print the stop ``message`` of the long ``command`` (e.g. ``sheet optimize``)."""
    if command in STOPS_ON_STDOUT:
        print(f"\n{message}")
    else:
        print(f"tdsnn {command}: {message}", file=sys.stderr)


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
