"""What an experiment measures on one trained run, at one checkpoint: rows of results.

A row is ``{"arm", "seed", "measure", "level", "value"}``: ``level`` is ``None`` for a scalar
measure (``test_acc``, ``topography_score/V1``, ``representation/IT/participation_ratio``) and
a number along a degradation curve (``weight-noise``: accuracy at that noise level; repeats of
a noisy level are averaged within the run). Every degradation curve comes three times: the
accuracy itself, ``<curve>/drop``, the run's accuracy at level 0 (at its own T for
``timesteps`` and ``early-readout``) minus its accuracy at the level (the difference Truong &
Hasson report, which does not flatter weaker networks as a ratio does), and the scalar
``<curve>/auc``, the chance-corrected area under it
(:func:`~tdsnn.evaluate.runner.curve_summary`). The weight-noise tests (one per scale:
``weight-noise``, ``weight-noise-absolute``, ``weight-noise-multiplicative``) add the scalars
``<test>/mean_accuracy``, the plain mean accuracy over the noisy levels, and
``<test>/weight_std/<weight>``, the std of each weight they perturb.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tdsnn.analysis.references import metric_value
from tdsnn.areas import area_spike_counts
from tdsnn.errors import ConfigError
from tdsnn.evaluate.options import TEMPORAL_TESTS, WEIGHT_NOISE_TESTS
from tdsnn.evaluate.perturb import weight_stds
from tdsnn.evaluate.runner import (
    curve_summary,
    load_eval_run,
    reference_level,
    representation,
    run_test,
)
from tdsnn.experiment.spec import Measures, RunPlan, null_variant
from tdsnn.model_config import spell_areas
from tdsnn.topo.metrics import SCORE_IMAGES, area_topography

__all__ = ["epoch_records", "measure_run"]


def epoch_records(run_dir: Path) -> list[dict]:
    """The per-epoch lines of a run's ``metrics.jsonl`` (test and validation accuracy), in order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"run {run_dir} has no metrics.jsonl; was it trained by tdsnn train?")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "test_acc" in line]


