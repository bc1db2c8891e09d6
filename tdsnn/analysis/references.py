"""Published animal values that ``tdsnn analyze`` sets beside its measurements (a scorecard).

Only values read in a source are listed, each with it; ``docs/topography/references.md`` gives
where each was read and what was looked for and not found. A reference is compared with the
metric of the same name in an area's ``metrics`` (a dotted name reaches a nested entry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdsnn.choices import NULL_METRICS

__all__ = ["REFERENCES", "Reference", "metric_value", "scorecard", "scorecard_line"]


@dataclass(frozen=True)
class Reference:
    """One published value: ``metric`` (a key of an area's metrics), the ``areas`` it applies to
    (upper case), ``value`` with its stated ``spread`` (text),
    ``species`` and ``source`` (short citation)."""

    metric: str
    areas: tuple[str, ...]
    value: float
    spread: str
    species: str
    source: str


REFERENCES: tuple[Reference, ...] = (
    Reference(
        "pinwheels.density", ("V1",), np.pi, "\"close to π\", no interval read",
        "ferret, tree shrew and galago V1", "Kaschube et al. 2010, Science 330:1113",
    ),
    Reference(
        "orientation_selectivity_median", ("V1",), 0.39, "median circular variance 0.61, 308 cells",
        "macaque V1", "Ringach, Shapley & Hawken 2002, J Neurosci 22:5639",
    ),
)  # fmt: skip


def metric_value(metrics: dict, name: str) -> float | None:
    """``metrics[name]``, a dotted ``a.b`` for ``metrics[a][b]``; None where it is absent or
    not a number."""
    value = metrics
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def scorecard(area: str, metrics: dict) -> list[dict]:
    """Rows ``{metric, measured, nulls, reference, spread, species, source}`` for the
    references of ``area`` whose metric was measured; ``nulls``: ``{kind: summary}`` of
    :func:`tdsnn.analysis.nulls.compare` (empty without nulls)."""
    rows = []
    for ref in REFERENCES:
        measured = metric_value(metrics, ref.metric)
        if area.upper() not in ref.areas or measured is None:
            continue
        key = NULL_METRICS.get(ref.metric, (ref.metric,))[0]
        nulls = metrics.get("nulls", {}).get(key, {})
        rows.append({
            "metric": ref.metric, "measured": float(measured),
            "nulls": nulls, "reference": ref.value,
            "spread": ref.spread, "species": ref.species, "source": ref.source,
        })  # fmt: skip
    return rows


def scorecard_line(label: str, area: str, row: dict) -> str:
    """One line of the scorecard: the measured value, its nulls and the reference."""
    placed = [(kind, s) for kind, s in row["nulls"].items() if s["null_mean"] is not None]
    nulls = ", ".join(f"{kind} {s['null_mean']:.3g} ± {s['null_sd']:.2g}" for kind, s in placed)
    return (
        f"{label}, {area}: {row['metric']} {row['measured']:.3g}"
        f" (nulls: {nulls or 'none'}); {row['species']}: {row['reference']:.3g}"
        f" ({row['spread']}; {row['source']})"
    )
