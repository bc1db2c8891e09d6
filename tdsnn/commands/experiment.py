"""``tdsnn experiment SPEC.yaml --out DIR``: arms x paired seeds, trained, measured and
compared with confidence intervals (:mod:`tdsnn.experiment`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment", help="train arms x paired seeds, measure them, compare with CIs"
    )
    p.add_argument("spec", help="experiment spec (YAML; see configs/experiments/)")
    p.add_argument("--out", required=True, help="experiment folder (run again to continue)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained or measured at once")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tdsnn.experiment.runner import ExperimentStopped, run_experiment

    try:
        summary = run_experiment(args.spec, args.out, jobs=args.jobs, quiet=args.quiet)
    except ExperimentStopped:
        print(
            f"\nexperiment stopped; its runs saved where they were. Continue with: "
            f"tdsnn experiment {args.spec} --out {args.out}"
        )
        return 130
    if summary:
        print(f"wrote {args.out}/results.csv, summary.json and report.md")
    return 0
