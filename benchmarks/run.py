"""Throughput benchmarks: the same code and options as ``tdsnn bench`` (see ``--help``).

python benchmarks/run.py --out DIR                   # CUDA: lif, pairs, step; CPU: cpu-step
python benchmarks/run.py --suite cpu-step --out DIR
python benchmarks/run.py --device cpu --quick --out DIR
"""

from __future__ import annotations

import sys

from tdsnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
