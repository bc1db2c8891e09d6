"""``tdsnn export FILE.h5 --format nwb|neo --out PATH``: convert a recording for the
electrophysiology tool chain (:mod:`tdsnn.record.export`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="convert a spike recording to NWB or neo")
    p.add_argument("recording", help="HDF5 file written by tdsnn record")
    p.add_argument("--format", required=True, choices=("nwb", "neo"),
                   help="nwb (pynwb Units + trials) or neo (a pickled Block, .pkl)")  # fmt: skip
    p.add_argument("--out", required=True, help="file to write (.nwb, or .pkl for neo)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tdsnn.record.export import export_recording

    out = export_recording(args.recording, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
