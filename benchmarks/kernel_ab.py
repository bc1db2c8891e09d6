"""Time the fused batch-norm + LIF CPU ops of one build of the library on V1's shape.

    python benchmarks/kernel_ab.py [LIBRARY.so] [--threads N]

``LIBRARY.so``: a built ``tdsnn_ops.so`` (default: this checkout's, built if needed). One
library per process (two would register the same ops), so an A/B runs this twice, alternating
builds. Prints the best of 3 rounds of 20 calls for ``bn_lif_stats``, ``bn_lif_forward`` and
``bn_lif_backward`` (training, no shortcut) on ``y [4, 64, 16, 24, 24]`` float32, the default
run's V1 at batch 64, in ms.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", nargs="?", help="a built tdsnn_ops.so")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.library:
        torch.ops.load_library(args.library)
    else:
        from tdsnn.ops.build import build_kernels

        build_kernels(cuda=False)
    torch.set_num_threads(args.threads)

    from tdsnn.neurons import LIF
    from tdsnn.ops.lif import lif_op_args

    generator = torch.Generator().manual_seed(0)
    y = torch.randn(4, 64, 16, 24, 24, generator=generator)
    grad = torch.randn(y.shape, generator=generator)
    weight = torch.rand(16, generator=generator) + 0.5
    bias = torch.randn(16, generator=generator) * 0.1
    lif = lif_op_args(LIF().params)
    mean, var = torch.ops.tdsnn.bn_lif_stats(y)
    invstd = (var + 1e-5).rsqrt()
    ops = {
        "stats": lambda: torch.ops.tdsnn.bn_lif_stats(y),
        "forward": lambda: torch.ops.tdsnn.bn_lif_forward(
            y, mean, invstd, weight, bias, None, True, *lif, False
        ),
        "backward": lambda: torch.ops.tdsnn.bn_lif_backward(
            grad, None, y, mean, invstd, weight, bias, None, True, *lif
        ),
    }
    best = {name: float("inf") for name in ops}
    for _ in range(3):
        for name, op in ops.items():
            op()
            for _ in range(20):
                start = time.perf_counter()
                op()
                best[name] = min(best[name], time.perf_counter() - start)
    print(
        f"{args.threads} thread(s): " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items())
    )


if __name__ == "__main__":
    main()
