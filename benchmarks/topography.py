"""Does the topographic loss make topography? Train, record and analyse side by side.

    python benchmarks/topography.py --out runs/topography [--epochs 3] [--seed 0]

Trains the default stack (``v1-v4-it`` on ``shapes``) three times with the same seed and
budget: ``--topo none``, ``--topo stc``, and ``--topo stc`` on sheets swap-optimised on the
``none`` network's grating responses (TDANN's position pre-optimisation, ``tdsnn sheet
optimize``); records gratings and categories from each, and writes ``tdsnn analyze`` of all
six recordings to ``OUT/analysis`` (report.md, metrics.json, figures). Every step is a
``tdsnn`` command, printed before it runs; a step whose output exists is skipped, so an
interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def tdsnn(*args: str) -> None:
    command = [sys.executable, "-m", "tdsnn", *args]
    print("+", shlex.join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/topography"))
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--train-size", default="8000")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = ["--area-stack", "v1-v4-it", "--epochs", args.epochs, "--seed", args.seed,
              "--train-size", args.train_size, "--quiet"]  # fmt: skip
    runs = {"none": ["--topo", "none"], "stc": ["--topo", "stc"]}
    for name, topo in runs.items():
        if not (out / name / "summary.json").exists():
            tdsnn("train", *common, *topo, "--out", str(out / name))
    sheets = out / "none" / "sheets.pt"
    if not sheets.exists():
        tdsnn("sheet", "optimize", str(out / "none"), "--quiet")
    if not (out / "stc-swap" / "summary.json").exists():
        tdsnn("train", *common, "--topo", "stc", "--sheets", str(sheets),
              "--out", str(out / "stc-swap"))  # fmt: skip
    files, labels = [], []
    for name in ("none", "stc", "stc-swap"):
        for stimuli in ("gratings", "categories"):
            path = out / f"{name}-{stimuli}.h5"
            if not path.exists():
                tdsnn("record", str(out / name), "--stimuli", stimuli, "--quiet",
                      "--out", str(path))  # fmt: skip
            files.append(str(path))
            labels.append(f"{name} {stimuli}")
    tdsnn("analyze", *files, "--labels", ",".join(labels), "--out", str(out / "analysis"))


if __name__ == "__main__":
    main()
