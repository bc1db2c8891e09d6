"""``tdsnn view FILE.h5 [FILE2.h5 ...] --out page.html | --serve [--port P]``: an interactive
map viewer of recordings in the browser (:mod:`tdsnn.view`)."""

from __future__ import annotations

import argparse
import contextlib
import warnings
from pathlib import Path

from tdsnn.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view", help="interactive browser viewer of recordings (offline HTML or loopback server)"
    )
    p.add_argument("recordings", nargs="+", help="HDF5 files written by tdsnn record")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the self-contained HTML file to write")
    where.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="port of --serve (0: any free port)")
    p.add_argument("--labels", help="comma-separated names of the recordings (default: stems)")
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'view.html'}"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    import tdsnn.record
    from tdsnn.view.page import labels_for

    paths = [Path(p) for p in args.recordings]
    labels = labels_for(paths, args.labels)
    if args.out:
        _check_out(Path(args.out))
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0 .. 65535)")
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore", tdsnn.record.IncompleteRecordingWarning)
        recs = [stack.enter_context(tdsnn.record.open(p)) for p in paths]
        for rec in recs:
            if not rec.complete:
                done = f"{rec.num_trials} of {rec.total_trials} trials"
                print(f"{rec.path}: {rec.state} after {done}; the page shows what it holds")
        if args.serve:
            return _serve(recs, labels, args.port)
        from tdsnn.view.page import write_page

        size = write_page(recs, labels, Path(args.out))
    print(f"wrote {args.out} ({size / 2**20:.1f} MB)")
    return 0


def _serve(recs: list, labels: list[str], port: int) -> int:
    from tdsnn.view.server import make_server

    server = make_server(port, recs, labels)
    host, bound = server.server_address[:2]
    print(f"serving http://{host}:{bound}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