def measure_run(
    plan: RunPlan, run_dir: Path, epoch: int, measures: Measures, *, device="cpu"
) -> list[dict]:
    """Rows of every measure of ``plan``'s run at the checkpoint of ``epoch`` (1-based)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = {r["epoch"]: r for r in epoch_records(run_dir)}
    if epoch not in records:
        raise ConfigError(f"run {run_dir} has no evaluation of epoch {epoch}")
    values: dict[str, float | None] = {
        "test_acc": records[epoch]["test_acc"],
        "val_acc": records[epoch].get("val_acc"),
        "epoch": epoch,
        "epochs": summary["epochs"],
        "plateau_reached": float(bool(summary.get("plateau_reached"))),
        "images_per_s": summary["images_per_s"],
        "wall_seconds": summary["wall_seconds"],
        "parameters": summary["parameters"],
    }
    rows = []

    def add(measure: str, value, level: float | None = None) -> None:
        value = float("nan") if value is None else float(value)
        rows.append({"arm": plan.arm, "seed": plan.seed, "measure": measure, "level": level,
                     "value": value})  # fmt: skip

    for name in measures.summary:
        add(name, values[name])
    which = _checkpoint(run_dir, summary, epoch)
    if measures.topography is not None:
        for area, scores in _topography(run_dir, which, plan, measures, device).items():
            add(f"topography_score/{area}", scores["topography_score"])
    tests = measures.evaluate_tests
    if tests:
        run = load_eval_run(
            run_dir,
            test_size=measures.evaluate_test_size,
            data_root=None,
            device=device,
            name=plan.name,
            which=which,
            layers=plan.layers,
        )
        baseline: dict[int, float] = {}  # the run's accuracy as trained, shared by its tests
        for test in tests:
            if test == "representation":
                for area, metrics in representation(run).items():
                    for metric, value in metrics.items():
                        add(f"representation/{area}/{metric}", value)
                continue
            found = run_test(
                test,
                run,
                levels=(measures.evaluate_levels or {}).get(test),
                repeats=measures.evaluate_repeats,
                seed=plan.seed,
                baseline=baseline,
            )
            reference = reference_level(test, run)
            for measure, level, value in _curves(test, found, run.chance, reference):
                add(measure, value, level)
            if test in WEIGHT_NOISE_TESTS:
                for weight, std in weight_stds(run.model, run.layers).items():
                    add(f"{test}/weight_std/{weight}", std)
    for stimuli, (areas, metrics) in measures.analyze.items():
        nulls = any(null_variant(m) for m in metrics)
        found = _analyze(run_dir, which, stimuli, areas, plan, device, nulls)
        for area, values in found.items():
            for metric in metrics:
                add(f"analyze/{stimuli}/{area}/{metric}", _lookup(values, metric))
    return rows


def _analyze(run_dir: Path, which, stimuli: str, areas, plan: RunPlan, device, nulls: bool) -> dict:
    """``tdsnn analyze``'s per-area metrics on a recording of ``stimuli`` (kept in the run
    directory as ``experiment-<stimuli>-<checkpoint>.h5``), with the default nulls when
    ``nulls``."""
    from tdsnn.analysis.chance import NULL_DRAWS, add_nulls
    from tdsnn.analysis.topography import analyze_area
    from tdsnn.record import open_recording
    from tdsnn.record.recorder import record_run

    path = run_dir / f"experiment-{stimuli}-{which}.h5"
    record_run(run_dir, path, stimuli=stimuli, areas=",".join(areas) or None, device=device,
               which=which, seed=plan.seed, overwrite=True, quiet=True)  # fmt: skip
    out = {}
    with open_recording(path) as rec:
        for area in rec.areas:
            analysis = analyze_area(rec, area, seed=plan.seed)
            if nulls:
                add_nulls(analysis, rec.area(area), NULL_DRAWS, plan.seed)
            out[area] = analysis.metrics
    return out


def _lookup(metrics: dict, name: str) -> float | None:
    """``metrics[name]``, ``a.b`` for ``metrics[a][b]``, a null variant's z or percentile
    (:func:`~tdsnn.experiment.spec.null_variant`); ``None`` where it does not apply."""
    variant = null_variant(name)
    if variant is not None:
        key, kind, field = variant
        name = f"nulls.{key}.{kind}.{field}"
    return metric_value(metrics, name)


def _checkpoint(run_dir: Path, summary: dict, epoch: int) -> str | int:
    """``best`` when ``epoch`` is the run's best epoch, else the kept epoch's number."""
    if summary.get("best_epoch") == epoch:
        return "best"
    return epoch


def _topography(run_dir: Path, which, plan: RunPlan, measures: Measures, device) -> dict:
    """``summary.json``'s topography scores, recomputed at the measured checkpoint on the same
    held-out images."""
    run = load_eval_run(run_dir, test_size=SCORE_IMAGES, data_root=None, device=device,
                        name=plan.name, which=which)  # fmt: skip
    trained = run.trained
    counts = area_spike_counts(trained.model, run.images.split(128))
    areas = measures.topography or tuple(counts)
    found, missing = spell_areas(areas, counts)
    if missing:
        raise ConfigError(
            f"measures.topography: area(s) {missing} not in run {plan.name} ({list(counts)})"
        )
    chosen = {name: counts[name] for name in found}
    weights = {name: trained.model.areas[name].output_weight for name in chosen}
    return area_topography(chosen, trained.sheets, weights, seed=trained.config.run.seed)


def _curves(
    test: str, rows, chance: float, reference: float = 0.0
) -> list[tuple[str, float | None, float]]:
    """``(measure, level, mean accuracy over repeats)`` per condition and level, the drop from
    the ``reference`` level as ``<measure>/drop`` and the chance-corrected area as
    ``(<measure>/auc, None, value)``, and for the weight-noise tests the mean accuracy over the
    noisy levels as ``(<measure>/mean_accuracy, None, value)``. Weight noise and the temporal
    tests have one condition each and are named by the test (``weight-noise``,
    ``weight-noise-absolute``, ``spike-jitter``)."""
    table: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    noisy_mean = test in WEIGHT_NOISE_TESTS
    for row in rows:
        condition = row["condition"].replace(" ", "-")
        alone = noisy_mean or test in TEMPORAL_TESTS
        measure = test if alone else f"{test}/{condition}"
        table[measure][row["level"]].append(row["accuracy"])
    out: list[tuple[str, float | None, float]] = []
    for measure, levels in table.items():
        means = {level: float(np.mean(v)) for level, v in sorted(levels.items())}
        curve = curve_summary(means, chance, reference, noisy_mean=noisy_mean)
        out += [(measure, level, value) for level, value in means.items()]
        if reference in means:
            base = means[reference]
            out += [(f"{measure}/drop", level, base - v) for level, v in means.items()]
            out.append((f"{measure}/auc", None, curve["auc"]))
        if noisy_mean:
            out.append((f"{measure}/mean_accuracy", None, curve["mean_accuracy"]))
    return out
