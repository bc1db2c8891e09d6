"""``tdsnn analyze``: recordings -> ``metrics.json``, figures and ``report.md`` in one folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from tdsnn.analysis import figures
from tdsnn.analysis.topography import AreaAnalysis, analyze_recording
from tdsnn.atomic import write_atomic
from tdsnn.errors import ConfigError
from tdsnn.record import Recording

__all__ = ["HEADLINES", "analyze_files"]

# (metric key, column title, one-line explanation) for the report's headline table
HEADLINES = (
    ("correlation_decay", "corr. decay",
     "response correlation of the nearest pairs minus that of the farthest (higher: nearby "
     "units respond more alike)"),
    ("orientation_smoothness", "ori. smooth",
     "orientation-preference smoothness, (max_b c(b) - c(0)) / max_b c(b) on |Δθ| per "
     "distance bin (1 smooth, 0 random)"),
    ("frequency_smoothness", "SF smooth", "the same for preferred spatial frequency (log2)"),
    ("orientation_selectivity_mean", "OSI", "mean orientation selectivity, 1 - circular variance"),
    ("pinwheel_density", "pinwheels/Λ²",
     "pinwheels per squared column spacing (≈ π in cat, monkey and tree shrew V1)"),
    ("morans_i_response", "Moran's I",
     "spatial autocorrelation of mean response within the neighbourhood width"),
    ("expert_fraction", "experts", "fraction of units selective for a category (t ≥ 3, d' ≥ 1)"),
    ("category_smoothness", "cat. smooth", "smoothness of the category t-maps"),
    ("synchrony_decay", "sync. decay", "r_CCG of the nearest pairs minus that of the farthest"),
)  # fmt: skip
FIGURES = (
    ("orientation_maps.png", figures.orientation_figure, "Orientation preference maps"),
    ("correlation_vs_distance.png", figures.correlation_figure, "Correlation against distance"),
    ("smoothness.png", figures.smoothness_figure, "Smoothness"),
    ("category_maps.png", figures.category_figure, "Category selectivity maps"),
    ("synchrony_vs_distance.png", figures.synchrony_figure, "Synchrony against distance"),
)


def _labels(paths: list[Path], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(paths):
            raise ConfigError(f"--labels names {len(labels)} recordings, {len(paths)} were given")
        return labels
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _headline(analysis: AreaAnalysis, key: str):
    if key == "pinwheel_density":
        return analysis.metrics.get("pinwheels", {}).get("density")
    return analysis.metrics.get(key)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def analyze_files(
    paths: list[str | Path], out: str | Path, *, labels: list[str] | None = None, seed: int = 0
) -> dict:
    """Analyse every recording in ``paths`` and write the results to the folder ``out``.

    Returns the metrics written to ``metrics.json``.
    """
    paths = [Path(p) for p in paths]
    names = _labels(paths, labels)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    recordings = [Recording(p) for p in paths]  # every file checked before any work
    results: dict[str, list[AreaAnalysis]] = {}
    metrics = {"recordings": []}
    start = time.perf_counter()
    try:
        for name, rec in zip(names, recordings, strict=True):
            results[name] = analyze_recording(rec, seed=seed)
            metrics["recordings"].append(
                {
                    "label": name,
                    "path": str(rec.path),
                    "trials": rec.num_trials,
                    "complete": rec.complete,
                    "stimuli": rec.meta.stimuli_kind,
                    "responses": rec.meta.responses,  # spikes, or rates (ReLU activations)
                    "source": rec.meta.source,
                    "areas": {a.area: a.metrics for a in results[name]},
                    "notes": {a.area: a.notes for a in results[name] if a.notes},
                }
            )
    finally:
        for rec in recordings:
            rec.close()
    out.mkdir(parents=True, exist_ok=True)
    drawn = [(f, title) for f, draw, title in FIGURES if draw(results, out / f)]
    metrics["seconds"] = time.perf_counter() - start
    write_atomic(out / "metrics.json", json.dumps(_json_safe(metrics), indent=1) + "\n")
    write_atomic(out / "report.md", _report(results, metrics, drawn))
    return metrics


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _report(results: dict[str, list[AreaAnalysis]], metrics: dict, drawn) -> str:
    lines = ["# Topography report", ""]
    for entry in metrics["recordings"]:
        state = "" if entry["complete"] else " (incomplete: interrupted recording)"
        units = "ReLU activations" if entry["responses"] == "rates" else "spike counts"
        lines.append(
            f"- **{entry['label']}**: `{entry['path']}`, {entry['trials']} trials of "
            f"{entry['stimuli']} probes{state}, {units}, run "
            f"`{entry['source'].get('run_dir', '?')}`"
        )
    lines += ["", "## Headline numbers", ""]
    keys = [
        (key, title, text)
        for key, title, text in HEADLINES
        if any(_headline(a, key) is not None for r in results.values() for a in r)
    ]
    lines.append("| recording | area | " + " | ".join(title for _, title, _ in keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for name, analyses in results.items():
        for analysis in analyses:
            values = " | ".join(_fmt(_headline(analysis, key)) for key, _, _ in keys)
            lines.append(f"| {name} | {analysis.area} | {values} |")
    lines += ["", *[f"- **{title}**: {text}." for _, title, text in keys], ""]
    notes = [
        f"- {name}, {a.area}: {note}" for name, r in results.items() for a in r for note in a.notes
    ]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["## Figures", ""]
    for file, title in drawn:
        lines += [f"### {title}", "", f"![{title}]({file})", ""]
    lines.append(f"Analysed in {metrics['seconds']:.1f} s.")
    return "\n".join(lines) + "\n"
