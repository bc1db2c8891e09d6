"""``tdsnn analyze FILE.h5 [FILE2.h5 ...] --out DIR``: topography metrics, figures and a
report from recordings (:mod:`tdsnn.analysis`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="topography metrics, figures and a report from recordings"
    )
    p.add_argument("recordings", nargs="+", help="HDF5 files written by tdsnn record")
    p.add_argument("--out", required=True, help="folder for metrics.json, figures, report.md")
    p.add_argument("--labels", help="comma-separated names of the recordings (default: stems)")
    p.add_argument("--seed", type=int, default=0, help="pair and unit sampling")
    p.add_argument("--smooth-mm", type=float, default=None,
                   help="Gaussian sigma (mm) of the orientation maps, 0 for none (default: "
                        "0.75 of each area's hypercolumn width)")  # fmt: skip
    p.add_argument("--nulls", type=int, default=20,
                   help="surrogate maps per null kind that every map metric is compared with "
                        "(default 20)")  # fmt: skip
    p.add_argument("--pinwheel-kernels", default="0.25,0.5,0.75,1,1.25,1.5",
                   help="map kernels (sigma, in hypercolumn widths) of the pinwheel-density "
                        "curve (default 0.25,0.5,0.75,1,1.25,1.5)")  # fmt: skip
    p.add_argument("--keep-border", action="store_true",
                   help="keep the units whose receptive field overlaps the image border in the "
                        "map metrics (left out by default)")  # fmt: skip
    p.set_defaults(func=run)


def _kernels(text: str) -> tuple[float, ...]:
    from tdsnn.errors import ConfigError

    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--pinwheel-kernels must be comma-separated hypercolumn widths, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import math
    import sys
    import warnings

    from tdsnn.analysis.report import analyze_files
    from tdsnn.errors import ConfigError
    from tdsnn.record import IncompleteRecordingWarning

    if args.smooth_mm is not None and not (math.isfinite(args.smooth_mm) and args.smooth_mm >= 0):
        raise ConfigError(
            f"--smooth-mm must be a number of mm >= 0 (0: none), got {args.smooth_mm}"
        )

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IncompleteRecordingWarning)
        metrics = analyze_files(
            args.recordings,
            args.out,
            labels=labels,
            seed=args.seed,
            smooth_mm=args.smooth_mm,
            nulls=args.nulls,
            keep_border=args.keep_border,
            kernels=_kernels(args.pinwheel_kernels),
        )
    for warning in caught:  # an interrupted recording, or one still being written: one line
        if issubclass(warning.category, IncompleteRecordingWarning):
            print(f"tdsnn analyze: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    from tdsnn.analysis.report import scorecard_lines

    for line in scorecard_lines(metrics):
        print(line)
    print(f"wrote {args.out}/report.md, metrics.json and figures ({metrics['seconds']:.1f} s)")
    return 0
