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
      stc-pretrained-swap: {topo: stc, sheets-from: none}   # see below
    seeds: 0-4                    # "0-4", "0,2,5", 7 or [0, 1, 2]
    match_accuracy: false         # true: measure every run at the first epoch whose validation
                                  # accuracy reaches the lowest plateau among its seed's arms
    measures:
      summary: [test_acc, val_acc, epoch]
      topography: all             # or a list of areas
      evaluate: {tests: [weight-noise], levels: [0, 0.1, 0.2], repeats: 3, test_size: 512,
                 layers: topographic}   # or all, or [IT, readout]
                                  # weight noise per scale: weight-noise (relative),
                                  # weight-noise-absolute, weight-noise-multiplicative; levels
                                  # per test: {weight-noise: [...], weight-noise-absolute: [...]}
      analyze:                    # tdsnn record, then tdsnn analyze's scalar metrics
        gratings: {areas: [V1], metrics: [orientation_smoothness, correlation_decay,
                   orientation_smoothness/null-z/sheet]}   # <metric>/<null-z|percentile>/<null>
    comparisons: [[none, stc]]    # default: every pair of arms
    contrasts:                    # optional weighted sums of arms per seed
      cost-difference: {stc: 1, none: -1, relu-stc: -1, relu-none: 1}
    equivalence:                  # optional TOST margins, each in its measure's units
      test_acc: 0.01              # (a measure, a curve point, or a measure's tail: morans_i)
      weight-noise/auc: 0.02
    confidence: 0.95              # intervals at this level; tests at alpha = 1 - confidence
    interval: t                   # t (default) | bca (only with >= 10 seeds)
    correction: holm              # holm (default) | bh | none, across the primary directions
    primary: [stc-cost]           # default: every direction; the others are exploratory
    directions:                   # optional: published findings, each given a verdict
      - name: stc-cost            # unique; primary names directions by it
        claim: STC costs accuracy
        source: TDSNN (2024)
        arms: [none, stc]         # control, treatment: the effect is treatment - control
        measure: test_acc         # a scalar measure, or a curve measure with a level
        expect: lower             # the published direction: higher | lower
        margin: 0.01              # optional TOST margin (default: from equivalence)
    figures: all                  # or the measures that get a figure in report.md

Every key is checked here, and every arm's run config is built (so its options are checked)
before anything trains: a mistake is one :class:`~tdsnn.errors.ConfigError`.

Compared arms share their sheet geometry: a control (``topo: none``, ``layout: auto``) compared
with arms whose loss puts some layer on another sheet layout (``ws`` and ``as`` put theirs on
a tiled or grid sheet) is trained with that loss at weight 0, which has the same sheets and
no loss. ``measures.evaluate.layers: topographic`` (the default) perturbs each arm's
topographic layers; a control takes those of the arms it is compared with.

``sheets-from: ARM`` trains an arm on positions swap-optimised on another arm's *trained*
network of the same seed (TDANN's and TDSNN's procedure: ``tdsnn train`` of ARM, then
``tdsnn sheet optimize`` of that run, then ``tdsnn train --sheets``): its runs start once their
source run is trained, and the swaps run then, written to the source run's ``sheets.pt``.
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

from tdsnn.area_sheets import sheet_layouts
from tdsnn.choices import NULL_METRICS
from tdsnn.config import RunConfig, load_config
from tdsnn.errors import ConfigError
from tdsnn.evaluate.options import TEMPORAL_TESTS
from tdsnn.evaluate.options import TESTS as EVALUATE_TESTS
from tdsnn.evaluate.runner import check_levels
from tdsnn.experiment.comparisons import (
    Direction,
    check_keys,
    choice,
    mark_primary,
    name_list,
    number,
    parse_comparisons,
    parse_contrasts,
    parse_directions,
    parse_equivalence,
)
from tdsnn.experiment.stats import CORRECTIONS, INTERVALS, MIN_BOOTSTRAP_N
from tdsnn.model_config import layer_names, spell_areas
from tdsnn.options import option_key
from tdsnn.topo_config import TopoConfig

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
    "interval",
    "correction",
    "primary",
    "directions",
    "figures",
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
    "orientation_selectivity_mean", "orientation_selectivity_median",
    "tuned_fraction", "orientation_smoothness",
    "frequency_smoothness", "morans_i_frequency", "pinwheels.density", "pinwheels.spacing_mm",
    "expert_fraction", "max_t_mean", "category_smoothness", "patch_overlap_mean",
    "synchrony_decay", "population_vector_length", "patches_mean",
)  # fmt: skip
# a measure ``<metric>/null-z/<null>`` or ``<metric>/percentile/<null>`` reads the value's place
# among its nulls (a metric of tdsnn.choices.NULL_METRICS)
NULL_VARIANTS = {"null-z": "z", "percentile": "percentile"}
SPIKING_METRICS = ("synchrony_decay",)  # r_CCG of spike trains
ANALYZE_STIMULI = ("gratings", "categories", "dataset")
EVALUATE_KEYS = ("tests", "levels", "repeats", "test_size", "layers")


