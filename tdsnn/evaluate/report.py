"""``tdsnn evaluate``: runs -> one CSV per test, ``metrics.json``, figures and ``report.md``."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn without pyplot: the global backend is untouched
from tqdm.auto import tqdm

from tdsnn.atomic import write_atomic
from tdsnn.errors import ConfigError, Stopped
from tdsnn.evaluate.options import NAMED_TESTS, TESTS, WEIGHT_NOISE_TESTS, EvaluateOptions
from tdsnn.evaluate.perturb import weight_stds
from tdsnn.evaluate.runner import (
    DEFAULT_REPEATS,
    EvalRun,
    accuracy,
    check_levels,
    check_run_tests,
    count_evaluations,
    curve_summary,
    load_eval_run,
    reference_level,
    representation,
    run_test,
)
from tdsnn.runtime import StopSignals

__all__ = ["evaluate_runs", "parse_tests"]

LEVEL_UNITS = {
    "weight-noise": "noise std / weight std",
    "weight-noise-absolute": "noise std (weight units)",
    "weight-noise-multiplicative": "noise std / each weight's magnitude: w · (1 + level · ε)",
    "input-noise": "degradation level (see report)",
    "pruning": "fraction of weights pruned",
    "pruning-channels": "fraction of output channels removed",
    "lesion": "fraction of the area's units silenced",
    "adversarial": "L∞ ε (intensity, 0–1)",
    "timesteps": "time steps T' run at test (drops from the run's own T)",
    "early-readout": "first t steps read out (drops from all T)",
    "spike-jitter": "largest spike lag k (steps)",
    "spike-deletion": "probability of deleting each spike",
    "spike-insertion": "probability of a spike in each silent slot",
    "synchrony-disruption": "fraction of units circularly shifted",
}


SUMMARY_HEADS = {"auc": "AUC", "mean_accuracy": "mean accuracy"}


def parse_tests(text: str | None) -> tuple[str, ...] | None:
    """``--tests`` as names; ``None`` (not given): every test that applies to the runs."""
    if not text:
        return None
    tests = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tests if t not in TESTS]
    if unknown or not tests:
        raise ConfigError(f"tests {text!r}: unknown {unknown}; choose from {','.join(TESTS)}")
    return tests


def _names(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def evaluate_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    tests: tuple[str, ...] | None = None,
    levels: tuple[float, ...] | None = None,
    layers: str | tuple[str, ...] = "topographic",
    repeats: int = DEFAULT_REPEATS,
    test_size: int | None = None,
    batch_size: int = 256,
    data_root: str | None = None,
    device="cpu",
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Evaluate every run in ``run_dirs`` on ``tests`` and write the results to ``out``.

    ``tests`` ``None``: every test that applies to every run (:data:`TESTS`; the temporal
    tests only if every run has LIF units). ``layers`` (``topographic``, ``all`` or area
    names) are what weight noise, pruning, lesions and the spike perturbations touch and where
    the pre-activation metrics are taken; ``test_size`` ``None`` uses each run's whole test
    split.

    Raises:
        Stopped: Ctrl-C or SIGTERM (:class:`~tdsnn.runtime.StopSignals`) stopped it after the
            point being evaluated; the tests completed before it are written to ``out`` (its
            ``path``), and a call with the same options and ``out`` continues with the rest
            (its results equal an uninterrupted evaluation's: every draw is keyed by seed, test
            and point).
    """
    EvaluateOptions(repeats=repeats, test_size=test_size, batch_size=batch_size)  # checks
    if tests is not None:
        check_levels(tests, levels)  # before any run loads
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; pass a folder")
    paths = [Path(p) for p in run_dirs]
    start = time.perf_counter()
    points = dict(levels=levels, repeats=repeats, seed=seed, batch_size=batch_size)
    with StopSignals() as stop:
        sizes = dict(test_size=test_size, data_root=data_root, device=device, layers=layers)
        runs = [
            load_eval_run(p, name=name, **sizes)
            for p, name in zip(paths, _names(paths), strict=True)
        ]  # every run loads, and its layers resolve, before any work
        tests = tests or _applicable_tests(runs)
        check_levels(tests, levels)
        for run in runs:
            check_run_tests(tests, run, levels)
        options = {"runs": [str(p) for p in paths], "tests": list(tests), "layers": layers,
                   "test_size": test_size, "data_root": data_root, **points}  # fmt: skip
        kept = _stopped_evaluation(out, options, tests)
        settings = {"tests": list(tests), "repeats": repeats, "seed": seed, "layers": layers,
                    "test_images": {r.name: len(r.labels) for r in runs}}  # fmt: skip
        metrics: dict = {"runs": {}, "settings": settings}
        total = sum(count_evaluations(tests, run, levels, repeats, known=[len(run.labels)])
                    for run in runs)  # fmt: skip
        with tqdm(total=total, desc="evaluating", unit="eval", disable=quiet) as progress:
            rows, left = _evaluate(runs, paths, tests, metrics, points, progress, stop, kept)
    metrics["seconds"] = time.perf_counter() - start
    if left:
        metrics["stopped"] = {"not_evaluated": left, "options": options}
    _write_results(out, metrics, rows)
    if left:
        done = len(runs) * len(tests) - len(left)
        raise Stopped(
            f"stopped by a signal after {done} of {len(runs) * len(tests)} tests; {out} holds "
            f"the completed ones (metrics.json lists the rest under 'stopped'); the same "
            "command continues with the rest",
            path=out,
        )
    return metrics


