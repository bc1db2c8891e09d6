"""An experiment's results: ``results.csv`` -> ``summary.json`` and ``report.md``, verdicts on
its published directions, and the seeds a next experiment needs.

``tdsnn experiment report DIR`` rebuilds the summary and report from ``results.csv`` and the
spec without retraining (the spec's statistics keys may change, its arms may not);
``tdsnn experiment SPEC --plan PILOT_DIR`` reads a pilot's ``results.csv`` and says how many
paired seeds each direction needs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from tdsnn.atomic import write_atomic
from tdsnn.errors import ConfigError, UserError
from tdsnn.experiment.comparisons import Direction
from tdsnn.experiment.report import write_report
from tdsnn.experiment.spec import ExperimentSpec, load_spec
from tdsnn.experiment.stats import (
    POWER,
    adjust_p,
    describe,
    judge,
    measure_key,
    min_detectable_effect,
    pair_rows,
    paired_difference,
    seeds_needed,
    summarize,
)

__all__ = ["plan_seeds", "read_results", "report_experiment", "write_results"]

FIELDS = ["arm", "seed", "measure", "level", "value"]


def write_csv(out: Path, rows: list[dict]) -> None:
    """``results.csv``: one row per arm, seed, measure and level (empty for scalars)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows({**r, "level": "" if r["level"] is None else r["level"]} for r in rows)
    write_atomic(out / "results.csv", text.getvalue())


