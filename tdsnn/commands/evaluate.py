"""``tdsnn evaluate RUN_DIR [RUN_DIR ...] --out DIR``: robustness to weight noise, input
degradation, pruning (of weights and of whole channels), lesions, adversarial attacks and, for
LIF runs, perturbed spike timing, and representation and efficiency metrics
(:mod:`tdsnn.evaluate`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from tdsnn.evaluate.options import NAMED_TESTS, TESTS, EvaluateOptions
from tdsnn.fields import flag_errors, from_args
from tdsnn.paths import check_run_dir

QUICK_TEST_SIZE = 512
QUICK_REPEATS = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from tdsnn.choices import EVALUATE_REPEATS as DEFAULT_REPEATS

    p = subparsers.add_parser("evaluate", help="robustness and representation tests of runs")
    p.add_argument("run_dirs", nargs="+", help="run directories written by tdsnn train")
    p.add_argument(
        "--tests",
        help=f"comma-separated, default every one but {','.join(NAMED_TESTS)} (weight noise at "
        "its other scales, and the temporal tests, on LIF runs), which run when named: "
        f"{','.join(TESTS)}",
    )
    p.add_argument("--levels", help="comma-separated levels for every chosen test")
    p.add_argument(
        "--layers",
        default="topographic",
        help="layers that weight noise, pruning, lesions and spike perturbations touch, and "
        "where pre-activation metrics are taken: topographic (default: those the run's loss "
        "acts on), all, or names such as V1,IT,readout",
    )
    p.add_argument(
        "--repeats", type=int, help=f"noise draws per noisy level (default {DEFAULT_REPEATS})"
    )
    p.add_argument("--test-size", type=int, help="test images per run (default: the whole split)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a first look: 512 test images and 2 draws per noisy level (unless given)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-root", help="dataset folder (default: each run's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for CSVs, metrics.json, figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tdsnn.errors import ConfigError

    levels = None
    if args.levels:
        try:
            levels = tuple(float(v) for v in args.levels.split(",") if v.strip())
        except ValueError as exc:
            raise ConfigError(
                f"--levels must be comma-separated numbers, got {args.levels!r}"
            ) from exc
    if args.quick:
        args.test_size = QUICK_TEST_SIZE if args.test_size is None else args.test_size
        args.repeats = QUICK_REPEATS if args.repeats is None else args.repeats
    if args.repeats is None:
        args.repeats = EvaluateOptions.repeats
    sizes = from_args(EvaluateOptions, args)  # checked before torch loads
    for run_dir in args.run_dirs:
        check_run_dir(run_dir, must_exist=True)
    layers = args.layers.strip()
    if layers not in ("topographic", "all"):
        layers = tuple(v.strip() for v in layers.split(",") if v.strip())
    from tdsnn.evaluate.report import evaluate_runs, parse_tests
    from tdsnn.runtime import select_device

    with flag_errors("out", "tests", "levels", "layers"):  # the flags' names
        metrics = evaluate_runs(
            args.run_dirs,
            args.out,
            tests=parse_tests(args.tests),
            levels=levels,
            layers=layers,
            **asdict(sizes),  # repeats, test_size, batch_size
            data_root=args.data_root,
            device=select_device(args.device),
            seed=args.seed,
            quiet=args.quiet,
        )
    print(
        f"wrote {args.out}/report.md, metrics.json, CSVs and figures ({metrics['seconds']:.0f} s)"
    )
    return 0