@dataclass(frozen=True)
class Measures:
    """What is measured on every run after training."""

    summary: tuple[str, ...] = ("test_acc",)
    topography: tuple[str, ...] | None = None  # areas (None = none; () = every area)
    evaluate_tests: tuple[str, ...] = ()
    evaluate_levels: dict[str, tuple[float, ...]] | None = None  # test -> levels
    evaluate_repeats: int = 2
    evaluate_test_size: int = 256
    evaluate_layers: str | tuple[str, ...] = "topographic"  # topographic | all | area names
    # stimuli -> (areas, metrics) of ``tdsnn analyze`` on a recording of them
    analyze: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """One (arm, seed): its resolved run config and run directory (relative to the experiment)."""

    arm: str
    seed: int
    config: RunConfig
    run_dir: str  # runs/<arm>/seed-<k>
    layers: str | tuple[str, ...] = "all"  # what evaluate tests perturb (area names or all)
    sheets_from: str | None = None  # run_dir of the run whose swapped sheets it trains on

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
    equivalence: dict[str, float] = field(default_factory=dict)  # measure -> TOST margin
    confidence: float = 0.95
    interval: str = "t"  # t | bca
    correction: str = "holm"  # holm | bh | none, across the primary directions
    base_config: str | None = None  # absolute path of base.config
    directions: tuple[Direction, ...] = ()
    figures: tuple[str, ...] | None = None  # measures drawn in report.md; None = every one
    sheets_from: dict[str, str] = field(default_factory=dict)  # arm -> arm of its sheets

    def plan(self) -> list[RunPlan]:
        """Every (arm, seed) in arm order, then seed order, with its checked config."""
        first = {arm: self._config(arm, self.seeds[0]) for arm in self.arms}
        controls = matched_controls(first, self.comparisons)
        layers = {arm: self._layers(arm, first, controls) for arm in self.arms}
        runs = []
        for arm in self.arms:
            for seed in self.seeds:
                config = self._config(arm, seed)
                if arm in controls:
                    config = dataclasses.replace(config, topo=controls[arm])
                self._check_spiking(arm, config)
                source = self.sheets_from.get(arm)
                source_dir = None if source is None else f"runs/{source}/seed-{seed}"
                run_dir = f"runs/{arm}/seed-{seed}"
                runs.append(RunPlan(arm, seed, config, run_dir, layers[arm], source_dir))
        return runs

    def _config(self, arm: str, seed: int) -> RunConfig:
        values = {**self.arms[arm], "run.seed": seed, "run.out": f"runs/{arm}/seed-{seed}",
                  "run.quiet": True}  # fmt: skip
        if arm in self.sheets_from:  # relative to the experiment folder until a worker runs it
            values["sheet.positions"] = f"runs/{self.sheets_from[arm]}/seed-{seed}/sheets.pt"
        if self.checkpoint == "matched":
            values["run.keep_epochs"] = True
        try:
            return load_config(self.base_config, values)
        except ConfigError as exc:
            raise ConfigError(f"arm {arm!r}: {exc}") from exc

    def _layers(self, arm: str, configs: dict[str, RunConfig], controls) -> str | tuple[str, ...]:
        """The layers ``measures.evaluate.layers`` names for ``arm`` (area names, or ``all``)."""
        wanted = self.measures.evaluate_layers
        if not self.measures.evaluate_tests or wanted == "all":
            return "all"
        config = configs[arm]
        if wanted != "topographic":
            found, unknown = spell_areas(wanted, layer_names(config.model))
            if unknown:
                raise ConfigError(
                    f"measures.evaluate.layers: arm {arm!r} has no layer(s) {unknown}; its "
                    f"layers: {', '.join(layer_names(config.model))}"
                )
            return tuple(found)
        topo = controls.get(arm, config.topo)
        if topo.name != "none":
            return topo.configured_areas(layer_names(config.model))
        partners = {
            self._layers(other, configs, controls)
            for other in _partners(arm, self.comparisons)
            if controls.get(other, configs[other].topo).name != "none"
        }
        if len(partners) != 1:
            raise ConfigError(
                f"measures.evaluate.layers 'topographic': arm {arm!r} has no topographic loss "
                f"and is compared with {'arms of other' if partners else 'no'} topographic "
                "layers; name the layers (e.g. layers: [IT]) or use all"
            )
        return partners.pop()

    def _check_spiking(self, arm: str, config: RunConfig) -> None:
        """A non-spiking arm cannot have a spiking-only measure."""
        if config.model.neuron == "lif":
            return
        temporal = [t for t in self.measures.evaluate_tests if t in TEMPORAL_TESTS]
        if temporal:
            raise ConfigError(
                f"arm {arm!r} has --neuron {config.model.neuron}: measures.evaluate.tests "
                f"{temporal} perturb spike timing; drop them or the arm"
            )
        for stimuli, (_, metrics) in self.measures.analyze.items():
            spiking = [m for m in metrics if m in SPIKING_METRICS]
            if spiking:
                raise ConfigError(
                    f"arm {arm!r} has --neuron {config.model.neuron}: measures.analyze."
                    f"{stimuli} {spiking} measure spike trains (r_CCG); drop them or the arm"
                )

    def part(self, arms: list[str]) -> ExperimentSpec:
        """The spec of ``arms`` only (``tdsnn experiment --arms``: a part of an experiment),
        in the spec's order, with the comparisons, contrasts and directions among them."""
        unknown = [arm for arm in arms if arm not in self.arms]
        if unknown:
            raise ConfigError(f"--arms: no arm(s) {unknown} in {self.name}; its arms: "
                              f"{', '.join(self.arms)}")  # fmt: skip
        keep = set(arms)
        for arm in arms:
            if self.sheets_from.get(arm, arm) not in keep:
                raise ConfigError(f"--arms: arm {arm!r} trains on the sheets of arm "
                                  f"{self.sheets_from[arm]!r}; add that arm")  # fmt: skip
        return dataclasses.replace(
            self,
            arms={arm: values for arm, values in self.arms.items() if arm in keep},
            comparisons=tuple(pair for pair in self.comparisons if keep.issuperset(pair)),
            contrasts={k: w for k, w in self.contrasts.items() if keep.issuperset(w)},
            directions=tuple(d for d in self.directions if {d.control, d.treatment} <= keep),
        )

    def measures_key(self) -> str:
        """A hash of what is measured on each run and at which checkpoint: a run measured
        under another key is measured again."""
        data = {"checkpoint": self.checkpoint, "measures": dataclasses.asdict(self.measures)}
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _partners(arm: str, comparisons) -> list[str]:
    return [b if a == arm else a for a, b in comparisons if arm in (a, b)]


