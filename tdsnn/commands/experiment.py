"""``tdsnn experiment``: arms x paired seeds, trained, measured and compared with intervals and
corrected verdicts (:mod:`tdsnn.experiment`).

    tdsnn experiment SPEC.yaml --out DIR                 train, measure, report
    tdsnn experiment report DIR [--spec SPEC.yaml]       recompute the statistics and report
    tdsnn experiment SPEC.yaml --plan PILOT_DIR          paired seeds each direction needs
"""

from __future__ import annotations

import argparse
import math

from tdsnn.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="train arms x paired seeds, measure them, compare with CIs",
        description="Train arms x paired seeds, measure them and compare them (SPEC --out DIR); "
        "recompute an experiment's statistics and report from its results.csv (report DIR); "
        "or plan the seeds a spec needs from a pilot (SPEC --plan PILOT_DIR).",
    )
    p.add_argument("spec", help="experiment spec (YAML; see configs/experiments/), or 'report'")
    p.add_argument("folder", nargs="?", help="with 'report': the experiment folder")
    p.add_argument("--out", help="experiment folder (run again to continue)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained or measured at once")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--arms", metavar="A,B,...", help="only these arms: a part of the "
                   "experiment (parts share --out; a call without --arms reports all)")  # fmt: skip
    p.add_argument("--spec", dest="spec_file", help="with 'report': the spec (default: the one "
                   "the folder's experiment.json names)")  # fmt: skip
    p.add_argument("--plan", metavar="PILOT_DIR", help="print the paired seeds each direction "
                   "needs, from a pilot experiment's results.csv")  # fmt: skip
    p.add_argument("--effect", action="append", metavar="X|NAME=X", help="with --plan: the "
                   "effect to detect, in the measure's units, for every direction or the one "
                   "named (repeatable; default: the pilot's own mean difference)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.spec == "report":
        return _report(args)
    if args.folder is not None:
        raise ConfigError(f"unexpected argument {args.folder!r}; did you mean --out "
                          f"{args.folder} or 'tdsnn experiment report {args.folder}'?")  # fmt: skip
    if args.plan is not None:
        return _plan(args)
    if args.effect or args.spec_file:
        raise ConfigError("--effect goes with --plan, --spec with 'report'")
    arms = None
    if args.arms is not None:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms:
            raise ConfigError("--arms takes arm names separated by commas, e.g. --arms none,stc")
    if args.out is None:
        raise ConfigError("tdsnn experiment SPEC needs --out DIR (or --plan PILOT_DIR)")
    from tdsnn.experiment.runner import run_experiment

    summary = run_experiment(args.spec, args.out, jobs=args.jobs, quiet=args.quiet, arms=arms)
    if summary:
        print(f"wrote {args.out}/results.csv, summary.json and report.md")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tdsnn.experiment.results import report_experiment

    if args.folder is None:
        raise ConfigError("tdsnn experiment report needs the experiment folder: report DIR")
    report_experiment(args.folder, args.spec_file)
    print(f"wrote {args.folder}/summary.json and report.md")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from tdsnn.experiment.results import plan_seeds

    rows = plan_seeds(args.spec, args.plan, args.effect)
    print(f"paired seeds for 80 % power, from the pilot {args.plan}:")
    print(f"{'direction':<32} {'measure':<48} {'pilot n':>7} {'pilot effect':>12} "
          f"{'paired sd':>10} {'effect':>10} {'alpha':>7} {'seeds':>7}")  # fmt: skip
    for r in rows:
        num = {k: f"{r[k]:.4g}" if math.isfinite(r.get(k, math.nan)) else "–"
               for k in ("pilot_effect", "sd", "effect")}  # fmt: skip
        seeds = str(r["needed"]) if r["needed"] is not None else f"– ({r['note']})"
        name = r["name"] + ("" if r["primary"] else " (expl.)")
        print(f"{name:<32} {r['key']:<48} {r['n']:>7} {num['pilot_effect']:>12} "
              f"{num['sd']:>10} {num['effect']:>10} {r['alpha']:>7.3g} {seeds:>7}")  # fmt: skip
    return 0
