"""How many noise draws does ``tdsnn evaluate`` need? The draw-to-draw spread of every point.

    python benchmarks/evaluate_repeats.py RUN_DIR [--draws 8] [--target 0.01] [--out FILE.json]
    python benchmarks/evaluate_repeats.py EVALUATE_OUT_DIR [--target 0.01] [--out FILE.json]

Given a run directory, evaluates every noisy test of ``tdsnn evaluate`` (weight noise, the
noisy input degradations, random channel pruning, lesions) on the run's whole test split with
``--draws`` noise draws per level. Given the folder ``tdsnn evaluate`` wrote (its per-test
CSVs hold every draw), reads the draws from there instead of evaluating again.

Reports, per test, condition and level, the standard deviation of the accuracy over draws and
the standard error of a point averaged over R draws, ``sd / sqrt(R)``. It prints the smallest
R that brings every point's standard error under ``--target`` (default 1 accuracy point): the
default of ``tdsnn evaluate --repeats``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from tdsnn.evaluate.runner import load_eval_run, run_test

NOISY_TESTS = ("weight-noise", "input-noise", "pruning-channels", "lesion")


def evaluated_rows(run_dir: str, draws: int, layers: str) -> tuple[list[dict], int]:
    """Rows of every noisy test on the run's whole test split; and the number of images."""
    run = load_eval_run(run_dir, test_size=None, data_root=None, device="cpu", name="run",
                        layers=layers)  # fmt: skip
    rows = [row for test in NOISY_TESTS for row in run_test(test, run, repeats=draws)]
    return rows, len(run.labels)


def reported_rows(folder: Path) -> tuple[list[dict], int | None]:
    """Rows of the noisy tests from the CSVs of a ``tdsnn evaluate`` output folder."""
    rows = []
    for test in NOISY_TESTS:
        path = folder / f"{test}.csv"
        if path.is_file():
            with path.open() as f:
                rows += [dict(r, level=float(r["level"]), accuracy=float(r["accuracy"]))
                         for r in csv.DictReader(f)]  # fmt: skip
    settings = json.loads((folder / "metrics.json").read_text()).get("settings", {})
    return rows, settings.get("test_images")


def draw_spreads(rows: list[dict]) -> dict[str, float]:
    """Per (run, test, condition, level) with more than one draw: the sd of accuracy over draws."""
    draws = defaultdict(list)
    for row in rows:
        draws[(row["run"], row["test"], row["condition"], row["level"])].append(row["accuracy"])
    return {f"{run}: {test}/{condition}@{level:g}": float(np.std(values, ddof=1))
            for (run, test, condition, level), values in draws.items()
            if len(values) > 1}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run directory, or the folder tdsnn evaluate wrote")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.01, help="standard error, accuracy")
    parser.add_argument("--layers", default="topographic")
    parser.add_argument("--out", help="JSON file for the per-point spreads")
    args = parser.parse_args()
    source = Path(args.source)
    if (source / "metrics.json").is_file():
        rows, images = reported_rows(source)
    else:
        rows, images = evaluated_rows(args.source, args.draws, args.layers)
    spread = draw_spreads(rows)
    if not spread:
        raise SystemExit(f"{source}: no point has more than one noise draw")
    worst_key = max(spread, key=spread.get)
    needed = max(1, math.ceil((spread[worst_key] / args.target) ** 2))
    for key, sd in sorted(spread.items(), key=lambda kv: -kv[1])[:8]:
        print(f"{key:50s} sd over draws {100 * sd:5.2f} points")
    print(f"test images: {images}; the widest point ({worst_key}) needs "
          f"{needed} draws for a standard error under {100 * args.target:g} point(s)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"test_images": images, "sd": spread, "needed": needed,
                       "target": args.target}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