def read_results(folder: str | Path) -> list[dict]:
    """The rows of ``folder/results.csv`` (``level`` None for scalars, ``value`` a float)."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise UserError(f"{path} does not exist: report needs an experiment folder with its "
                        "results.csv (tdsnn experiment SPEC --out DIR writes one)")  # fmt: skip
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != FIELDS:
                raise ValueError(f"columns {reader.fieldnames}, expected {FIELDS}")
            return [
                {"arm": r["arm"], "seed": int(r["seed"]), "measure": r["measure"],
                 "level": None if r["level"] == "" else float(r["level"]),
                 "value": float(r["value"])}
                for r in reader
            ]  # fmt: skip
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UserError(f"{path} cannot be read: {' '.join(str(exc).split())}") from exc


def alpha_of(spec: ExperimentSpec) -> float:
    return 1 - spec.confidence


def test_alpha(spec: ExperimentSpec, direction: Direction) -> float:
    """The level a direction's p must pass for a verdict, for power: ``α / m`` for one of
    ``m`` corrected primary directions (the Bonferroni bound, which the first step of Holm
    and BH uses), ``α`` for an exploratory one or without correction."""
    primaries = sum(d.primary for d in spec.directions)
    if direction.primary and spec.correction != "none" and primaries > 1:
        return alpha_of(spec) / primaries
    return alpha_of(spec)


def judge_directions(spec: ExperimentSpec, rows: list[dict]) -> list[dict]:
    """Each published direction with its paired effect (treatment − control), its p-values
    (t-test, exact sign-flip, corrected across the primary directions), its minimum detectable
    effect and its verdict, in spec order."""
    alpha = alpha_of(spec)
    out = []
    for d in spec.directions:
        key = measure_key(d.measure, d.level)
        seeds, control, treatment = pair_rows(rows, d.control, d.treatment).get(key, ([], [], []))
        entry = {**dataclasses.asdict(d), "key": key, "n": len(seeds), "p_corrected": math.nan}
        if len(seeds) >= 2:
            result = paired_difference(control, treatment, confidence=spec.confidence,
                                       interval=spec.interval, equivalence=d.margin)  # fmt: skip
            entry.update(result)
            entry["mde"] = min_detectable_effect(entry["sd"], len(seeds), test_alpha(spec, d))
        else:
            measured = any(r["measure"] == d.measure for r in rows)
            entry["verdict"] = ("not shown (one seed)" if seeds else
                                "undefined (NaN)" if measured else "not measured")  # fmt: skip
        out.append(entry)
    primary = [e for e in out if e["primary"] and "p" in e]
    adjusted = adjust_p([e["p"] for e in primary], spec.correction)
    for entry, p in zip(primary, adjusted, strict=True):
        entry["p_corrected"] = float(p)
    for entry in out:
        if "p" in entry:
            p = entry["p_corrected"] if entry["primary"] else entry["p"]
            entry["verdict"] = judge(entry, entry["expect"], p, alpha)
    return out


def _contrasts(spec: ExperimentSpec, rows: list[dict]) -> dict:
    """Per contrast and scalar measure: the per-seed weighted sum over arms, described, with the
    t-test's and the sign flips' p of its mean being 0 (uncorrected) and its MDE."""
    values = {(r["arm"], r["seed"], r["measure"]): r["value"] for r in rows if r["level"] is None}
    measures = list(dict.fromkeys(r["measure"] for r in rows if r["level"] is None))
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for name, weights in spec.contrasts.items():
        out[name] = {"weights": weights}
        for measure in measures:
            per_seed = []
            for seed in seeds:
                terms = [(w, values.get((arm, seed, measure))) for arm, w in weights.items()]
                if all(t is not None and math.isfinite(t) for _, t in terms):
                    per_seed.append(sum(w * t for w, t in terms))
            interval = spec.interval if len(per_seed) >= 10 else "t"
            entry = describe(per_seed, confidence=spec.confidence, interval=interval)
            test = paired_difference(np.zeros(len(per_seed)), per_seed,
                                     confidence=spec.confidence, interval=interval)  # fmt: skip
            out[name][measure] = {**entry, **{k: test[k] for k in ("p", "p_sign_flip", "mde")}}
    return out


def _contrast_notes(contrasts: dict, confidence: float) -> list[str]:
    notes = []
    for name, entry in contrasts.items():
        terms = " ".join(f"{w:+g}·{a}" for a, w in entry["weights"].items())
        for measure, d in entry.items():
            if measure == "weights" or d.get("method") in ("degenerate", "none"):
                continue  # no spread over seeds (or too few seeds): nothing to say
            notes.append(
                f"contrast {name} ({terms}) on {measure}: {d['mean']:+.4f}, "
                f"{confidence:.0%} {d['method']} CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
                f"n = {d['n']}, t-test p = {d['p']:.3g}, sign-flip p = {d['p_sign_flip']:.3g} "
                f"(uncorrected), MDE {d['mde']:.3g}"
            )
    return notes


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def write_results(spec: ExperimentSpec, rows: list[dict], out: Path, experiment: dict) -> dict:
    """``summary.json`` and ``report.md`` (with figures) of ``rows`` in ``out``; return the
    summary. ``experiment``: what is known of the runs (``measured_epochs``, ``seconds``)."""
    summary = summarize(rows, comparisons=list(spec.comparisons), equivalence=spec.equivalence,
                        confidence=spec.confidence, interval=spec.interval)  # fmt: skip
    summary["correction"] = spec.correction
    summary["equivalence"] = spec.equivalence
    summary["contrasts"] = _contrasts(spec, rows)
    summary["directions"] = judge_directions(spec, rows)
    seeds = sorted({r["seed"] for r in rows})
    summary["experiment"] = {
        "name": spec.name,
        "description": spec.description,
        "arms": list(spec.arms),
        "seeds": seeds,
        "checkpoint": spec.checkpoint,
        **experiment,
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    notes = [spec.description] if spec.description else []
    selects = {values.get("optim.select", "best-val") for values in spec.arms.values()}
    checkpoint = (
        "matched validation accuracy (per seed, the first epoch reaching the lowest arm's plateau)"
        if spec.checkpoint != "best"
        else "each run's final model (best.pt, --select final)"
        if selects == {"final"}
        else "each run's best validation epoch (best.pt)"
        if selects == {"best-val"}
        else "each run's best.pt (--select final in some arms, best-val in the others)"
    )
    notes += [
        f"{len(spec.arms)} arms x {len(seeds)} paired seeds ({_seed_text(seeds)}); seed k of "
        "every arm starts from the same initial weights and sees the same data.",
        f"Measured at {checkpoint}.",
    ]
    notes += _contrast_notes(summary["contrasts"], spec.confidence)
    write_report(rows, summary, out, title=f"Experiment: {spec.name}", notes=notes,
                 figures=spec.figures)  # fmt: skip
    return summary


def _spec_of(folder: Path, spec_path: str | Path | None) -> tuple[ExperimentSpec, Path]:
    """The spec named, else the one ``folder/experiment.json`` was run from; only the arms
    its last invocation ran (``--arms``)."""
    plan = {}
    try:
        plan = json.loads((folder / "experiment.json").read_text())
        spec_path = spec_path or plan["spec"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if spec_path is None:
            raise UserError(f"{folder} has no readable experiment.json naming its spec; pass "
                            "the spec with --spec SPEC.yaml") from exc  # fmt: skip
    spec = load_spec(spec_path)
    part = plan.get("arms") if isinstance(plan, dict) else None
    if isinstance(part, list) and set(part) < set(spec.arms):  # run with --arms
        spec = spec.part(part)
    return spec, Path(spec_path)


def report_experiment(folder: str | Path, spec_path: str | Path | None = None) -> dict:
    """Rebuild ``summary.json`` and ``report.md`` of ``folder`` from its ``results.csv`` and the
    spec (its statistics keys may have changed; its arms may not). Return the summary."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"experiment folder {folder} does not exist or is not a folder")
    rows = read_results(folder)
    spec, spec_path = _spec_of(folder, spec_path)
    found = list(dict.fromkeys(r["arm"] for r in rows))
    if set(found) != set(spec.arms):
        raise ConfigError(
            f"{spec_path} has arms {list(spec.arms)} but {folder}/results.csv has {found}: "
            "report recomputes statistics, its arms must be those that were run"
        )
    previous = {}
    try:
        previous = json.loads((folder / "summary.json").read_text()).get("experiment", {})
    except (OSError, ValueError, AttributeError):
        pass  # written afresh
    experiment = {k: previous[k] for k in ("measured_epochs", "seconds") if k in previous}
    if "seconds_this_invocation" in previous:
        experiment.setdefault("seconds", previous["seconds_this_invocation"])
    return write_results(spec, rows, folder, experiment)