def matched_controls(
    configs: dict[str, RunConfig], comparisons: tuple[tuple[str, str], ...]
) -> dict[str, TopoConfig]:
    """Controls whose sheets must change to match the arms they are compared with: ``{arm:
    the partners' loss at weight 0}``. A control is an arm with ``topo: none`` and ``layout:
    auto``; it changes when its partners put a layer on another layout. Compared arms whose
    sheets still differ are a ConfigError."""
    layouts = {arm: sheet_layouts(config) for arm, config in configs.items()}
    controls = {}
    for arm, config in configs.items():
        if config.topo.name != "none" or config.sheet.layout != "auto":
            continue
        partners = [p for p in _partners(arm, comparisons) if configs[p].topo.name != "none"]
        differ = [p for p in partners if layouts[p] != layouts[arm]]
        if differ:
            topo = dataclasses.replace(configs[differ[0]].topo, alpha=0.0, beta=0.0, gamma=0.0)
            controls[arm] = topo
            layouts[arm] = sheet_layouts(dataclasses.replace(config, topo=topo))
    for a, b in comparisons:
        if layouts[a] != layouts[b]:
            diff = [f"{area}: {layouts[a][area]} vs {layouts[b][area]}"
                    for area in layouts[a] if layouts[a][area] != layouts[b].get(area)]  # fmt: skip
            raise ConfigError(
                f"compared arms {a!r} and {b!r} put their layers on different sheets "
                f"({'; '.join(diff) or 'other areas'}); set layout in base so that they match"
            )
    return controls


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
        raise ConfigError(f"experiment spec {path} cannot be read: {problem}") from exc
    spec = parse_spec(data, where=path.parent)
    spec.plan()  # builds every arm's config: invalid options fail before anything trains
    return spec


