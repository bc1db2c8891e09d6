"""Throughput benchmarks: ``tdsnn bench`` and ``python benchmarks/run.py`` (the same code).

Suites (each a function ``(device, sizes, *, warmup, repeats) -> rows``, see
:mod:`tdsnn.bench.report` for the rows):

============  =====================================================================================
``lif``       LIF forward+backward on ``x [T, N]``: tdsnn kernel / reference, spikingjelly, snntorch
``pairs``     pair similarities and STC losses on a V1 sheet: tdsnn kernel vs reference
``step``      training step of ``v1-v2-v4-it``: tdsnn (kernels, reference) vs spikingjelly neurons;
              on CUDA also the kernels' step captured in CUDA graphs (``tdsnn-graphed``)
``cpu-step``  the default run's step: tdsnn (fused CPU LIF kernel, reference) vs spikingjelly vs
              snntorch neurons, tdsnn's step without the topographic loss (the stc overhead),
              and a breakdown of tdsnn's step into convolutions, batch norm + LIF (the fused
              op), STC, optimizer, other and data (always on the CPU)
============  =====================================================================================

By default CUDA runs all four (``cpu-step`` there times the default run's model on the GPU,
whose small step is host-bound: the ``stc`` step against ``none``), the CPU ``cpu-step``; any
suite runs on either device when named. :func:`default_sizes` fills a device (or, with
``quick``, gives tiny sizes for smoke tests).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tdsnn.choices import BENCH_SUITES
from tdsnn.errors import ConfigError
from tdsnn.options import TimingOptions

__all__ = ["SUITES", "Sizes", "Suite", "default_sizes", "default_suites", "run_bench"]


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of every suite (see ``tdsnn bench --help``)."""

    lif_neurons: int  # N of x [T, N]
    lif_steps: tuple[int, ...]  # the T values
    dtypes: tuple[str, ...]  # fp32, bf16
    copy_bytes: int  # buffer of the device-to-device copy
    pairs_image_size: int  # V1 sheet of a stack at this image size ...
    pairs_width: float  # ... and width
    pairs_samples: int  # S of x [S, N]; B of spikes [T, B, N]
    step_stack: str
    step_width: float
    step_blocks: int | None  # None: the area table's
    step_image_size: int
    step_batch: int
    step_topos: tuple[str, ...]
    timesteps: int  # T of the step, cpu-step and pairs suites
    cpu_width: float
    cpu_image_size: int
    cpu_batch: int
    cpu_loader_batches: int  # training split of the data part = this many batches


# The sizes that depend on where the suites run: field -> (--quick, CUDA, CPU); cpu-step's
# (cpu_*) are the default run's but under --quick.
_BY_DEVICE = {
    "lif_neurons": (4096, 1 << 22, 1 << 18),
    "lif_steps": ((4, 8), (4, 8, 32), (4, 8, 32)),
    "copy_bytes": (1 << 20, 1 << 30, 1 << 26),
    "pairs_image_size": (16, 32, 24),
    "pairs_width": (0.25, 1.0, 0.25),
    "pairs_samples": (8, 64, 64),
    "step_width": (0.0625, 1.0, 0.25),
    "step_blocks": (1, None, 1),
    "step_image_size": (16, 64, 32),
    "step_batch": (4, 64, 32),
    "cpu_width": (0.0625, 0.25, 0.25),
    "cpu_image_size": (16, 24, 24),
    "cpu_batch": (8, 64, 64),
    "cpu_loader_batches": (2, 8, 8),
}


def default_sizes(device: torch.device, quick: bool = False) -> Sizes:
    """Sizes that fill ``device`` (CUDA: an H100 in well under 10 minutes) or, ``quick``, tiny.

    On the CPU, ``cpu-step`` is the default run's model (the ``RunConfig`` defaults: v1-v4-it,
    width 0.25, 24 px, batch 64, T = 4) and the other suites are scaled down.
    """
    column = 0 if quick else 1 if device.type == "cuda" else 2
    return Sizes(
        step_stack="v1-v2-v4-it",
        step_topos=("stc", "none"),
        timesteps=4,
        dtypes=("fp32", "bf16"),
        **{field: values[column] for field, values in _BY_DEVICE.items()},
    )