def _effects(effect: list[str] | None, spec: ExperimentSpec) -> tuple[float | None, dict]:
    """``--effect X`` (every direction) and ``--effect NAME=X`` (one direction)."""
    common, named = None, {}
    names = [d.name for d in spec.directions]
    for text in effect or []:
        name, _, value = text.rpartition("=")
        try:
            number = abs(float(value))
        except ValueError:
            raise ConfigError(f"--effect takes a number or NAME=NUMBER, got {text!r}") from None
        if not name:
            common = number
        elif name not in names:
            raise ConfigError(f"--effect {text!r}: no direction named {name!r}; directions: "
                              f"{names}")  # fmt: skip
        else:
            named[name] = number
    return common, named


def plan_seeds(
    spec_path: str | Path, pilot: str | Path, effect: list[str] | None = None
) -> list[dict]:
    """Per direction of the spec: the pilot's paired sd and effect, and the paired seeds that
    detect ``effect`` (default: the pilot's own mean difference) with 80 % power at the level
    the direction is tested at (:func:`test_alpha`)."""
    spec = load_spec(spec_path)
    if not spec.directions:
        raise ConfigError(f"{spec_path} has no directions to plan for")
    rows = read_results(pilot)
    common, named = _effects(effect, spec)
    arms = {r["arm"] for r in rows}
    out = []
    for d in spec.directions:
        key = measure_key(d.measure, d.level)
        entry = {"name": d.name, "key": key, "primary": d.primary, "alpha": test_alpha(spec, d)}
        pairs = {}
        if {d.control, d.treatment} <= arms:
            pairs = pair_rows(rows, d.control, d.treatment)
        if key not in pairs or len(pairs[key][0]) < 2:
            out.append({**entry, "n": len(pairs.get(key, ([],))[0]), "needed": None,
                        "note": "fewer than 2 paired seeds of it in the pilot"})  # fmt: skip
            continue
        seeds, control, treatment = pairs[key]
        diff = np.asarray(treatment) - np.asarray(control)
        sd, mean = float(np.std(diff, ddof=1)), float(np.mean(diff))
        target = named.get(d.name, common if common is not None else abs(mean))
        needed = seeds_needed(target, sd, entry["alpha"], POWER)
        out.append({**entry, "n": len(seeds), "pilot_effect": mean, "sd": sd, "effect": target,
                    "needed": needed,
                    "note": "" if needed else "effect 0 or over 100 000 seeds"})  # fmt: skip
    return out