def parse_spec(data: Any, where: Path = Path(".")) -> ExperimentSpec:
    """The :class:`ExperimentSpec` of a parsed YAML mapping (paths relative to ``where``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment spec must be a mapping, got {type(data).__name__}")
    check_keys(data, SPEC_KEYS, "experiment spec")
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
    resolved, sheets_from = {}, {}
    for arm, options in arms.items():
        if not isinstance(arm, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", arm):
            raise ConfigError(f"arm name {arm!r} must be letters, digits, '_', '.', '+' or '-'")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"arm {arm!r}: options must be a mapping, got {options!r}")
        options = dict(options or {})
        if "sheets-from" in options:
            sheets_from[arm] = options.pop("sheets-from")
            own = [name for name in ("sheets", "layout") if name in options]
            if own:
                raise ConfigError(
                    f"arm {arm!r}: sheets-from gives the arm its sheets; drop {', '.join(own)}"
                )
        resolved[arm] = {**base_values, **_options(options, f"arm {arm!r}")}
    _check_sheets_from(sheets_from, resolved)
    match = data.get("match_accuracy", False)
    if not isinstance(match, bool):
        raise ConfigError(f"match_accuracy must be true or false, got {match!r}")
    checkpoint = "matched" if match else "best"
    confidence = number(data.get("confidence", 0.95), "confidence", 0.5, 0.999)
    measures = _measures(data.get("measures") or {})
    equivalence = parse_equivalence(data.get("equivalence"), _measure_names(measures))
    seeds = parse_seeds(data["seeds"])
    interval = choice(data.get("interval", "t"), "interval", INTERVALS)
    if interval == "bca" and len(seeds) < MIN_BOOTSTRAP_N:
        raise ConfigError(
            f"interval: bca needs at least {MIN_BOOTSTRAP_N} seeds (the spec has {len(seeds)}): "
            "below that a bootstrap interval undercovers; use interval: t"
        )
    directions = parse_directions(data.get("directions") or [], tuple(resolved), equivalence)
    directions = mark_primary(data.get("primary"), directions)
    return ExperimentSpec(
        name=str(data.get("name") or where.name or "experiment"),
        description=str(data.get("description") or ""),
        arms=resolved,
        seeds=seeds,
        measures=measures,
        checkpoint=checkpoint,
        comparisons=parse_comparisons(data.get("comparisons"), tuple(resolved)),
        contrasts=parse_contrasts(data.get("contrasts") or {}, tuple(resolved)),
        equivalence=equivalence,
        confidence=confidence,
        interval=interval,
        correction=choice(data.get("correction", "holm"), "correction", CORRECTIONS),
        base_config=base_config,
        directions=directions,
        figures=None
        if data.get("figures", "all") == "all"
        else tuple(name_list(data["figures"], "figures")),  # fmt: skip
        sheets_from=sheets_from,
    )


def _check_sheets_from(sheets_from: dict[str, Any], arms: dict[str, dict[str, Any]]) -> None:
    """Each ``sheets-from`` names another arm that takes its sheets from no other arm."""
    for arm, source in sheets_from.items():
        where = f"arm {arm!r}: sheets-from"
        if not isinstance(source, str) or source not in arms or source == arm:
            others = [a for a in arms if a != arm]
            raise ConfigError(
                f"{where} must name another arm ({', '.join(others)}), got {source!r}"
            )
        if source in sheets_from:
            raise ConfigError(f"{where} {source!r}: that arm takes its own sheets from an arm")


def _options(options: dict, where: str) -> dict[str, Any]:
    """``{train option: value}`` -> ``{dotted config key: value}``."""
    out = {}
    for name, value in options.items():
        try:
            out[option_key(name)] = value
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return out


def _measure_names(measures: Measures) -> list[str]:
    """What a spec measures, by name (each test and metric stands for its family of keys)."""
    found = list(measures.summary) + list(measures.evaluate_tests)
    if measures.topography is not None:
        found.append("topography_score")
    found += [m for _, metrics in measures.analyze.values() for m in metrics]
    return list(dict.fromkeys(found))


def _known(names: tuple[str, ...], valid, what: str) -> None:
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ConfigError(f"{what} {unknown}; valid: {list(valid)}")


def _measures(data: Any) -> Measures:
    if not isinstance(data, dict):
        raise ConfigError(f"measures must be a mapping with keys {list(MEASURE_KEYS)}")
    check_keys(data, MEASURE_KEYS, "measures")
    summary = tuple(name_list(data.get("summary", ["test_acc"]), "measures.summary"))
    _known(summary, SUMMARY_MEASURES, "measures.summary: unknown measure(s)")
    topography = data.get("topography")
    if topography == "all":
        topography = ()
    elif topography is not None:
        topography = tuple(name_list(topography, "measures.topography"))
    evaluate = data.get("evaluate") or {}
    if not isinstance(evaluate, dict):
        raise ConfigError(f"measures.evaluate must be a mapping with keys {list(EVALUATE_KEYS)}")
    check_keys(evaluate, EVALUATE_KEYS, "measures.evaluate")
    tests = tuple(name_list(evaluate.get("tests", []), "measures.evaluate.tests"))
    _known(tests, EVALUATE_TESTS, "measures.evaluate.tests: unknown test(s)")
    levels = _levels(evaluate.get("levels"), tests)
    layers = evaluate.get("layers", "topographic")
    if layers not in ("topographic", "all"):
        layers = tuple(name_list(layers, "measures.evaluate.layers"))
    repeats = evaluate.get("repeats", 2)
    test_size = evaluate.get("test_size", 256)
    for name, value in (("repeats", repeats), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**7:
            raise ConfigError(f"measures.evaluate.{name} must be a positive integer, got {value}")
    return Measures(summary, topography, tests, levels, repeats, test_size, layers,
                    _analyze(data.get("analyze")))  # fmt: skip


def _levels(value: Any, tests: tuple[str, ...]) -> dict[str, tuple[float, ...]] | None:
    """``measures.evaluate.levels``: one list for every test, or ``{test: list}``; ``None``
    keeps each test's default levels."""
    if value is None:
        return None
    if not isinstance(value, dict):
        value = {test: value for test in tests}
    out = {}
    for test, levels in value.items():
        where = f"measures.evaluate.levels.{test}"
        if test not in tests:
            raise ConfigError(f"{where}: {test!r} is not one of the tests {list(tests)}")
        if not isinstance(levels, list) or not levels:
            raise ConfigError(f"{where} must be a list of numbers, got {levels!r}")
        out[test] = tuple(number(v, where, 0, 1e6) for v in levels)
    try:
        for test, levels in out.items():
            check_levels((test,), levels)
    except ConfigError as exc:
        raise ConfigError(f"measures.evaluate: {exc}") from exc
    return out


