"""The one timer of ``tdsnn bench``: CUDA events on CUDA, ``perf_counter`` on the CPU.

Every measurement is a warm-up (calls not timed), then ``repeats`` samples; a sample times
``inner`` back-to-back calls (chosen so that a sample lasts at least ``min_sample_ms``, which
amortises launch latency for sub-millisecond ops) and reports the time per call. On CUDA the
device is synchronised before each sample, so samples do not overlap. Results are in ms.

:func:`kernel_policy` sets ``TDSNN_KERNELS`` around a call, so that one process can time the
compiled kernels (``cuda``) and the PyTorch reference (``reference``) of the same op.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "Timing",
    "copy_bandwidth",
    "kernel_policy",
    "measure",
    "measure_round_robin",
    "synchronize",
]


@dataclass(frozen=True)
class Timing:
    """Per-call times of one measurement, in ms: ``median_ms``, ``min_ms``, all ``samples_ms``;
    ``host_median_ms``: the host's time to issue a call (= the time on the CPU); ``inner`` calls
    per sample, ``warmup`` untimed calls, ``clock`` ``cuda-events`` or ``perf_counter``."""

    HOST_BOUND = 0.8  # host time / device time above which a CUDA call counts as host-bound

    median_ms: float
    min_ms: float
    host_median_ms: float
    samples_ms: tuple[float, ...]
    inner: int
    warmup: int
    clock: str

    def to_dict(self) -> dict:
        out = asdict(self)
        out["samples_ms"] = [round(s, 6) for s in self.samples_ms]
        out["repeats"] = len(self.samples_ms)
        out["host_bound"] = self.host_bound
        return out

    @property
    def host_bound(self) -> bool:
        """CUDA: the GPU waited for Python (issuing took >= 80 % of the measured time)."""
        return (
            self.clock == "cuda-events" and self.host_median_ms >= self.HOST_BOUND * self.median_ms
        )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def kernel_policy(policy: str | None) -> Iterator[None]:
    """Set ``TDSNN_KERNELS=policy`` inside the block (``None``: leave it as it is)."""
    if policy is None:
        yield
        return
    old = os.environ.get("TDSNN_KERNELS")
    os.environ["TDSNN_KERNELS"] = policy
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TDSNN_KERNELS", None)
        else:
            os.environ["TDSNN_KERNELS"] = old


class _Clock:
    """Times ``inner`` calls of a function: CUDA events on CUDA, ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.name = "cuda-events" if self.cuda else "perf_counter"

    def sample(self, fn: Callable[[], object], inner: int) -> tuple[float, float]:
        """Milliseconds per call over ``inner`` calls: (device time, host time to issue them).

        On CUDA the device time runs from an event recorded before the first call to one after
        the last; the host time is how long Python took to issue the calls (when it is close to
        the device time, the GPU waited for the host: the call is host-bound).
        """
        if self.cuda:
            synchronize(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            begin = time.perf_counter()
            for _ in range(inner):
                fn()
            host = time.perf_counter() - begin
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / inner, host * 1e3 / inner
        begin = time.perf_counter()
        for _ in range(inner):
            fn()
        elapsed = (time.perf_counter() - begin) * 1e3 / inner
        return elapsed, elapsed


def _inner(clock: _Clock, fn: Callable[[], object], min_sample_ms: float, max_inner: int) -> int:
    if min_sample_ms <= 0:
        return 1
    once, _ = clock.sample(fn, 1)
    return max(1, min(max_inner, math.ceil(min_sample_ms / max(once, 1e-6))))


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    min_sample_ms: float = 0.0,
    max_inner: int = 100,
) -> Timing:
    """Median time of ``fn()`` on ``device`` after ``warmup`` untimed calls.

    ``min_sample_ms > 0`` times ``inner`` calls per sample, ``inner`` picked from one call's
    time so a sample lasts at least that long (at most ``max_inner``).
    """
    clock = _Clock(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    inner = _inner(clock, fn, min_sample_ms, max_inner)
    samples = [clock.sample(fn, inner) for _ in range(repeats)]
    return _timing(samples, inner, warmup, clock.name)


def measure_round_robin(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, Timing]:
    """Median time of each ``fns[name]()``, the variants' calls interleaved (a, b, c, a, b, …)
    so that drifts in machine load hit all of them alike. One call per sample."""
    clock = _Clock(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(clock.sample(fn, 1))
    return {name: _timing(s, 1, warmup, clock.name) for name, s in samples.items()}


def _timing(samples: list[tuple[float, float]], inner: int, warmup: int, clock: str) -> Timing:
    device = [s[0] for s in samples]
    return Timing(
        median_ms=statistics.median(device),
        min_ms=min(device),
        host_median_ms=statistics.median(s[1] for s in samples),
        samples_ms=tuple(device),
        inner=inner,
        warmup=warmup,
        clock=clock,
    )


def copy_bandwidth(
    device: torch.device, nbytes: int, *, warmup: int = 3, repeats: int = 10
) -> dict:
    """Device-to-device copy ``dst.copy_(src)`` of ``nbytes`` (float32 buffers).

    Returns ``{"bytes", "bytes_moved", "median_ms", "gb_per_s", "timing"}``, GB/s = (bytes read
    + bytes written) / time, 1 GB = 1e9 bytes. Measured once per device and size per process.
    """
    key = (str(device), nbytes)
    if key not in _COPY_CACHE:
        _COPY_CACHE[key] = _copy_bandwidth(device, nbytes, warmup, repeats)
    return _COPY_CACHE[key]


_COPY_CACHE: dict[tuple[str, int], dict] = {}


def _copy_bandwidth(device: torch.device, nbytes: int, warmup: int, repeats: int) -> dict:
    n = max(1, nbytes // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    timing = measure(
        lambda: dst.copy_(src), device, warmup=warmup, repeats=repeats, min_sample_ms=1.0
    )
    moved = 2 * n * 4
    return {
        "bytes": n * 4,
        "bytes_moved": moved,
        "median_ms": timing.median_ms,
        "gb_per_s": moved / (timing.median_ms * 1e-3) / 1e9,
        "timing": timing.to_dict(),
    }