def _applicable_tests(runs: list[EvalRun]) -> tuple[str, ...]:
    """The default tests: every test but those of :data:`~tdsnn.evaluate.options.NAMED_TESTS`
    (weight noise at its absolute and multiplicative scales, and the temporal tests, LIF runs
    only), which run only when named (``--tests``)."""
    return tuple(t for t in TESTS if t not in NAMED_TESTS)


def _evaluate(
    runs: list[EvalRun],
    paths: list[Path],
    tests: tuple[str, ...],
    metrics: dict,
    points: dict,
    progress: tqdm,
    stop: StopSignals,
    kept: tuple[dict, dict[str, list[dict]]] = ({}, {}),
) -> tuple[dict[str, list[dict]], list[str]]:
    """Every test of every run into ``metrics["runs"]``: the rows per test and the
    ``"run: test"`` left out because ``stop`` was requested (a test stopped halfway is left
    out whole, so that every written result covers all its points). ``kept``: the entries and
    rows of an evaluation with the same options that a signal stopped; its completed tests
    are taken as they are."""
    rows: dict[str, list[dict]] = defaultdict(list)
    left: list[str] = []
    for run, path in zip(runs, paths, strict=True):
        if stop.requested:
            left += [f"{run.name}: {test}" for test in tests]
            continue
        before = kept[0].get(run.name, {})
        entry = metrics["runs"][run.name] = {
            "run_dir": str(path),
            "neuron": run.trained.config.model.neuron,  # lif | relu: what responses are
            "layers": list(run.layers) if run.layers else "all",
            "chance": run.chance,
            "accuracy": before.get("accuracy"),
        }
        if entry["accuracy"] is None:
            entry["accuracy"] = accuracy(run.model, run.images, run.labels, seed=points["seed"],
                                         batch_size=points["batch_size"])  # fmt: skip
        baseline = {len(run.labels): entry["accuracy"]}  # shared by the run's tests
        for test in tests:
            if test in before:  # completed before the stop
                found = [r for r in kept[1].get(test, []) if r["run"] == run.name]
                entry[test] = (
                    before[test] if test == "representation" else _summary(found, run, test)
                )
                rows[test] += found
                progress.update(count_evaluations([test], run, points["levels"], points["repeats"],
                                                  known=baseline))  # fmt: skip
                continue
            if not stop.requested and test == "representation":
                entry["representation"] = representation(run, points["batch_size"])
                continue
            found = []
            if not stop.requested:
                for row in run_test(test, run, **points, progress=progress, baseline=baseline):
                    found.append(row)
                    if stop.requested:  # after the current point
                        break
            if stop.requested:
                left.append(f"{run.name}: {test}")
                continue
            rows[test] += found
            entry[test] = _summary(found, run, test)
    return rows, left


def _stopped_evaluation(
    out: Path, options: dict, tests: tuple[str, ...]
) -> tuple[dict, dict[str, list[dict]]]:
    """The run entries and rows per test written in ``out`` by an evaluation with the same
    ``options`` that a signal stopped (``({}, {})`` if there is none)."""
    try:
        written = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}, {}
    stopped = written.get("stopped") if isinstance(written, dict) else None
    if not stopped or stopped.get("options") != json.loads(json.dumps(options)):
        return {}, {}
    rows = {test: _read_csv(out / f"{test}.csv") for test in tests
            if (out / f"{test}.csv").is_file()}  # fmt: skip
    print(f"continuing the evaluation stopped in {out}", file=sys.stderr)
    return written["runs"], rows


def _read_csv(path: Path) -> list[dict]:
    """Rows written by :func:`_write_csv`, with their types."""
    with open(path, newline="") as f:
        return [{**r, "level": float(r["level"]), "repeat": int(r["repeat"]),
                 "accuracy": float(r["accuracy"])} for r in csv.DictReader(f)]  # fmt: skip


