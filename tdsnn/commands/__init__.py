"""One module per ``tdsnn`` subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

:mod:`tdsnn.cli` registers every module listed in :data:`COMMANDS`; a new subcommand is a new
module here and one more entry in that list.
"""

from tdsnn.commands import (
    analyze,
    bench,
    evaluate,
    experiment,
    export,
    import_run,
    info,
    record,
    sheet,
    train,
    view,
)

COMMANDS = (
    train,
    experiment,
    sheet,
    record,
    export,
    analyze,
    evaluate,
    import_run,
    info,
    bench,
    view,
)

__all__ = ["COMMANDS"]
