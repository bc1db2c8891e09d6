"""What does topography buy? Train none, WS, AS and STC alike, then evaluate them together.

    python benchmarks/robustness.py --out runs/topography [--dataset mnist --data-root DIR]

Trains the default stack (``v1-v4-it``) with ``--topo none``, ``ws``, ``as`` and ``stc`` on the
same seed and budget (on ``shapes`` unless ``--dataset`` and ``--data-root`` are given), then
runs ``tdsnn evaluate`` on all four (every test, every layer: the four losses act on different
layers) into ``OUT/robustness``. Every step is a
``tdsnn`` command, printed before it runs; a run whose ``summary.json`` exists is reused (so
``benchmarks/topography.py`` and this script can share ``none`` and ``stc`` runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from topography import tdsnn  # the command runner of benchmarks/topography.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/topography"))
    parser.add_argument("--dataset", default="shapes", choices=("shapes", "mnist", "cifar10"))
    parser.add_argument("--data-root")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--train-size", default="8000")
    parser.add_argument("--test-size", default="256", help="test images per evaluation")
    args = parser.parse_args()
    out = args.out if args.dataset == "shapes" else args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    common = ["--area-stack", "v1-v4-it", "--epochs", args.epochs, "--seed", args.seed,
              "--train-size", args.train_size, "--dataset", args.dataset, "--quiet"]  # fmt: skip
    if args.data_root:
        common += ["--data-root", args.data_root]
    names = ("none", "ws", "as", "stc")
    for name in names:
        if not (out / name / "summary.json").exists():
            tdsnn("train", *common, "--topo", name, "--out", str(out / name))
    tdsnn("evaluate", *(str(out / n) for n in names), "--test-size", args.test_size,
          "--layers", "all", "--quiet", "--out", str(out / "robustness"))  # fmt: skip


if __name__ == "__main__":
    main()
