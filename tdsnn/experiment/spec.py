"""Experiment specs: arms x paired seeds, what to measure, how to compare (``SPEC.yaml``).

A spec is a YAML mapping::

    name: topography-cost
    description: accuracy cost of stc, spiking against ReLU units
    base:                         # train options shared by every arm
      config: ../base.yaml        # optional run config, relative to the spec
      area-stack: v1-v4-it        # options named as on the `tdsnn train` command line
      epochs: 30
      until-plateau: 3
      val-size: 1000
    arms:                         # each arm: train options over the base
      none: {topo: none}
      stc: {topo: stc}
    seeds: 0-4                    # "0-4", "0,2,5", 7 or [0, 1, 2]
    match_accuracy: false         # true: measure every run at the first epoch whose validation
                                  # accuracy reaches the lowest plateau among its seed's arms
    measures:
      summary: [test_acc, val_acc, epoch]
      topography: all             # or a list of areas
      evaluate: {tests: [weight-noise], levels: [0, 0.1, 0.2], repeats: 3, test_size: 512}
      analyze:                    # tdsnn record, then tdsnn analyze's scalar metrics
        gratings: {areas: [V1], metrics: [orientation_smoothness, correlation_decay]}
    comparisons: [[none, stc]]    # default: every pair of arms
    contrasts:                    # optional weighted sums of arms per seed
      cost-difference: {stc: 1, none: -1, relu-stc: -1, relu-none: 1}
    equivalence: 0.02             # optional: TOST margin for the paired differences
    confidence: 0.95

Every key is checked here, and every arm's run config is built (so its options are checked)
before anything trains: a mistake is one :class:`~tdsnn.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdsnn.config import RunConfig, load_config
from tdsnn.errors import ConfigError
from tdsnn.options import option_key

__all__ = [
    "CHECKPOINTS",
    "ANALYZE_METRICS",
    "SUMMARY_MEASURES",
    "ExperimentSpec",
    "Measures",
    "RunPlan",
    "load_spec",
    "parse_seeds",
]

SPEC_KEYS = (
    "name",
    "description",
    "base",
    "arms",
    "seeds",
    "match_accuracy",
    "measures",
    "comparisons",
    "contrasts",
    "equivalence",
    "confidence",
)
CHECKPOINTS = ("best", "matched")  # each run's best epoch | matched validation accuracy
# a run's own figures, at the checkpoint the experiment measures
SUMMARY_MEASURES = {
    "test_acc": "test accuracy of the measured checkpoint",
    "val_acc": "validation accuracy of the measured checkpoint",
    "epoch": "epoch of the measured checkpoint",
    "epochs": "epochs trained",
    "plateau_reached": "1 if --until-plateau ended training, else 0",
    "images_per_s": "training throughput",
    "wall_seconds": "training wall time",
    "parameters": "trainable parameters",
}
MEASURE_KEYS = ("summary", "topography", "evaluate", "analyze")
# tdsnn analyze's scalar metrics per area (``pinwheels.density``: a key of a nested entry);
# which apply depends on the stimuli (tuning needs gratings, categories labelled images)
ANALYZE_METRICS = (
    "responsive_fraction", "mean_count", "correlation_decay", "morans_i_response",
    "orientation_selectivity_mean", "tuned_fraction", "orientation_smoothness",
    "frequency_smoothness", "morans_i_frequency", "pinwheels.density", "pinwheels.spacing_mm",
    "expert_fraction", "max_t_mean", "category_smoothness", "patch_overlap_mean",
    "synchrony_decay",
)  # fmt: skip
SPIKING_METRICS = ("synchrony_decay",)  # r_CCG of spike trains
ANALYZE_STIMULI = ("gratings", "categories", "dataset")
EVALUATE_KEYS = ("tests", "levels", "repeats", "test_size")
EVALUATE_TESTS = (
    "weight-noise",
    "input-noise",
    "pruning",
    "lesion",
    "adversarial",
    "representation",
)


@dataclass(frozen=True)
class Measures:
    """What is measured on every run after training."""

    summary: tuple[str, ...] = ("test_acc",)
    topography: tuple[str, ...] | None = None  # areas (None = none; () = every area)
    evaluate_tests: tuple[str, ...] = ()
    evaluate_levels: tuple[float, ...] | None = None
    evaluate_repeats: int = 2
    evaluate_test_size: int = 256
    # stimuli -> (areas, metrics) of ``tdsnn analyze`` on a recording of them
    analyze: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """One (arm, seed): its resolved run config and run directory (relative to the experiment)."""

    arm: str
    seed: int
    config: RunConfig
    run_dir: str  # runs/<arm>/seed-<k>

    @property
    def name(self) -> str:
        return f"{self.arm}/seed-{self.seed}"


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    arms: dict[str, dict[str, Any]]  # arm -> {dotted key: value}, base included
    seeds: tuple[int, ...]
    measures: Measures
    checkpoint: str = "best"
    comparisons: tuple[tuple[str, str], ...] = ()
    contrasts: dict[str, dict[str, float]] = field(default_factory=dict)
    equivalence: float | None = None
    confidence: float = 0.95
    base_config: str | None = None  # absolute path of base.config

    def plan(self) -> list[RunPlan]:
        """Every (arm, seed) in arm order, then seed order, with its checked config."""
        runs = []
        for arm, overrides in self.arms.items():
            for seed in self.seeds:
                run_dir = f"runs/{arm}/seed-{seed}"
                values = {**overrides, "run.seed": seed, "run.out": run_dir, "run.quiet": True}
                if self.checkpoint == "matched":
                    values["run.keep_epochs"] = True
                try:
                    config = load_config(self.base_config, values)
                except ConfigError as exc:
                    raise ConfigError(f"arm {arm!r}: {exc}") from None
                self._check_spiking(arm, config)
                runs.append(RunPlan(arm, seed, config, run_dir))
        return runs

    def _check_spiking(self, arm: str, config: RunConfig) -> None:
        """A non-spiking arm cannot have a spiking-only measure."""
        if config.model.neuron == "lif":
            return
        for stimuli, (_, metrics) in self.measures.analyze.items():
            spiking = [m for m in metrics if m in SPIKING_METRICS]
            if spiking:
                raise ConfigError(
                    f"arm {arm!r} has --neuron {config.model.neuron}: measures.analyze."
                    f"{stimuli} {spiking} measure spike trains (r_CCG); drop them or the arm"
                )

    def measures_key(self) -> str:
        """A hash of what is measured on each run and at which checkpoint: a run measured
        under another key is measured again."""
        data = {"checkpoint": self.checkpoint, "measures": dataclasses.asdict(self.measures)}
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_seeds(value: Any) -> tuple[int, ...]:
    """``"0-9"``, ``"0,3,5"``, ``7`` or ``[0, 1]`` -> sorted distinct seeds."""
    if isinstance(value, bool):
        raise ConfigError(f"seeds must be like 0-9, 0,3,5 or a list of integers, got {value!r}")
    if isinstance(value, int):
        seeds = [value]
    elif isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"seeds must be integers, got {value!r}")
        seeds = list(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", value):
        low, high = (int(v) for v in value.split("-"))
        if low > high:
            raise ConfigError(f"seeds {value!r}: the range runs backwards; write {high}-{low}")
        seeds = list(range(low, high + 1))
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
        seeds = [int(v) for v in value.split(",")]
    else:
        raise ConfigError(f"seeds must be like 0-9, 0,3,5 or a list of integers, got {value!r}")
    if not seeds:
        raise ConfigError("seeds is empty; give at least one seed, e.g. seeds: 0-4")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {value!r} names a seed twice")
    if any(s < 0 or s >= 2**32 for s in seeds):
        raise ConfigError(f"seeds must be in [0, 2^32), got {value!r}")
    return tuple(sorted(seeds))


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and check ``SPEC.yaml`` (every arm's config is built once here)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment spec {path} does not exist or is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"experiment spec {path} cannot be read: {problem}") from None
    spec = parse_spec(data, where=path.parent)
    spec.plan()  # builds every arm's config: invalid options fail before anything trains
    return spec


def parse_spec(data: Any, where: Path = Path(".")) -> ExperimentSpec:
    """The :class:`ExperimentSpec` of a parsed YAML mapping (paths relative to ``where``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment spec must be a mapping, got {type(data).__name__}")
    _check_keys(data, SPEC_KEYS, "experiment spec")
    for required in ("arms", "seeds"):
        if required not in data:
            raise ConfigError(f"experiment spec has no {required!r}; see configs/experiments/")
    base = dict(data.get("base") or {})
    if not isinstance(data.get("base") or {}, dict):
        raise ConfigError("experiment spec: 'base' must be a mapping of train options")
    base_config = base.pop("config", None)
    if base_config is not None:
        base_config = str((where / str(base_config)).resolve())
    base_values = _options(base, "base")
    arms = data["arms"]
    if not isinstance(arms, dict) or not arms:
        raise ConfigError("experiment spec: 'arms' must map at least one arm name to its options")
    resolved = {}
    for arm, options in arms.items():
        if not isinstance(arm, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", arm):
            raise ConfigError(f"arm name {arm!r} must be letters, digits, '_', '.', '+' or '-'")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"arm {arm!r}: options must be a mapping, got {options!r}")
        resolved[arm] = {**base_values, **_options(options or {}, f"arm {arm!r}")}
    match = data.get("match_accuracy", False)
    if not isinstance(match, bool):
        raise ConfigError(f"match_accuracy must be true or false, got {match!r}")
    checkpoint = "matched" if match else "best"
    confidence = _number(data.get("confidence", 0.95), "confidence", 0.5, 0.999)
    equivalence = data.get("equivalence")
    if equivalence is not None:
        equivalence = _number(equivalence, "equivalence", 1e-12, 1e12)
    return ExperimentSpec(
        name=str(data.get("name") or where.name or "experiment"),
        description=str(data.get("description") or ""),
        arms=resolved,
        seeds=parse_seeds(data["seeds"]),
        measures=_measures(data.get("measures") or {}),
        checkpoint=checkpoint,
        comparisons=_comparisons(data.get("comparisons"), tuple(resolved)),
        contrasts=_contrasts(data.get("contrasts") or {}, tuple(resolved)),
        equivalence=equivalence,
        confidence=confidence,
        base_config=base_config,
    )


def _check_keys(data: dict, valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid: {list(valid)}")


def _options(options: dict, where: str) -> dict[str, Any]:
    """``{train option: value}`` -> ``{dotted config key: value}``."""
    out = {}
    for name, value in options.items():
        try:
            out[option_key(name)] = value
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _measures(data: Any) -> Measures:
    if not isinstance(data, dict):
        raise ConfigError(f"measures must be a mapping with keys {list(MEASURE_KEYS)}")
    _check_keys(data, MEASURE_KEYS, "measures")
    summary = tuple(_names(data.get("summary", ["test_acc"]), "measures.summary"))
    unknown = [m for m in summary if m not in SUMMARY_MEASURES]
    if unknown:
        raise ConfigError(
            f"measures.summary: unknown measure(s) {unknown}; valid: {list(SUMMARY_MEASURES)}"
        )
    topography = data.get("topography")
    if topography == "all":
        topography = ()
    elif topography is not None:
        topography = tuple(_names(topography, "measures.topography"))
    evaluate = data.get("evaluate") or {}
    if not isinstance(evaluate, dict):
        raise ConfigError(f"measures.evaluate must be a mapping with keys {list(EVALUATE_KEYS)}")
    _check_keys(evaluate, EVALUATE_KEYS, "measures.evaluate")
    tests = tuple(_names(evaluate.get("tests", []), "measures.evaluate.tests"))
    unknown = [t for t in tests if t not in EVALUATE_TESTS]
    if unknown:
        raise ConfigError(
            f"measures.evaluate.tests: unknown test(s) {unknown}; valid: {list(EVALUATE_TESTS)}"
        )
    levels = evaluate.get("levels")
    if levels is not None:
        if not isinstance(levels, list) or not levels:
            raise ConfigError(f"measures.evaluate.levels must be a list of numbers, got {levels}")
        levels = tuple(_number(v, "measures.evaluate.levels", 0, 1e6) for v in levels)
    repeats = evaluate.get("repeats", 2)
    test_size = evaluate.get("test_size", 256)
    for name, value in (("repeats", repeats), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**7:
            raise ConfigError(f"measures.evaluate.{name} must be a positive integer, got {value}")
    return Measures(
        summary, topography, tests, levels, repeats, test_size, _analyze(data.get("analyze"))
    )


def _analyze(data: Any) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"measures.analyze must map stimuli {list(ANALYZE_STIMULI)} to "
                          "{areas: [...], metrics: [...]}")  # fmt: skip
    out = {}
    for stimuli, entry in data.items():
        where = f"measures.analyze.{stimuli}"
        if stimuli not in ANALYZE_STIMULI:
            raise ConfigError(f"measures.analyze: unknown stimuli {stimuli!r}; valid: "
                              f"{list(ANALYZE_STIMULI)}")  # fmt: skip
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be {{areas: [...], metrics: [...]}}")
        _check_keys(entry, ("areas", "metrics"), where)
        areas = tuple(_names(entry.get("areas", []), f"{where}.areas"))
        metrics = tuple(_names(entry.get("metrics", []), f"{where}.metrics"))
        unknown = [m for m in metrics if m not in ANALYZE_METRICS]
        if unknown or not metrics:
            raise ConfigError(
                f"{where}.metrics: unknown metric(s) {unknown}; valid: {list(ANALYZE_METRICS)}"
            )
        out[stimuli] = (areas, metrics)
    return out


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of names, got {value!r}")
    return value


def _comparisons(value: Any, arms: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return tuple((a, b) for i, a in enumerate(arms) for b in arms[i + 1 :])
    if not isinstance(value, list):
        raise ConfigError(f"comparisons must be a list of [arm, arm] pairs, got {value!r}")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"comparisons: {pair!r} is not a pair [arm, arm]")
        unknown = [a for a in pair if a not in arms]
        if unknown:
            raise ConfigError(f"comparisons: unknown arm(s) {unknown}; arms: {list(arms)}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _contrasts(value: Any, arms: tuple[str, ...]) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise ConfigError("contrasts must map a name to {arm: weight, ...}")
    out = {}
    for name, weights in value.items():
        if not isinstance(weights, dict) or not weights:
            raise ConfigError(f"contrast {name!r} must map arms to weights")
        unknown = [a for a in weights if a not in arms]
        if unknown:
            raise ConfigError(f"contrast {name!r}: unknown arm(s) {unknown}; arms: {list(arms)}")
        out[str(name)] = {
            a: _number(w, f"contrast {name!r}", -1e6, 1e6) for a, w in weights.items()
        }
    return out
