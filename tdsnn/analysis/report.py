"""``tdsnn analyze``: recordings -> ``metrics.json``, figures and ``report.md`` in one folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from tdsnn.analysis import figures
from tdsnn.analysis.chance import NULL_DRAWS, PINWHEEL_KERNELS, add_nulls
from tdsnn.analysis.nulls import check_nulls
from tdsnn.analysis.references import scorecard, scorecard_line
from tdsnn.analysis.topography import SMOOTH_HYPERCOLUMNS, AreaAnalysis, analyze_recording
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
    ("frequency_smoothness", "SF smooth", "the same for the best spatial frequency (log2)"),
    ("orientation_selectivity_mean", "OSI",
     "mean orientation selectivity, 1 - circular variance, at each unit's best spatial "
     "frequency among those its receptive field resolves"),
    ("population_vector_length", "PVL",
     "population vector length of orientation preferences, |mean exp(2iθ)| (0: every "
     "orientation equally represented, 1: every unit prefers the same)"),
    ("pinwheel_density", "pinwheels/Λ²",
     "pinwheels per squared column spacing of the smoothed unit-resolution map (≈ π in cat, "
     "monkey and tree shrew V1; smoothed noise also gives numbers of that order)"),
    ("morans_i_response", "Moran's I",
     "spatial autocorrelation of mean response within the neighbourhood width"),
    ("expert_fraction", "experts", "fraction of units selective for a category (t ≥ 3, d' ≥ 1)"),
    ("category_smoothness", "cat. smooth", "smoothness of the category t-maps"),
    ("synchrony_decay", "r_CCG decay",
     "r_CCG as the loss trains it (raw trains, lag weights 1/(B·(T−|τ|)), |τ| ≤ W) of the "
     "nearest pairs minus that of the farthest"),
)  # fmt: skip
FIGURES = (
    ("orientation_maps.png", figures.orientation_figure, "Orientation preference maps"),
    (
        "orientation_tuning.png",
        figures.tuning_figure,
        "Orientation preferences and selectivity per spatial frequency",
    ),
    ("correlation_vs_distance.png", figures.correlation_figure, "Correlation against distance"),
    ("smoothness.png", figures.smoothness_figure, "Smoothness"),
    ("category_maps.png", figures.category_figure, "Category selectivity maps"),
    ("synchrony_vs_distance.png", figures.synchrony_figure, "Synchrony against distance"),
    ("pinwheel_curve.png", figures.pinwheel_curve_figure,
     "Pinwheel density against the smoothing kernel"),
)  # fmt: skip
NULL_TITLES = {
    "correlation_decay": "corr. decay",
    "morans_i_response": "Moran's I (response)",
    "orientation_smoothness": "ori. smooth",
    "frequency_smoothness": "SF smooth",
    "morans_i_frequency": "Moran's I (SF)",
    "pinwheel_density": "pinwheels/Λ²",
    "column_spacing_mm": "Λ (mm)",
    "patches_mean": "patches per category",
    "category_smoothness": "cat. smooth",
    "population_vector_length": "PVL",
}


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


def _at_chance(analysis: AreaAnalysis, key: str) -> list[str]:
    """The nulls whose central 95 % holds the metric ``key`` of ``analysis``."""
    kinds = analysis.metrics.get("nulls", {}).get(key, {})
    return [kind for kind, place in kinds.items() if place["chance"]]


def _headline_cell(analysis: AreaAnalysis, key: str) -> str:
    cell = _fmt(_headline(analysis, key))
    return f"{cell} (c)" if cell != "–" and _at_chance(analysis, key) else cell


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
    paths: list[str | Path],
    out: str | Path,
    *,
    labels: list[str] | None = None,
    seed: int = 0,
    smooth_mm: float | None = None,
    nulls: int | None = NULL_DRAWS,
    keep_border: bool = False,
    kernels: tuple[float, ...] = PINWHEEL_KERNELS,
) -> dict:
    """Analyse every recording in ``paths`` and write the results to the folder ``out``.

    ``smooth_mm``: Gaussian sigma (mm) of the orientation maps, 0 for none; by default
    :data:`~tdsnn.analysis.topography.SMOOTH_HYPERCOLUMNS` of each area's hypercolumn width.
    ``nulls``: surrogate maps per null kind (:func:`tdsnn.analysis.chance.add_nulls`; None:
    none); ``keep_border``: keep the units whose receptive field overlaps the image border;
    ``kernels``: the pinwheel curve's map kernels (hypercolumn widths).
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
    if nulls is not None:
        check_nulls(nulls)
    start = time.perf_counter()
    try:
        for name, rec in zip(names, recordings, strict=True):
            results[name] = analyze_recording(
                rec, seed=seed, smooth_mm=smooth_mm, keep_border=keep_border
            )
            for analysis in results[name] if nulls is not None else ():
                add_nulls(analysis, rec.area(analysis.area), nulls, seed, kernels)
            metrics["recordings"].append(
                {
                    "label": name,
                    "path": str(rec.path),
                    "trials": rec.num_trials,
                    "complete": rec.complete,
                    "state": rec.state,  # "writing": its writer was still at work (SWMR)
                    "total_trials": rec.total_trials,
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
        if entry.get("state") == "writing":
            written = f"{entry['trials']} of {entry['total_trials']}"
            state = f" (still being written: {written} trials committed)"
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
            values = " | ".join(_headline_cell(analysis, key) for key, _, _ in keys)
            lines.append(f"| {name} | {analysis.area} | {values} |")
    lines += ["", *[f"- **{title}**: {text}." for _, title, text in keys]]
    if any("nulls" in a.metrics for r in results.values() for a in r):
        lines.append("- **(c)**: within the central 95 % of at least one of the metric's nulls "
                     "(see Against chance): not distinguishable from chance.")  # fmt: skip
    lines += ["", *_chance_section(results), *_animal_section(metrics), *_tuning_section(results)]
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


def _null_cell(place: dict | None) -> str:
    if place is None or place["null_mean"] is None:
        return "–"
    z = "–" if place["z"] is None else f"{place['z']:.1f}"
    return f"{place['null_mean']:.3f} ± {place['null_sd']:.3f} (z {z}, {place['percentile']:.0f} %)"


def _chance_section(results: dict[str, list[AreaAnalysis]]) -> list[str]:
    """Each map metric beside its nulls (:func:`tdsnn.analysis.chance.add_nulls`)."""
    rows = [(name, a) for name, r in results.items() for a in r if "nulls" in a.metrics]
    if not rows:
        return []
    count = rows[0][1].metrics["null_draws"]
    lines = [
        "## Against chance",
        "",
        f"Each metric on {count} surrogate maps of each null: *within*, unit positions "
        "permuted within each hypercolumn; *sheet*, across the sheet; *field* (pinwheels), "
        "Gaussian random fields with the map's own radially averaged power spectrum; *floor* "
        "(PVL), N random preferences, N the area's kernels per hypercolumn (1 000 draws). "
        "Cells: the null's mean ± sd (z-score of the value, its percentile among the draws). A "
        "value within a null's central 95 % is **not distinguishable from chance**.",
        "",
        "| recording | area | metric | value | within | sheet | field / floor | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in rows:
        for key, kinds in a.metrics["nulls"].items():
            value = next(iter(kinds.values()))["value"]
            third = kinds.get("field") or kinds.get("floor")
            chance = _at_chance(a, key)
            known = any(place["chance"] is not None for place in kinds.values())
            verdict = (f"not distinguishable from chance ({', '.join(chance)})" if chance
                       else "beyond every null" if known else "–")  # fmt: skip
            lines.append(
                f"| {name} | {a.area} | {NULL_TITLES.get(key, key)} | {_fmt(value)} | "
                f"{_null_cell(kinds.get('within'))} | {_null_cell(kinds.get('sheet'))} | "
                f"{_null_cell(third)} | {verdict} |"
            )
    return [*lines, ""]


def scorecard_lines(metrics: dict) -> list[str]:
    """The scorecard (:mod:`tdsnn.analysis.references`) of every recording and area, a line
    each."""
    return [
        scorecard_line(entry["label"], area, row)
        for entry in metrics["recordings"]
        for area, values in entry["areas"].items()
        for row in scorecard(area, values)
    ]


def _animal_section(metrics: dict) -> list[str]:
    lines = scorecard_lines(metrics)
    if not lines:
        return []
    return [
        "## Against animals",
        "",
        "Each measured value beside its nulls (mean ± sd) and a published animal value; "
        "where each value was read is in tdsnn's docs/topography/references.md.",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]


def _fmt_px(value) -> str:
    return "–" if value is None else f"{value:g}"


def _tuning_section(results: dict[str, list[AreaAnalysis]]) -> list[str]:
    """Per area with gratings: receptive field, map kernel, preference histogram, and mean
    selectivity per spatial frequency (frequencies the receptive field does not resolve
    marked)."""
    tuned = [
        (name, a) for name, r in results.items() for a in r if "orientation_histogram" in a.metrics
    ]
    if not tuned:
        return []
    edges = tuned[0][1].metrics["orientation_histogram"]["edges_deg"]
    bins = [f"{lo:.0f}–{hi:.0f}°" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    lines = [
        "## Orientation tuning",
        "",
        "Each unit's preference and selectivity are taken at its best spatial frequency (the "
        "one driving it most, averaged over orientations and phases) among the gratings from "
        "one cycle per receptive field (RF, from the architecture) to Nyquist. Maps place "
        "every unit at its own position, smoothed by a Gaussian of the stated sigma "
        f"(default {SMOOTH_HYPERCOLUMNS:g} hypercolumn widths); pinwheels and the column "
        "spacing Λ are measured on that map.",
        "",
        "| recording | area | RF (px) | map σ (mm) | Λ (mm) | PVL | units | "
        + " | ".join(bins)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(bins),
    ]
    for name, a in tuned:
        m = a.metrics
        hist = m["orientation_histogram"]["counts"]
        spacing = m.get("pinwheels", {}).get("spacing_mm")
        lines.append(
            f"| {name} | {a.area} | {_fmt_px(m.get('receptive_field_px'))} | "
            f"{_fmt(m['map_smoothing_mm'])} | {_fmt(spacing)} | "
            f"{_fmt(m['population_vector_length'])} | {sum(hist)} | "
            + " | ".join(str(c) for c in hist)
            + " |"
        )
    lines += [
        "",
        "Mean selectivity per spatial frequency (units it drives; * = below one "
        "cycle per RF or above Nyquist, left out of the best-frequency choice):",
        "",
    ]
    for name, a in tuned:
        rows = a.metrics["selectivity_per_frequency"]
        head = " | ".join(
            f"{r['cycles_per_image']:.3g}{'' if r['resolvable'] else '*'}" for r in rows
        )
        lines += [
            f"**{name}, {a.area}** (cycles per image):",
            "",
            "| | " + head + " |",
            "|---|" + "---|" * len(rows),
            "| period (px) | " + " | ".join(_fmt(r["period_px"]) for r in rows) + " |",
            "| selectivity | " + " | ".join(_fmt(r["selectivity_mean"]) for r in rows) + " |",
            "| best for (fraction of units) | "
            + " | ".join(_fmt(r["best_fraction"]) for r in rows)
            + " |",
            "",
        ]
    return lines
