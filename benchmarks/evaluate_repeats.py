"""How many noise draws does ``tdsnn evaluate`` need? The draw-to-draw spread of every point.

    python benchmarks/evaluate_repeats.py RUN_DIR [--draws 8] [--target 0.01] [--out FILE.json]

Evaluates every noisy test of ``tdsnn evaluate`` (weight noise, the noisy input degradations,
random channel pruning, lesions) on the run's whole test split with ``--draws`` noise draws per
level, and reports, per test, condition and level, the standard deviation of the accuracy
over draws and the standard error of a point averaged over R draws, ``sd / sqrt(R)``. It prints
the smallest R that brings every point's standard error under ``--target`` (default 1
accuracy point): the default of ``tdsnn evaluate --repeats``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

import numpy as np

from tdsnn.evaluate.runner import load_eval_run, run_test

NOISY_TESTS = ("weight-noise", "input-noise", "pruning-channels", "lesion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.01, help="standard error, accuracy")
    parser.add_argument("--layers", default="topographic")
    parser.add_argument("--out", help="JSON file for the per-point spreads")
    args = parser.parse_args()
    run = load_eval_run(args.run_dir, test_size=None, data_root=None, device="cpu", name="run",
                        layers=args.layers)  # fmt: skip
    spread = {}
    for test in NOISY_TESTS:
        draws = defaultdict(list)
        for row in run_test(test, run, repeats=args.draws):
            draws[(row["condition"], row["level"])].append(row["accuracy"])
        for (condition, level), values in draws.items():
            if len(values) > 1:
                spread[f"{test}/{condition}@{level:g}"] = float(np.std(values, ddof=1))
    worst_key = max(spread, key=spread.get)
    needed = max(1, math.ceil((spread[worst_key] / args.target) ** 2))
    for key, sd in sorted(spread.items(), key=lambda kv: -kv[1])[:8]:
        print(f"{key:45s} sd over draws {100 * sd:5.2f} points")
    print(f"test images: {len(run.labels)}; the widest point ({worst_key}) needs "
          f"{needed} draws for a standard error under {100 * args.target:g} point(s)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"test_images": len(run.labels), "draws": args.draws, "sd": spread,
                       "needed": needed, "target": args.target}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
