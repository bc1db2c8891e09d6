"""``tdsnn record RUN_DIR --stimuli ... --out FILE.h5``: record a trained run's spikes (and
membrane traces), or a ReLU run's activations, to probe stimuli (:mod:`tdsnn.record`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from tdsnn.choices import PROBE_KINDS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "record", help="record a trained run's responses to probe stimuli into an HDF5 file"
    )
    p.add_argument("run_dir", help="run directory written by tdsnn train")
    stimuli = (
        "gratings (orientation x frequency x phase), categories (N test images per class), "
        "dataset (the test split), natural (scikit-image faces)"
    )
    p.add_argument("--stimuli", choices=PROBE_KINDS, default="gratings", help=stimuli)
    p.add_argument("--areas", help="comma-separated areas to record, e.g. v1,it (default: all)")
    p.add_argument("--membrane", action="store_true",
                   help="also record membrane potentials (LIF units only)")  # fmt: skip
    p.add_argument("--membrane-units", type=int, default=256,
                   help="units per area whose membrane is recorded (default 256)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="trials simulated at a time")
    p.add_argument("--per-class", type=int, default=16, help="images per class (categories)")
    p.add_argument("--limit", type=int, help="first N test images (dataset)")
    p.add_argument("--data-root", help="dataset folder (default: the run's)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dt-ms", type=float, default=1.0, help="ms per simulation step")
    p.add_argument("--seed", type=int, default=0, help="membrane units and rate coding")
    p.add_argument("--out", required=True, help="the HDF5 file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out (only once the new recording is complete)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted recording of --out (same options)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tdsnn.fields import flag_errors, from_args
    from tdsnn.record.options import RecordOptions

    if not args.membrane:
        args.membrane_units = None
    opts = from_args(RecordOptions, args)  # the library's checks in the flags' names, no torch

    from tdsnn.record import record_run
    from tdsnn.runtime import select_device

    names = ("out", "stimuli", "areas", "overwrite", "resume", "dt_ms", "membrane_units")
    with flag_errors(*names):  # the library's messages in the flags' names
        result = record_run(
            args.run_dir,
            args.out,
            stimuli=args.stimuli,
            areas=args.areas,
            **asdict(opts),  # batch_size, per_class, membrane_units, limit, dt_ms, seed
            device=select_device(args.device),
            data_root=args.data_root,
            which=args.checkpoint,
            overwrite=args.overwrite,
            resume=args.resume,
            quiet=args.quiet,
        )
    if result.responses == "rates":
        areas = ", ".join(result.spikes)
        print(f"wrote {result.path}: {result.trials} trials; ReLU activations of {areas}")
    else:
        spikes = ", ".join(f"{area} {n:,}" for area, n in result.spikes.items())
        print(f"wrote {result.path}: {result.trials} trials; spike events {spikes}")
    return 0
