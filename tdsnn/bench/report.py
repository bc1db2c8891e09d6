"""What ``tdsnn bench`` reports: the environment, the kernel build, the JSON file and the table.

Rows (dicts) come from the suites; ``kind`` says what a row is: ``time`` (one variant of one
``case``: ``median_ms`` or a ``status`` saying why not), ``copy`` (device-to-device copy
bandwidth), ``setup``, ``check`` (do the swapped networks agree), ``breakdown``, ``note``.
:func:`add_speedups` puts ``speedup_vs_<variant>`` = median_ms(variant) / median_ms(base) on
the first variant that ran in each case (the base: tdsnn's kernel where it ran), and
``stc_overhead`` on the ``topo=stc`` rows of variants also timed with ``topo=none``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import tdsnn
from tdsnn.atomic import write_atomic

__all__ = ["add_speedups", "environment", "format_table", "kernel_status", "write_results"]

_KERNELS: dict[str, dict] = {}
STC, NO_TOPO = "stc", "none"  # the topo presets whose steps give the stc overhead


def kernel_status(device: torch.device) -> dict:
    """Build (or load) tdsnn's compiled kernels for ``device`` once per process (the CPU
    library for the CPU, with the CUDA one for CUDA) and say how it went.

    ``{"available": bool, "seconds", "compiled", "library", "arch"}`` or ``{"available": False,
    "error"}``.
    """
    key = "cuda" if device.type == "cuda" else "cpu"
    if key not in _KERNELS:
        try:
            from tdsnn import ops

            result = ops.load_kernels(cuda=key == "cuda")
            _KERNELS[key] = {
                "available": True,
                "seconds": result.seconds,
                "compiled": result.compiled,
                "library": str(result.library),
                "arch": result.arch,
            }
        except Exception as exc:  # noqa: BLE001 - a missing or failing build is a result here
            _KERNELS[key] = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return _KERNELS[key]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        root = Path(tdsnn.__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (
            f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
            f"{p.total_memory / 2**30:.0f} GiB"
        )
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads"


def _command() -> str:
    """This process's command line, ``tdsnn`` for ``python -m tdsnn`` and the entry point."""
    argv = list(sys.argv)
    if argv and (
        argv[0].endswith(("tdsnn/__main__.py", "tdsnn/cli.py")) or Path(argv[0]).name == "tdsnn"
    ):
        argv[0] = "tdsnn"
    return " ".join(argv)


def environment(device: torch.device) -> dict:
    """Device, versions, date and command line of this run."""
    import os

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "device": str(device),
        "device_name": _device_name(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tdsnn": tdsnn.__version__,
        "git_commit": _git_commit(),
        "spikingjelly": _version("spikingjelly"),
        "snntorch": _version("snntorch"),
        "torch_threads": torch.get_num_threads(),
        "TDSNN_KERNELS": os.environ.get("TDSNN_KERNELS"),
        "SJ_LIF_CUDA_IMPLEMENTATION": os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION"),
    }


def add_speedups(rows: list[dict]) -> None:
    """On the first ``time`` row that ran in each case, ``speedup_vs_<v>`` for every other; on
    each ``topo=stc`` row whose variant also ran in a ``topo=none`` case, ``stc_overhead`` =
    median(stc) / median(none) - 1 (what the topographic loss adds to the step)."""
    cases: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("kind") == "time" and row.get("status") == "ok":
            cases.setdefault(row["case"], []).append(row)
    for ran in cases.values():
        base = ran[0]
        for other in ran[1:]:
            base[f"speedup_vs_{other['variant']}"] = other["median_ms"] / base["median_ms"]
    none = {r["variant"]: r["median_ms"] for r in cases.get(f"topo={NO_TOPO}", [])}
    for row in cases.get(f"topo={STC}", []):
        if row["variant"] in none:
            row["stc_overhead"] = row["median_ms"] / none[row["variant"]] - 1


