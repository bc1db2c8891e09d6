"""``tdsnn bench``: throughput benchmarks (:mod:`tdsnn.bench`); prints a table last and writes
``bench.json`` and ``table.txt`` into ``--out``.

    tdsnn bench --out runs/bench                    # CUDA: all four suites; CPU: cpu-step
    tdsnn bench --device cpu --quick --out bench-out   # tiny sizes: a smoke test of every path
    tdsnn bench --suite lif --lif-neurons 8388608 --dtypes bf16
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tdsnn.choices import BENCH_SUITES
from tdsnn.errors import ConfigError
from tdsnn.fields import from_args
from tdsnn.options import TimingOptions


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from exc


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


# flag -> (Sizes fields it sets, parser, help); None keeps the device's default
SIZE_OPTIONS: dict[str, tuple[tuple[str, ...], object, str]] = {
    "--lif-neurons": (("lif_neurons",), int, "lif: N neurons per step (CUDA default 2**22)"),
    "--lif-steps": (("lif_steps",), _ints, "lif: comma-separated T values (default 4,8,32)"),
    "--dtypes": (("dtypes",), _words, "lif: fp32,bf16"),
    "--batch-size": (
        ("step_batch", "cpu_batch", "pairs_samples"),
        int,
        "images per step (step, cpu-step) and samples S of the pairs suite",
    ),
    "--timesteps": (("timesteps",), int, "T of the step, cpu-step and pairs suites (default 4)"),
    "--image-size": (("step_image_size",), int, "step: image side in pixels (CUDA default 64)"),
    "--width": (("step_width",), float, "step: channel multiplier (CUDA default 1.0)"),
    "--blocks": (("step_blocks",), int, "step: blocks per area (CUDA default: the table's, 2)"),
    "--topo": (("step_topos",), _words, "step: comma-separated presets (default stc,none)"),
    "--pairs-image-size": (("pairs_image_size",), int, "pairs: V1 sheet of this image size"),
    "--pairs-width": (("pairs_width",), float, "pairs: V1 sheet of this width"),
    "--copy-bytes": (("copy_bytes",), int, "buffer size of the copy-bandwidth reference"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="throughput benchmarks (LIF, pairs, training step)")
    p.add_argument(
        "--suite",
        help="comma-separated: lif, pairs, step, cpu-step (default: CUDA "
        "lif,pairs,step,cpu-step; CPU cpu-step)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", help="folder for bench.json and table.txt")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats (smoke test)")
    p.add_argument("--repeats", type=int, help="timed samples per measurement")
    p.add_argument("--warmup", type=int, help="untimed calls before each measurement")
    for flag, (_, _, text) in SIZE_OPTIONS.items():
        p.add_argument(flag, default=None, help=text)
    p.set_defaults(func=run)


def build_sizes(args: argparse.Namespace, device):
    """The device's default sizes with the size options given on the command line."""
    from tdsnn.bench import default_sizes

    sizes = default_sizes(device, args.quick)
    changes = {}
    for flag, (fields, parse, _) in SIZE_OPTIONS.items():
        text = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if text is None:
            continue
        try:
            value = parse(text)
        except ValueError as exc:
            kind = parse.__name__.lstrip("_")
            raise ConfigError(f"{flag}: expected {kind}, got {text!r}") from exc
        changes.update(dict.fromkeys(fields, value))
    return dataclasses.replace(sizes, **changes)


def parse_suites(text: str | None) -> tuple[str, ...] | None:
    """``"lif,step"`` -> ``("lif", "step")``; ``None`` -> ``None`` (the device's defaults,
    :func:`default_suites`). Needs no torch: the command line checks ``--suite`` first."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in names if s not in BENCH_SUITES]
    if unknown or not names:
        raise ConfigError(
            f"--suite {text!r}: unknown suite(s) {unknown}; valid: {', '.join(BENCH_SUITES)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    timing = from_args(TimingOptions, args)  # checked before torch loads
    suites = parse_suites(args.suite)
    from tdsnn.bench import default_suites, resolve_device, run_bench
    from tdsnn.bench.report import format_table

    device = resolve_device(args.device)
    suites = suites or default_suites(device)
    repeats, warmup = timing.repeats, timing.warmup
    if args.quick:
        repeats = 3 if repeats is None else repeats
        warmup = 1 if warmup is None else warmup
    sizes = build_sizes(args, device)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    results = run_bench(
        suites,
        device,
        sizes,
        warmup=warmup,
        repeats=repeats,
        out=out,
        log=lambda line: print(line, flush=True),
    )
    print()
    print(format_table(results), flush=True)
    return 1 if any("error" in s for s in results["suites"].values()) else 0
