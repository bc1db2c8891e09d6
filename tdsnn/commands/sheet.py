"""``tdsnn sheet optimize RUN_DIR``: TDANN's swap pre-optimisation of a trained run's sheets
(:mod:`tdsnn.sheet_optimize`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tdsnn.fields import flag_errors, from_args
from tdsnn.options import SwapOptions
from tdsnn.paths import check_run_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sheet", help="cortical sheets of a run")
    actions = p.add_subparsers(dest="action", required=True)
    opt = actions.add_parser(
        "optimize", help="swap-optimise a trained run's sheets on grating responses (TDANN)"
    )
    opt.add_argument("run_dir", help="run directory written by tdsnn train")
    opt.add_argument(
        "--steps", type=int, default=None,
        help="neighbourhoods per area (default: TDANN's, about 50 visits per unit)",
    )  # fmt: skip
    opt.add_argument("--swaps-per-step", type=int, default=500, help="swap proposals each")
    opt.add_argument("--areas", help="comma-separated areas (default: every area)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--quiet", action="store_true")
    opt.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = from_args(SwapOptions, args)  # checked before torch loads
    check_run_dir(args.run_dir, must_exist=True)
    areas = tuple(a.strip() for a in args.areas.split(",") if a.strip()) if args.areas else None
    from tdsnn.sheet_optimize import optimize_run_sheets

    with flag_errors("areas"):  # the library's messages in the flags' names
        report = optimize_run_sheets(
            args.run_dir, steps=options.steps, swaps_per_step=options.swaps_per_step,
            areas=areas, seed=options.seed, quiet=args.quiet,
        )  # fmt: skip
    for area, losses in report.items():
        print(
            f"{area}: rate loss on gratings {losses['rate_loss_before']:.4f} -> "
            f"{losses['rate_loss_after']:.4f}"
        )
    sheets = Path(args.run_dir) / "sheets.pt"
    print(f"wrote {sheets}; train on it with --sheets {sheets}")
    return 0
