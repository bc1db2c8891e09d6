"""Figures (PNG) and ``report.md`` of an experiment, from its rows and their summary.

``rows`` and ``summary`` are those of :mod:`tdsnn.experiment.stats`: one dict per arm, seed,
measure and level, and the output of :func:`tdsnn.experiment.stats.summarize`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn without pyplot: the global backend is untouched

from tdsnn.atomic import write_atomic
from tdsnn.experiment.stats import measure_key, table

__all__ = ["slug", "write_report"]


def slug(name: str) -> str:
    """File-name form of a measure: lowercase, runs of non-alphanumerics as one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "measure"


def _fmt(value) -> str:
    """4 significant digits; NaN, infinities and missing values as "–"."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else "–"


def _num(value) -> float:
    """A summary number as a float; missing values as NaN."""
    return math.nan if value is None else float(value)


def _ci(entry: Mapping) -> str:
    low, high = _num(entry.get("ci_low")), _num(entry.get("ci_high"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _measures(rows: list[Mapping]) -> tuple[list[str], dict[str, list[float]]]:
    """Scalar measure names and ``{curve measure: sorted levels}``, first-appearance order."""
    scalars: list[str] = []
    curves: dict[str, set[float]] = {}
    for row in rows:
        measure, level = str(row["measure"]), row.get("level")
        if level is None:
            if measure not in scalars:
                scalars.append(measure)
        else:
            curves.setdefault(measure, set()).add(float(level))
    return scalars, {m: sorted(levels) for m, levels in curves.items()}


class _Names:
    """Unique ``{prefix}_{slug}.png`` file names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, prefix: str, name: str) -> str:
        base = f"{prefix}_{slug(name)}"
        found, k = f"{base}.png", 2
        while found in self.used:
            found, k = f"{base}-{k}.png", k + 1
        self.used.add(found)
        return found


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def _scalar_figure(
    measure: str, arms: list[str], values: dict, summary: Mapping, path: Path
) -> None:
    """Seeds as dots (deterministic jitter, same seed joined across arms), mean and CI bars."""
    fig = Figure(figsize=(1.1 * len(arms) + 2.2, 3.4))
    ax = fig.subplots()
    seeds = sorted({s for arm in arms for s in values.get(arm, {}).get(measure, {})})
    offsets = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
    jitter = dict(zip(seeds, offsets.tolist(), strict=True))
    for seed in seeds:  # paired seeds, faintly joined
        xs = [i + jitter[seed] for i, arm in enumerate(arms)]
        ys = [values.get(arm, {}).get(measure, {}).get(seed, np.nan) for arm in arms]
        ax.plot(xs, ys, "-", color="0.75", lw=0.6, zorder=1)
    for i, arm in enumerate(arms):
        by_seed = values.get(arm, {}).get(measure, {})
        if by_seed:
            xs = [i + jitter[s] for s in by_seed]
            ax.scatter(xs, list(by_seed.values()), s=14, color=f"C{i}", alpha=0.7, zorder=2)
        entry = summary.get("arms", {}).get(arm, {}).get(measure, {})
        mean = _num(entry.get("mean"))
        if not math.isfinite(mean):
            continue
        low, high = _num(entry.get("ci_low")), _num(entry.get("ci_high"))
        if math.isfinite(low) and math.isfinite(high):
            yerr = [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
            ax.errorbar(i + 0.3, mean, yerr=yerr, fmt="s", color="k", ms=5, capsize=4, zorder=3)
        else:
            ax.plot(i + 0.3, mean, "s", color="k", ms=5, zorder=3)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_xlim(-0.5, len(arms) - 0.3)
    level = f"{100 * float(summary.get('confidence', 0.95)):g}"
    ax.set(ylabel=measure, title=f"{measure}: seeds (dots), mean and {level} % CI (square)")
    ax.title.set_fontsize(9)
    _save(fig, path)


def _curve_figure(
    measure: str, levels: list[float], arms: list[str], summary: Mapping, path: Path
) -> None:
    """Mean over seeds against level, one line per arm, the CI as a shaded band."""
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    x = np.asarray(levels, float)
    for i, arm in enumerate(arms):
        by_key = summary.get("arms", {}).get(arm, {})
        entries = [by_key.get(measure_key(measure, lv), {}) for lv in levels]
        if not any(e.get("n", 0) for e in entries):
            continue
        mean, low, high = (
            np.array([_num(e.get(k)) for e in entries]) for k in ("mean", "ci_low", "ci_high")
        )
        ax.plot(x, mean, "o-", color=f"C{i}", ms=3, label=arm)
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            ax.fill_between(x, np.where(ok, low, 0), np.where(ok, high, 0), where=ok,
                            color=f"C{i}", alpha=0.2, lw=0)  # fmt: skip
    level = f"{100 * float(summary.get('confidence', 0.95)):g}"
    ax.set(xlabel="level", ylabel="value", title=f"{measure}: mean over seeds, {level} % CI")
    ax.title.set_fontsize(9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, path)


def _scalar_table(measure: str, arms: list[str], summary: Mapping, level: str) -> list[str]:
    lines = [f"| arm | n | mean | sd | {level} % CI |", "|---|---|---|---|---|"]
    for arm in arms:
        entry = summary.get("arms", {}).get(arm, {}).get(measure)
        if entry is None:
            continue
        lines.append(
            f"| {_cell(arm)} | {entry.get('n', 0)} | {_fmt(entry.get('mean'))} | "
            f"{_fmt(entry.get('sd'))} | {_ci(entry)} |"
        )
    return lines + [""]


def _difference_table(name: str, measures: list[str], entries: Mapping, level: str) -> list[str]:
    chosen = [m for m in measures if m in entries]
    if not chosen:
        return []
    tost = any("tost" in entries[m] for m in chosen)
    head = (f"| measure | pairs | mean diff | {level} % CI | t-test p | sign-flip p | MDE "
            "(80 %) |")  # fmt: skip
    head += " TOST (δ, p) | direction |" if tost else " direction |"
    lines = [f"### {name}", "", head, "|---" * (9 if tost else 8) + "|"]
    for m in chosen:
        e = entries[m]
        cells = [_cell(m), str(e.get("pairs", e.get("n", 0))), _fmt(e.get("mean_diff")), _ci(e),
                 _fmt(e.get("p")), _fmt(e.get("p_sign_flip")), _fmt(e.get("mde"))]  # fmt: skip
        if tost:
            t = e.get("tost")
            cells.append("–" if t is None else f"±{_fmt(t['delta'])}, p = {_fmt(t['p'])}")
        cells.append(e.get("direction", "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _curve_table(measure: str, levels: list[float], arms: list[str], summary: Mapping) -> list[str]:
    def cell(entry: Mapping | None, key: str) -> str:
        if not entry:
            return "–"
        return f"{_fmt(entry.get(key))} {_ci(entry)}"

    lines = [
        "| arm | " + " | ".join(f"{lv:g}" for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for arm in arms:
        by_key = summary.get("arms", {}).get(arm, {})
        cells = [cell(by_key.get(measure_key(measure, lv)), "mean") for lv in levels]
        lines.append(f"| {_cell(arm)} | " + " | ".join(cells) + " |")
    for name, entries in summary.get("differences", {}).items():
        cells = [cell(entries.get(measure_key(measure, lv)), "mean_diff") for lv in levels]
        if any(c != "–" for c in cells):
            lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _verdict_cell(d: Mapping) -> str:
    verdict = str(d["verdict"])
    if verdict == "not shown" and math.isfinite(_num(d.get("mde"))):
        verdict += f" (MDE {_fmt(d['mde'])})"
    return f"**{verdict}**" if d.get("primary", True) else f"{verdict} (exploratory)"


def _directions_table(directions: list[Mapping], summary: Mapping, level: str) -> list[str]:
    """The published directions, primary first, then exploratory, each with its verdict."""
    if not directions:
        return []
    correction = summary.get("correction", "holm")
    alpha = 1 - float(summary.get("confidence", 0.95))
    lines = [
        "## Published directions",
        "",
        f"Effect = treatment − control, paired by seed, with its {level} % "
        f"{summary.get('interval', 't')} interval; p from the paired t-test, the exact sign-flip "
        "p beside it (n ≤ 12). Primary directions are corrected among themselves "
        f"(`{correction}`); exploratory ones are not. Verdict: **reproduces** / **opposite to "
        f"published** when the (corrected) p < {alpha:g} and the interval excludes 0; "
        f"**equivalent within ±δ** when the TOST holds at {alpha:g} (δ in the measure's "
        "units); else **not shown**, with the minimum detectable effect (MDE) at 80 % power "
        "for this n and paired sd (at α/m for m corrected primary directions).",
        "",
    ]
    head = (f"| name | finding | source | setting | measure | control → treatment | n | effect "
            f"[{level} % CI] | p | sign-flip p | corrected p | TOST (δ, p) | expected | "
            "verdict |")  # fmt: skip
    primary = [d for d in directions if d.get("primary", True)]
    exploratory = [d for d in directions if not d.get("primary", True)]
    for title, group in (("Primary", primary), ("Exploratory", exploratory)):
        if not group:
            continue
        lines += [f"### {title}", "", head, "|---" * 14 + "|"]
        for d in group:
            effect = "–" if "mean_diff" not in d else f"{_fmt(d['mean_diff'])} {_ci(d)}"
            tost = d.get("tost")
            tost = "–" if not tost else f"±{_fmt(tost['delta'])}, p = {_fmt(tost['p'])}"
            cells = [d.get("name", "–"), d["claim"], d["source"] or "–", d["setting"] or "–",
                     f"`{d['key']}`", f"{d['control']} → {d['treatment']}", str(d["n"]), effect,
                     _fmt(d.get("p")), _fmt(d.get("p_sign_flip")), _fmt(d.get("p_corrected")),
                     tost, d["expect"], _verdict_cell(d)]  # fmt: skip
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return lines


def write_report(
    rows: Iterable[Mapping],
    summary: Mapping,
    out_dir: str | Path,
    *,
    title: str = "Experiment",
    notes: list[str] | None = None,
    figures: Iterable[str] | None = None,
) -> Path:
    """Write ``measure_<slug>.png`` per scalar measure, ``curve_<slug>.png`` per curve
    measure and ``report.md`` (tables of means with CIs, paired differences, figures) into
    ``out_dir``; return the path of ``report.md``. ``figures``: the measures to draw (default
    every one); the others get their tables only."""
    drawn = None if figures is None else set(figures)
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values, _ = table(rows)
    arms = list(dict.fromkeys([*values, *summary.get("arms", {})]))
    scalars, curves = _measures(rows)
    confidence = float(summary.get("confidence", 0.95))
    level = f"{100 * confidence:g}"
    names = _Names()

    lines = [f"# {title}", ""]
    if notes:
        lines += [f"- {note}" for note in notes] + [""]
    interval = summary.get("interval", "Student t")
    resamples = summary.get("n_resamples")
    lines += [
        f"Means over seeds with {level} % {interval} confidence intervals"
        + (f" ({resamples} resamples; t intervals where n < 10)" if resamples else "")
        + ". Differences are paired by seed: `b - a` is the second arm minus the first; p from "
        "the paired t-test, with the exact sign-flip p beside it for n ≤ 12; MDE: the smallest "
        "difference the t-test detects with 80 % power at this n and paired sd. The paired "
        "differences are exploratory: their p-values are not corrected for the many measures, "
        "and their direction (higher: CI above 0, lower: CI below 0) is no verdict.",
        "",
    ]
    lines += _directions_table(summary.get("directions", []), summary, level)
    if scalars:
        lines += ["## Measures", ""]
        for measure in scalars:
            lines += [f"### {measure}", "", *_scalar_table(measure, arms, summary, level)]
            if drawn is None or measure in drawn:
                name = names("measure", measure)
                _scalar_figure(measure, arms, values, summary, out / name)
                lines += [f"![{measure}]({name})", ""]
    differences = summary.get("differences", {})
    if scalars and differences:
        lines += ["## Paired differences (exploratory, uncorrected)", ""]
        for name, entries in differences.items():
            lines += _difference_table(name, scalars, entries, level)
    if curves:
        lines += ["## Curves", "", f"Mean [{level} % CI] per level; `b - a` rows: paired "
                  "differences.", ""]  # fmt: skip
        for measure, levels in curves.items():
            lines += [f"### {measure}", "", *_curve_table(measure, levels, arms, summary)]
            if drawn is None or measure in drawn:
                name = names("curve", measure)
                _curve_figure(measure, levels, arms, summary, out / name)
                lines += [f"![{measure}]({name})", ""]
    dropped = [
        f"{arm} / {key}: {count}"
        for arm, counts in summary.get("dropped_nan", {}).items()
        for key, count in counts.items()
        if count
    ]
    if dropped:
        lines += ["## Undefined values (NaN, left out)", ""] + [f"- {d}" for d in dropped] + [""]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    return path