@dataclass(frozen=True)
class Suite:
    """A suite: its function, a one-line description, default warm-up / repeats, and the device
    it always runs on (``None``: the chosen one)."""

    run: Callable[..., list[dict]]
    what: str
    warmup: int
    repeats: int
    fixed_device: str | None = None


def _suites() -> dict[str, Suite]:
    from tdsnn.bench.lif import lif_suite
    from tdsnn.bench.pairs import pairs_suite
    from tdsnn.bench.step_suites import cpu_step_suite, step_suite

    return {
        "lif": Suite(lif_suite, "LIF forward+backward of x [T, N]", 3, 20),
        "pairs": Suite(pairs_suite, "pair similarities / STC on a V1 sheet, fwd(+bwd)", 3, 10),
        "step": Suite(
            step_suite, "training step (forward, CE + topo loss, backward, AdamW)", 2, 10
        ),
        "cpu-step": Suite(cpu_step_suite, "the default run's training step", 2, 10, "cpu"),
    }


SUITES = BENCH_SUITES  # the names, shared with the command line (tdsnn.choices)
DEFAULT_SUITES = {"cuda": ("lif", "pairs", "step", "cpu-step"), "cpu": ("cpu-step",)}


def default_suites(device: torch.device) -> tuple[str, ...]:
    return DEFAULT_SUITES[device.type]


def resolve_device(text: str | None) -> torch.device:
    """``--device``: default ``cuda`` if available, else ``cpu``; CUDA without CUDA is an error."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {text!r}")
    if text == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() "
            "is False); use --device cpu"
        )
    return torch.device(text)


def check_sizes(sizes: Sizes) -> None:
    """ConfigError for sizes that make no benchmark."""
    from tdsnn.bench.lif import DTYPES

    for f in dataclasses.fields(sizes):
        value = getattr(sizes, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
                raise ConfigError(f"bench size {f.name} must be > 0, got {v}")
    bad = [d for d in sizes.dtypes if d not in DTYPES]
    if bad or not sizes.dtypes:
        raise ConfigError(f"--dtypes: unknown {bad}; valid: {', '.join(DTYPES)}")
    if not sizes.lif_steps:
        raise ConfigError("--lif-steps needs at least one T")


def run_bench(
    suites: tuple[str, ...],
    device: torch.device,
    sizes: Sizes,
    *,
    warmup: int | None = None,
    repeats: int | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run ``suites``; returns (and with ``out``, writes) ``{"environment", "kernels",
    "options", "suites": {name: {"rows", "params", "seconds", ...} or {"error"}}}``."""
    from tdsnn.bench.report import add_speedups, environment, kernel_status, write_results

    check_sizes(sizes)
    TimingOptions(repeats, warmup)  # a ConfigError naming the parameter
    registry = _suites()
    results: dict = {
        "environment": environment(device),
        "kernels": {},
        "options": {
            "suites": list(suites),
            "device": str(device),
            "sizes": dataclasses.asdict(sizes),
            "warmup": warmup,
            "repeats": repeats,
        },
        "suites": {},
    }
    for name in suites:
        suite = registry[name]
        dev = torch.device(suite.fixed_device) if suite.fixed_device else device
        w = suite.warmup if warmup is None else warmup
        r = suite.repeats if repeats is None else repeats
        entry = {
            "device": str(dev),
            "what": suite.what,
            "params": {"warmup": w, "repeats": r},
            "clock": "CUDA events" if dev.type == "cuda" else "perf_counter",
        }
        log(f"tdsnn bench: {name} on {dev} ...")
        begin = time.perf_counter()
        try:
            if dev.type == "cuda" and not results["kernels"]:
                results["kernels"] = kernel_status(dev)
            rows = suite.run(dev, sizes, warmup=w, repeats=r)
            add_speedups(rows)
            entry["rows"] = rows
        except Exception as exc:  # noqa: BLE001 - one failing suite must not lose the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()
            log(f"tdsnn bench: {name} failed: {entry['error']}")
        entry["seconds"] = time.perf_counter() - begin
        results["suites"][name] = entry
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if not results["kernels"]:
        results["kernels"] = kernel_status(device)
    if out is not None:
        path = write_results(results, out)
        log(f"tdsnn bench: wrote {path} and {path.parent / 'table.txt'}")
    return results