def _write_results(out: Path, metrics: dict, rows: dict[str, list[dict]]) -> None:
    """One CSV and one figure per test, ``metrics.json`` and ``report.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for test, found in rows.items():
        _write_csv(out / f"{test}.csv", found)
    figures = [f for test, found in rows.items() if (f := _figure(test, found, out))]
    write_atomic(out / "metrics.json", json.dumps(_json_safe(metrics), indent=1) + "\n")
    write_atomic(out / "report.md", _report(metrics, rows, figures))


def _summary(rows: list[dict], run: EvalRun, test: str) -> dict:
    """Per condition, :func:`~tdsnn.evaluate.runner.curve_summary` of the mean accuracy over
    repeats at each level (drops from the test's reference level), with ``se``, the standard
    error of that mean over the noise draws (0 for one draw): ``{condition: {accuracy, drop,
    ratio, se: {level: value}, auc}}``. The weight-noise tests add ``mean_accuracy`` to each
    curve and ``weight_std: {weight name: std}`` of the weights they perturb."""
    table: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        table[r["condition"]][r["level"]].append(r["accuracy"])
    out: dict = {}
    reference = reference_level(test, run)
    noisy_mean = test in WEIGHT_NOISE_TESTS
    for condition, levels in table.items():
        means = {lv: float(np.mean(v)) for lv, v in levels.items()}
        curve = curve_summary(means, run.chance, reference, noisy_mean=noisy_mean)
        curve["se"] = {f"{lv:g}": draw_standard_error(v) for lv, v in sorted(levels.items())}
        out[condition] = curve
    if noisy_mean:
        out["weight_std"] = weight_stds(run.model, run.layers)
    return out


def draw_standard_error(accuracies: list[float]) -> float:
    """Standard error of the mean of ``accuracies`` over noise draws (0 for a single draw)."""
    n = len(accuracies)
    return float(np.std(accuracies, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def _write_csv(path: Path, rows: list[dict]) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(
        table, fieldnames=["run", "test", "condition", "level", "repeat", "accuracy"]
    )
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, table.getvalue())


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
    fig = Figure(figsize=(3.6 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
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
    write_atomic(out / name, lambda f: fig.savefig(f, dpi=110, format="png"))
    return name


def _report(metrics: dict, rows: dict[str, list[dict]], figures: list[str]) -> str:
    lines = ["# Robustness and representation report", ""]
    if "stopped" in metrics:
        left = "; ".join(metrics["stopped"]["not_evaluated"])
        lines += [f"**Incomplete**: stopped by a signal before these tests ended: {left}.", ""]
    runs = metrics["runs"]
    lines += ["| run | units | test accuracy | images | layers perturbed |", "|---" * 5 + "|"]
    for name, entry in runs.items():
        n = metrics["settings"]["test_images"][name]
        units = "ReLU" if entry["neuron"] == "relu" else "LIF"
        layers = entry["layers"] if isinstance(entry["layers"], str) else ", ".join(entry["layers"])
        lines.append(f"| {name} (`{entry['run_dir']}`) | {units} | {entry['accuracy']:.3f} | "
                     f"{n} | {layers} |")  # fmt: skip
    lines += ["", "Each cell: mean accuracy over repeats (its difference from the run as "
              "trained, in points: level 0, or the run's own T steps for timesteps and "
              "early-readout; its ratio to it). AUC: chance-corrected area under the curve, the "
              "mean over the level range of (accuracy − chance) / (that reference accuracy − "
              "chance); 1 = no loss, 0 = chance throughout. The noise-draw standard error "
              "(the spread of the mean over draws) is in metrics.json per point; each table "
              "states its largest. Weight-noise tables add the mean accuracy over the noisy "
              "levels (every level but 0), not normalised.", ""]  # fmt: skip
    for test, found in rows.items():
        lines += [f"## {test}", "", f"Level = {LEVEL_UNITS[test]}.", ""]
        for condition in dict.fromkeys(r["condition"] for r in found):
            levels = sorted({r["level"] for r in found if r["condition"] == condition})
            lines += [f"**{condition}**", "", *_curve_table(runs, test, condition, levels)]
            lines += ["", *_widest_error(runs, test, condition)]
        lines += _weight_std_lines(runs, test)
        if f"{test}.png" in figures:
            lines += [f"![{test}]({test}.png)", ""]
    if any("representation" in e for e in runs.values()):
        lines += _representation(runs) + _efficiency(runs)
    lines.append(f"Evaluated in {metrics['seconds']:.1f} s.")
    return "\n".join(lines) + "\n"


def _curve_table(runs: dict, test: str, condition: str, levels: list[float]) -> list[str]:
    """A condition's table: a row per run, a cell per level (:func:`_point`), then its AUC and,
    for the weight-noise tests, its mean accuracy over the noisy levels."""
    summaries = ("auc", "mean_accuracy") if test in WEIGHT_NOISE_TESTS else ("auc",)
    heads = [*(f"{lv:.3g}" for lv in levels), *(SUMMARY_HEADS[k] for k in summaries)]
    lines = ["| run | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for run, entry in runs.items():
        curve = entry.get(test, {}).get(condition)
        if curve is not None:
            cells = [_point(curve, f"{lv:g}") for lv in levels]
            cells += [_number(curve.get(k)) for k in summaries]
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return lines


def _weight_std_lines(runs: dict, test: str) -> list[str]:
    """For a weight-noise test, a line per run with the std of each weight it perturbs."""
    found = {run: entry[test]["weight_std"] for run, entry in runs.items()
             if "weight_std" in entry.get(test, {})}  # fmt: skip
    lines = [f"Weight std, {run}: " + ", ".join(f"`{name}` {std:.4g}" for name, std in stds.items())
             + "." for run, stds in found.items()]  # fmt: skip
    return [*lines, ""] if lines else []


def _widest_error(runs: dict, test: str, condition: str) -> list[str]:
    """A line naming the largest noise-draw standard error of a condition's points, if any."""
    errors = [(se, run, level) for run, entry in runs.items()
              for level, se in entry.get(test, {}).get(condition, {}).get("se", {}).items()
              if se > 0]  # fmt: skip
    if not errors:
        return []
    se, run, level = max(errors)
    return [f"Noise-draw standard error: at most {100 * se:.1f} points ({run}, level {level}).",
            ""]  # fmt: skip


def _number(value, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _point(curve: dict, level: str) -> str:
    accuracy, drop = curve["accuracy"].get(level), curve["drop"].get(level)
    if accuracy is None:
        return "–"
    if drop is None:
        return _number(accuracy)
    ratio = curve["ratio"][level]
    return f"{_number(accuracy)} ({0.0 - 100 * drop:+.1f}, {_number(100 * ratio, 0)} %)"


def _area_table(runs: dict, heading: str, text: str, columns: list[str], cells) -> list[str]:
    """A section with one row per run and area of the ``representation`` entries: ``cells``
    maps an area's values to the row's cells (``None``: no row)."""
    lines = [f"## {heading}", "", text, "", "| run | area | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 2) + "|"]  # fmt: skip
    for name, entry in runs.items():
        for area, values in entry.get("representation", {}).items():
            found = cells(values)
            if found is not None:
                lines.append(f"| {name} | {area} | " + " | ".join(found) + " |")
    return lines + [""]


def _representation(runs: dict) -> list[str]:
    text = ("Per area, on the responses (spike counts per image for LIF units, activations for "
            "ReLU units; their variances are on different scales): participation ratio "
            "(effective dimensionality), mean per-unit response variance, and Moran's I of "
            "the last area's mean-response map (neighbours within the neighbourhood width). "
            "Per perturbed layer, on the pre-activation (the units' input current, as Truong "
            "& Hasson): Moran's I per image with the layer's loss neighbourhood (lattice "
            "neighbours on a tiled or grid sheet, else the neighbourhood width), averaged over "
            "images, and the mean per-unit pre-activation variance over images.")  # fmt: skip
    columns = ["participation ratio", "activation variance", "map Moran's I",
               "Moran's I per image", "pre-activation variance"]  # fmt: skip
    return _area_table(runs, "Representation", text, columns, lambda values: [
        _number(values["participation_ratio"], 2),
        _number(values["activation_variance"], 4),
        _number(values.get("map_morans_i")),
        _number(values.get("morans_i")),
        _number(values.get("preactivation_variance"), 4),
    ])  # fmt: skip


def _efficiency(runs: dict) -> list[str]:
    text = ("Per area, per test image: the mean firing rate of its units (spikes per unit per "
            "step) and the fraction of them silent for every image; synaptic operations, one "
            "per spike and output it feeds in the area's synaptic layers over all T steps; "
            "and the multiply-accumulates the same layers make run densely for one step (a "
            "ReLU twin's cost; a ReLU run's own).")  # fmt: skip
    columns = ["firing rate", "silent units", "synaptic ops", "dense MACs", "ops / MACs"]

    def cells(values: dict) -> list[str] | None:
        if "dense_macs" not in values:  # an entry from before these figures
            return None
        ops, macs = values.get("synaptic_ops"), values["dense_macs"]
        return [
            _number(values.get("firing_rate"), 4),
            _number(values["silent_fraction"]),
            "–" if ops is None else f"{ops:,.0f}",
            f"{macs:,.0f}",
            "–" if ops is None or not macs else _number(ops / macs),
        ]

    return _area_table(runs, "Efficiency", text, columns, cells)
