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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdsnn", description="Topographic deep spiking neural networks of the ventral stream."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if os.environ.get("TDSNN_DEBUG"):
            raise
        print(f"tdsnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop
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