def null_variant(metric: str, where: str = "measures.analyze") -> tuple[str, str, str] | None:
    """``(key in metrics["nulls"], kind, field)`` of an analyze measure's null variant
    (``orientation_smoothness/null-z/sheet``), None for a plain metric; a one-line error for a
    metric without a null or an unknown variant or kind."""
    if "/" not in metric:
        return None
    name, *rest = metric.split("/")
    if name not in NULL_METRICS:
        raise ConfigError(f"{where}.metrics: {name} has no null; null-z and percentile apply to "
                          f"{list(NULL_METRICS)}")  # fmt: skip
    key, kinds = NULL_METRICS[name]
    if len(rest) != 2 or rest[0] not in NULL_VARIANTS or rest[1] not in kinds:
        raise ConfigError(f"{where}.metrics: {metric!r} is not <metric>/<null-z|percentile>/"
                          f"<null>; the nulls of {name}: {list(kinds)}")  # fmt: skip
    return key, rest[1], NULL_VARIANTS[rest[0]]


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
        check_keys(entry, ("areas", "metrics"), where)
        areas = tuple(name_list(entry.get("areas", []), f"{where}.areas"))
        metrics = tuple(name_list(entry.get("metrics", []), f"{where}.metrics"))
        unknown = [m for m in metrics if m.split("/")[0] not in ANALYZE_METRICS]
        if unknown or not metrics:
            raise ConfigError(
                f"{where}.metrics: unknown metric(s) {unknown}; valid: {list(ANALYZE_METRICS)}"
            )
        for metric in metrics:
            null_variant(metric, where)
        out[stimuli] = (areas, metrics)
    return out
