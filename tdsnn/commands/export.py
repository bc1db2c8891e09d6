"""``tdsnn export``: a recording for the electrophysiology tool chain
(``FILE.h5 --format nwb|neo``, :mod:`tdsnn.record.nwb_neo`), or a trained network for the
neuromorphic one (``RUN_DIR --format nir``, :mod:`tdsnn.nir`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tdsnn.errors import ConfigError
from tdsnn.fields import flag_errors
from tdsnn.paths import check_run_dir

RECORDING_FORMATS = ("nwb", "neo")
NETWORK_FORMATS = ("nir",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="convert a spike recording to NWB or neo, or a trained network to NIR"
    )
    p.add_argument(
        "source",
        metavar="FILE.h5|RUN_DIR",
        help="HDF5 file written by tdsnn record, or a run directory (network export)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=RECORDING_FORMATS + NETWORK_FORMATS,
        help="nwb (pynwb Units + trials) or neo (a pickled Block, .pkl) for a "
        "recording; nir (the network as a NIR graph) for a run directory",
    )
    p.add_argument("--out", required=True, help="file to write (.nwb, .pkl for neo, .nir)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default=None,
        help="network export: the run's checkpoint to export (default best)",
    )
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="network export: read the file back with each installed peer "
        "(snntorch, spikingjelly), run it on the first N test images and "
        "report how its spikes and predictions agree with tdsnn's",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if args.format in NETWORK_FORMATS:
        if source.exists() and not source.is_dir():
            raise ConfigError(
                f"--format {args.format} exports a trained network: pass a run directory, got "
                f"the file {source} (recordings export as {' or '.join(RECORDING_FORMATS)})"
            )
        if args.verify < 0:
            raise ConfigError(f"--verify takes a number of images >= 0, got {args.verify}")
        check_run_dir(source, must_exist=True)
        return _export_network(args, source)
    if source.is_dir():
        raise ConfigError(
            f"{source} is a run directory: a trained network exports as --format nir; "
            f"--format {args.format} converts a recording (FILE.h5)"
        )
    for option in ("checkpoint", "verify"):
        if getattr(args, option):
            raise ConfigError(f"--{option} applies to a network export (RUN_DIR --format nir)")
    from tdsnn.record.nwb_neo import export_recording

    with flag_errors("out", "overwrite"):  # the library's messages in the flags' names
        out = export_recording(source, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _export_network(args: argparse.Namespace, run_dir: Path) -> int:
    from tdsnn.nir.writer import export_run
    from tdsnn.peers.roundtrip import verify_export

    which = args.checkpoint or "best"
    with flag_errors("out", "overwrite"):
        result = export_run(run_dir, args.out, which=which, overwrite=args.overwrite)
    print(
        f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, {which} checkpoint of "
        f"{run_dir}) in {result.seconds:.2f} s"
    )
    if args.verify:
        for line in verify_export(run_dir, result.path, which=which, images=args.verify):
            print(line)
    return 0
