"""``tdsnn evaluate``: runs -> one CSV per test, ``metrics.json``, figures and ``report.md``."""

from __future__ import annotations

import csv
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from tdsnn.errors import ConfigError  # noqa: E402
from tdsnn.evaluate.runner import (  # noqa: E402
    TESTS,
    accuracy,
    count_evaluations,
    load_eval_run,
    representation,
    run_test,
)

__all__ = ["evaluate_runs", "parse_tests"]

LEVEL_UNITS = {
    "weight-noise": "noise std / weight std",
    "input-noise": "degradation level (see report)",
    "pruning": "fraction of weights pruned",
    "lesion": "fraction of the area's units silenced",
    "adversarial": "L∞ ε (intensity, 0–1)",
}


def parse_tests(text: str | None) -> tuple[str, ...]:
    if not text:
        return TESTS
    tests = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tests if t not in TESTS]
    if unknown or not tests:
        raise ConfigError(f"--tests {text!r}: unknown {unknown}; choose from {','.join(TESTS)}")
    return tests


def _names(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def evaluate_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    tests: tuple[str, ...] = TESTS,
    levels: tuple[float, ...] | None = None,
    repeats: int = 2,
    test_size: int = 256,
    batch_size: int = 256,
    data_root: str | None = None,
    device="cpu",
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Evaluate every run in ``run_dirs`` on ``tests`` and write the results to ``out``."""
    if not 1 <= repeats <= 100:
        raise ConfigError(f"--repeats must be in [1, 100], got {repeats}")
    if levels is not None and any(not (math.isfinite(v) and v >= 0) for v in levels):
        raise ConfigError(f"--levels must be non-negative numbers, got {list(levels)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    paths = [Path(p) for p in run_dirs]
    runs = [
        load_eval_run(p, test_size=test_size, data_root=data_root, device=device, name=name)
        for p, name in zip(paths, _names(paths), strict=True)
    ]  # every run loads before any work
    start = time.perf_counter()
    rows: dict[str, list[dict]] = defaultdict(list)
    settings = {"tests": list(tests), "repeats": repeats, "seed": seed,
                "test_images": {r.name: len(r.labels) for r in runs}}  # fmt: skip
    metrics: dict = {"runs": {}, "settings": settings}
    total = sum(count_evaluations(tests, run, levels, repeats) for run in runs)
    with tqdm(total=total, desc="evaluating", unit="eval", disable=quiet) as progress:
        for run in runs:
            entry = metrics["runs"][run.name] = {
                "run_dir": str(paths[runs.index(run)]),
                "neuron": run.trained.config.model.neuron,  # lif | relu: what responses are
                "accuracy": accuracy(run.model, run.images, run.labels, seed=seed),
            }
            for test in tests:
                if test == "representation":
                    entry["representation"] = representation(run, batch_size)
                    continue
                found = list(
                    run_test(
                        test,
                        run,
                        levels=levels,
                        repeats=repeats,
                        seed=seed,
                        batch_size=batch_size,
                        progress=progress,
                    )  # fmt: skip
                )
                rows[test] += found
                entry[test] = _summary(found)
    metrics["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for test, found in rows.items():
        _write_csv(out / f"{test}.csv", found)
    figures = [f for test, found in rows.items() if (f := _figure(test, found, out))]
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=1) + "\n")
    (out / "report.md").write_text(_report(metrics, rows, figures))
    return metrics


def _summary(rows: list[dict]) -> dict:
    """Mean accuracy per condition and level: ``{condition: {level: mean}}``."""
    table: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        table[r["condition"]][r["level"]].append(r["accuracy"])
    return {
        c: {f"{lv:g}": float(np.mean(v)) for lv, v in levels.items()} for c, levels in table.items()
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["run", "test", "condition", "level", "repeat", "accuracy"]
        )
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _figure(test: str, rows: list[dict], out: Path) -> str | None:
    """Accuracy against level, one panel per condition, one line per run, band = min..max
    over repeats."""
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    if test == "lesion":  # one panel per area: disc solid, scattered dashed
        panels = list(dict.fromkeys(c.rsplit(" ", 1)[0] for c in conditions))
    else:
        panels = conditions
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, run in enumerate(runs):
            for condition in conditions:
                if (condition.rsplit(" ", 1)[0] if test == "lesion" else condition) != panel:
                    continue
                chosen = [r for r in rows if r["run"] == run and r["condition"] == condition]
                levels = sorted({r["level"] for r in chosen})
                acc = [[r["accuracy"] for r in chosen if r["level"] == lv] for lv in levels]
                style = "--" if condition.endswith("scattered") else "-"
                label = run if test != "lesion" else f"{run} ({condition.rsplit(' ', 1)[1]})"
                ax.plot(levels, [np.mean(a) for a in acc], style, marker="o", ms=3,
                        color=f"C{i}", label=label)  # fmt: skip
                ax.fill_between(levels, [min(a) for a in acc], [max(a) for a in acc],
                                color=f"C{i}", alpha=0.2, lw=0)  # fmt: skip
        ax.set(title=panel, xlabel=LEVEL_UNITS.get(test, "level"), ylabel="test accuracy",
               ylim=(0, 1.02))  # fmt: skip
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{test}: accuracy against level")
    fig.tight_layout()
    name = f"{test}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _report(metrics: dict, rows: dict[str, list[dict]], figures: list[str]) -> str:
    lines = ["# Robustness and representation report", ""]
    runs = metrics["runs"]
    lines += ["| run | units | test accuracy | images |", "|---|---|---|---|"]
    for name, entry in runs.items():
        n = metrics["settings"]["test_images"][name]
        units = "ReLU" if entry["neuron"] == "relu" else "LIF"
        lines.append(f"| {name} (`{entry['run_dir']}`) | {units} | {entry['accuracy']:.3f} | {n} |")
    lines.append("")
    for test, found in rows.items():
        lines += [f"## {test}", "", f"Mean accuracy over repeats; level = {LEVEL_UNITS[test]}.", ""]
        conditions = list(dict.fromkeys(r["condition"] for r in found))
        for condition in conditions:
            chosen = [r for r in found if r["condition"] == condition]
            levels = sorted({r["level"] for r in chosen})
            lines.append(f"**{condition}**")
            lines.append("")
            lines.append("| run | " + " | ".join(f"{lv:g}" for lv in levels) + " |")
            lines.append("|---|" + "---|" * len(levels))
            for run in runs:
                cells = [
                    np.mean([r["accuracy"] for r in chosen if r["run"] == run and r["level"] == lv])
                    for lv in levels
                ]
                lines.append(f"| {run} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
            lines.append("")
        if f"{test}.png" in figures:
            lines += [f"![{test}]({test}.png)", ""]
    if any("representation" in e for e in runs.values()):
        lines += ["## Representation", "",
                  "Participation ratio (effective dimensionality) of each area's responses, "
                  "mean per-unit response variance, and Moran's I of the last area's "
                  "mean-response map (neighbours within the neighbourhood width). Responses are "
                  "spike counts per image for LIF units and activations for ReLU units: the "
                  "variances of the two are on different scales.", "",
                  "| run | area | participation ratio | activation variance | Moran's I |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, entry in runs.items():
            for area, values in entry.get("representation", {}).items():
                moran = values.get("morans_i")
                moran = "–" if moran is None or not math.isfinite(moran) else f"{moran:.3f}"
                lines.append(
                    f"| {name} | {area} | {values['participation_ratio']:.2f} | "
                    f"{values['activation_variance']:.4f} | {moran} |"
                )
        lines.append("")
    lines.append(f"Evaluated in {metrics['seconds']:.1f} s.")
    return "\n".join(lines) + "\n"
