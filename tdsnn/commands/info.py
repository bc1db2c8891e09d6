"""``tdsnn info``: versions, devices and which op implementations run (for bug reports).

``tdsnn info --build-kernels`` compiles the CPU kernels, then the CUDA kernels (or loads them
from the cache), prints the build times and where they are, and exits 0 only if both built; the
CUDA part needs ``nvcc`` and a CUDA build of torch, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="versions, device and kernel status (for bug reports)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument(
        "--build-kernels",
        action="store_true",
        help="compile the CPU and CUDA kernels now (no GPU needed), report the builds; exit 1 "
        "if one fails",
    )
    p.add_argument("--verbose", action="store_true", help="with --build-kernels: compiler output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tdsnn.info import collect_info

    build = _build(args.verbose) if args.build_kernels else None
    info = collect_info()
    if build is not None:
        info["kernel build"] = build
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 1 if build is not None and "failed:" in build else 0


def _build(verbose: bool) -> str:
    """Build (or load) the CPU library, then the CUDA one; what happened to each."""
    from tdsnn import ops

    done = []
    for cuda, kind in ((False, "CPU"), (True, "CUDA")):
        try:
            result = ops.load_kernels(verbose=verbose, cuda=cuda)
        except ops.KernelBuildError as exc:
            print(f"tdsnn info: kernel build failed: {exc}", file=sys.stderr)
            return "; ".join([*done, f"{kind} failed: {exc}"])
        how = f"compiled in {result.seconds:.1f} s" if result.compiled else "loaded from the cache"
        target = f"sm_{result.arch.replace('.', '')}" if cuda else "the CPU"
        done.append(f"{kind} {how} for {target}: {result.library}")
    return "; ".join(done)