def write_results(results: dict, out: Path) -> Path:
    """Write ``bench.json`` (everything) and ``table.txt`` into ``out``; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    write_atomic(path, json.dumps(results, indent=1, default=str) + "\n")
    write_atomic(out / "table.txt", format_table(results) + "\n")
    return path


# ----------------------------------------------------------------------------- table


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row.get("status") == "ok":
        return _ms(row["median_ms"]) + ("*" if row.get("timing", {}).get("host_bound") else "")
    return "skip" if str(row.get("status", "")).startswith("skipped") else "FAIL"


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _pct(value: float) -> str:
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


# per suite: (header, key, formatter, per_variant): from the case's base row, or with
# per_variant one column per variant ("{v}" in the header)
_EXTRAS: dict[str, list[tuple[str, str, Callable[[float], str], bool]]] = {
    "lif": [("GB/s", "gb_per_s", _num, False), ("%copy", "fraction_of_copy", _pct, False)],
    "pairs": [("%floor", "fraction_of_floor", _pct, False)],
    "step": [("img/s", "images_per_s", _num, False), ("MiB {v}", "peak_mib", _num, True)],
    "cpu-step": [("img/s", "images_per_s", _num, False)],
}


def _pivot(suite: str, rows: list[dict]) -> list[str]:
    """One line per case: each variant's median ms, the suite's extras, the base's speed-ups."""
    times = [r for r in rows if r.get("kind") == "time"]
    if not times:
        return []
    variants = list(dict.fromkeys(r["variant"] for r in times))
    cases = list(dict.fromkeys(r["case"] for r in times))
    by = {(r["case"], r["variant"]): r for r in times}
    bases = {
        c: next((by[(c, v)] for v in variants if by.get((c, v), {}).get("status") == "ok"), None)
        for c in cases
    }
    columns: list[tuple[str, Callable[[str], str]]] = [
        (v, lambda c, v=v: _cell(by.get((c, v)))) for v in variants
    ]
    for title, key, fmt, per_variant in _EXTRAS.get(suite, []):
        sources = (
            [(title.format(v=v), lambda c, v=v: by.get((c, v))) for v in variants]
            if per_variant
            else [(title, lambda c: bases[c])]
        )
        for header, source in sources:
            if any((source(c) or {}).get(key) is not None for c in cases):
                columns.append(
                    (
                        header,
                        lambda c, s=source, k=key, f=fmt: (
                            f(s(c)[k]) if (s(c) or {}).get(k) is not None else "-"
                        ),
                    )
                )
    speed = [v for v in variants if any(f"speedup_vs_{v}" in (b or {}) for b in bases.values())]
    for v in speed:
        columns.append(
            (
                f"x{v}",
                lambda c, v=v: (
                    f"{bases[c][f'speedup_vs_{v}']:.2f}"
                    if f"speedup_vs_{v}" in (bases[c] or {})
                    else "-"
                ),
            )
        )
    table = [["case"] + [h for h, _ in columns]]
    table += [[c] + [cell(c) for _, cell in columns] for c in cases]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [
        "  "
        + "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    if any(r.get("timing", {}).get("host_bound") for r in times):
        lines.append(
            "  * host-bound: issuing the calls took >= 80 % of the time (the GPU waited for Python)"
        )
    if speed:
        base_names = sorted({b["variant"] for b in bases.values() if b})
        lines.append(
            f"  xV = median(V) / median({'|'.join(base_names)}): how many times faster than V"
        )
    return lines


def _overhead_lines(rows: list[dict]) -> list[str]:
    """The ``stc_overhead`` of every variant that has one, on one line."""
    found = [f"{r['variant']} {r['stc_overhead']:+.0%}" for r in rows if "stc_overhead" in r]
    if not found:
        return []
    return [f"  stc overhead on the step (topo=stc / topo=none - 1): {', '.join(found)}"]


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _other_lines(rows: list[dict], kinds: tuple[str, ...]) -> list[str]:
    """Lines for the rows of ``kinds`` (``time`` rows: only those that did not run)."""
    lines, seen = [], set()
    for r in rows:
        kind = r.get("kind")
        if kind not in kinds:
            continue
        if kind == "setup":
            lines.append(f"  {r['text']}")
        elif kind == "copy":
            lines.append(
                f"  copy d2d: {_num(r['gb_per_s'])} GB/s ({r['bytes'] / 1e9:.2f} GB buffer, "
                "read + write)"
            )
        elif kind == "check":
            for name, c in r["outputs"].items():
                verdict = "equal" if c["equal"] else "DIFFERENT"
                spikes = c.get("spikes_differing")
                spiked = "" if spikes is None else f", last-area spikes differing {spikes:.2%}"
                lines.append(
                    f"  check {r['case']}: {name} vs {c['against']} logits {verdict} "
                    f"(max |diff| {c['max_abs_diff']:.2e}{spiked})"
                )
        elif kind == "breakdown":
            parts = ", ".join(f"{k} {_pct(v)}" for k, v in r["fraction_of_step_plus_data"].items())
            fused = "fused" if r.get("fused_bn_lif") else "unfused"
            lines.append(
                f"  breakdown of the {r['variant']} step ({r['step_ms']:.0f} ms + data "
                f"{r['parts_ms']['data']:.1f} ms; batch norm + LIF {fused}): {parts}"
            )
        elif r.get("status", "ok") != "ok":
            msg = f"  {r.get('variant')}: {_short(r['status'])}"
            if msg not in seen:
                seen.add(msg)
                lines.append(msg)
    return lines


def format_table(results: dict) -> str:
    """The short summary printed last: environment line, then each suite's pivot and notes."""
    env = results["environment"]
    k = results.get("kernels", {})
    if k.get("available"):
        how = f"compiled in {k['seconds']:.1f} s" if k.get("compiled") else "loaded from cache"
        kernels = f"{how} for sm_{str(k['arch']).replace('.', '')}"
    else:
        kernels = _short(k.get("error") or k.get("reason") or "not used")
    lines = [
        f"tdsnn bench  {env['date']}  {env['command']}",
        f"device {env['device_name']}; torch {env['torch']} (CUDA {env['torch_cuda']}), tdsnn "
        f"{env['tdsnn']} ({env['git_commit']}), spikingjelly {env['spikingjelly']}, snntorch "
        f"{env['snntorch']}",
        f"tdsnn kernels: {kernels}",
    ]
    for name, suite in results["suites"].items():
        p = suite.get("params", {})
        lines += [
            "",
            f"[{name}] on {suite.get('device')}, {suite.get('what', '')}; median ms of "
            f"{p.get('repeats')} after {p.get('warmup')} warm-up, {suite.get('clock', '')} "
            f"({suite.get('seconds', 0):.0f} s)",
        ]
        if "error" in suite:
            lines.append(f"  suite FAILED: {_short(suite['error'], 300)}")
            continue
        rows = suite["rows"]
        lines += _other_lines(rows, ("setup", "copy")) + _pivot(name, rows) + _overhead_lines(rows)
        lines += _other_lines(rows, ("check", "breakdown", "time", "note"))
    return "\n".join(lines)
