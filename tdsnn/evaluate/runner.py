"""Run the robustness and representation tests on trained runs (``tdsnn evaluate``).

Each test gives rows ``(run, test, condition, level, repeat, accuracy)``: the run's accuracy
on its own test split (or its first ``test_size`` images) under one perturbation. Weight
noise, both prunings, lesions and the spike perturbations act on the run's ``layers``
(:func:`resolve_layers`: by default the layers its topographic loss acts on). Every condition
is batched and seeded: the same (seed, test, condition, level, repeat) always draws the same
noise, and every accuracy is computed with the same rate-coding draws. Every perturbation is
the identity at its reference level (:func:`reference_level`: level 0, or the run's own T for
``timesteps`` and ``early-readout``; tested), so those rows reuse the run's unperturbed
accuracy instead of recomputing it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tdsnn.choices import EVALUATE_REPEATS as DEFAULT_REPEATS
from tdsnn.data import build_test_split
from tdsnn.errors import ConfigError
from tdsnn.evaluate import perturb, temporal
from tdsnn.evaluate.options import TEMPORAL_TESTS, TESTS, WEIGHT_NOISE_TESTS
from tdsnn.evaluate.representation import (
    layer_metrics,
    representation_metrics,
    synaptic_operations,
)
from tdsnn.model_config import spell_areas
from tdsnn.rundir import TrainedRun, load_run

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_REPEATS",
    "TESTS",
    "EvalRun",
    "AreaInputs",
    "accuracy",
    "area_inputs",
    "curve_summary",
    "Evaluation",
    "load_eval_run",
    "plan",
    "resolve_layers",
    "run_test",
]

LAYER_CHOICES = ("topographic", "all")
DEFAULT_LEVELS = {
    "weight-noise": (0.0, 0.05, 0.1, 0.2, 0.4),  # noise std / the layer's weight std
    "weight-noise-absolute": (0.0, 0.0025, 0.005, 0.01, 0.02),  # noise std, weight units
    "weight-noise-multiplicative": (0.0, 0.05, 0.1, 0.2, 0.4),  # noise std / each |weight|
    "white-noise": (0.0, 0.02, 0.05, 0.1),  # std, in units of the [0, 1] intensity range
    "pink-noise": (0.0, 0.02, 0.05, 0.1),
    "salt-and-pepper": (0.0, 0.01, 0.03, 0.1),  # fraction of pixels
    "blur": (0.0, 0.5, 1.0, 2.0),  # Gaussian sigma, pixels
    "contrast": (0.0, 0.5, 0.8, 0.95),  # fraction of contrast removed
    "pruning": (0.0, 0.25, 0.5, 0.75, 0.9),  # fraction of each layer's weights zeroed
    "pruning-channels": (0.0, 0.1, 0.25, 0.5, 0.75),  # fraction of each layer's channels
    "lesion": (0.0, 0.1, 0.3),  # fraction of the area's units silenced
    "adversarial": (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255),  # L-inf epsilon
    # timesteps (1 .. 2T) and early-readout (1 .. T) take the run's T: see default_levels
    "spike-jitter": (0.0, 1.0, 2.0, 3.0),  # largest lag k, steps
    "spike-deletion": (0.0, 0.1, 0.25, 0.5),  # probability per spike
    "spike-insertion": (0.0, 0.01, 0.05, 0.1),  # probability per silent (unit, step)
    "synchrony-disruption": (0.0, 0.25, 0.5, 1.0),  # fraction of units circularly shifted
}
STEP_TESTS = ("spike-jitter", "timesteps", "early-readout")  # levels: whole numbers of steps
FRACTION_TESTS = {"pruning-channels": (1, "[0, 1)"), "pruning": (1.0001, "[0, 1]"),
                  "lesion": (1.0001, "[0, 1]"), "spike-deletion": (1.0001, "[0, 1]"),
                  "spike-insertion": (1.0001, "[0, 1]"),
                  "synchrony-disruption": (1.0001, "[0, 1]")}  # fmt: skip
LESIONS = (("disc", perturb.disc_units), ("scattered", perturb.scattered_units))
ADVERSARIAL_IMAGES = 128  # attacks cost a backward pass per step: a subset of the test images
PGD_STEPS = 5


@dataclass
class EvalRun:
    """A trained run, the test images it is evaluated on, and the layers perturbed."""

    name: str
    trained: TrainedRun
    images: Tensor  # [n, C, S, S] in [0, 1], on the device
    labels: Tensor  # [n]
    layers: tuple[str, ...] | None = None  # areas perturbed; None = every layer

    @property
    def model(self):
        return self.trained.model

    @property
    def chance(self) -> float:
        """Chance accuracy, 1 / classes."""
        return 1.0 / self.model.readout.out_features


def resolve_layers(layers: str | tuple[str, ...], trained: TrainedRun, name: str):
    """The areas a perturbation touches: ``"all"`` -> ``None`` (every conv and linear layer,
    every area's units), ``"topographic"`` -> the areas the run's loss acts on (for a control
    trained with a loss at weight 0, the areas that loss names), or names of the run's areas
    (``V1``, ``IT``, ``readout``; case-insensitive)."""
    available = trained.model.area_names
    listing = f"its layers: {', '.join(available)}"
    if layers == "all":
        return None
    if layers == "topographic":
        topo = trained.config.topo
        if topo.name == "none":
            raise ConfigError(
                f"run {name} has no topographic layer (trained with --topo none): pass "
                f"layers='all', or name the layers to perturb ({listing})"
            )
        return topo.configured_areas(available)
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    found, unknown = spell_areas(names, available)
    if unknown or not found:
        raise ConfigError(
            f"layers: run {name} has no layer(s) {unknown or list(names)}; {listing} "
            f"(or {' / '.join(LAYER_CHOICES)})"
        )
    return tuple(found)


def load_eval_run(
    run_dir: str | Path,
    *,
    test_size: int | None,
    data_root: str | None,
    device,
    name: str,
    which: str | int = "best",
    layers: str | tuple[str, ...] = "all",
) -> EvalRun:
    """A checkpoint's model (default ``best``; see :func:`~tdsnn.rundir.load_run`), the run's
    test split (its first ``test_size`` images; ``None``: all of them) and the ``layers``
    perturbations touch (:func:`resolve_layers`)."""
    trained = load_run(run_dir, which, device)
    chosen = resolve_layers(layers, trained, name)
    data = trained.config.data
    sizes = [s for s in (test_size, data.test_size) if s is not None]
    size = min(sizes) if sizes else None
    test, _ = build_test_split(
        data.dataset,
        data_root=data_root or data.data_root,
        image_size=data.image_size,
        seed=trained.config.run.seed,
        test_size=size,
    )
    items = [test[i] for i in range(len(test))]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items])
    return EvalRun(name, trained, images.to(device), labels.to(device), chosen)


def _generator(seed: int, *key) -> torch.Generator:
    """A generator for one (test, condition, level, repeat): the same key, the same draws."""
    words = [seed] + [zlib.crc32(str(k).encode()) for k in key]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


@dataclass
class AreaInputs:
    """What area ``area`` receives for each batch of a run's test images, computed once, with
    the rate-coding draws :func:`accuracy` makes (same seed, same batches): a perturbation
    that starts at ``area`` leaves the layers before it as trained, so only the rest runs.
    Spikes are kept as ``bool`` and handed back in ``dtype``."""

    area: str
    batches: list[Tensor]  # [T, b, C, H, W] per batch of ``accuracy``'s batch size
    dtype: torch.dtype

    def batch(self, i: int) -> Tensor:
        return self.batches[i].to(self.dtype)


AREA_INPUTS_BYTES = 2 * 2**30  # larger inputs are not kept: every evaluation runs in full


@torch.inference_mode()
def area_inputs(
    model, images: Tensor, area: str, *, batch_size: int = 256, seed: int = 0
) -> AreaInputs | None:
    """:class:`AreaInputs` of ``area`` for ``images``, or None where they would take more than
    :data:`AREA_INPUTS_BYTES`."""
    batches, dtype = [], torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x in images.split(batch_size):
            found = model.area_input(x, area)
            spikes = bool(((found == 0) | (found == 1)).all())
            kept = found.bool() if spikes else found.clone()
            if not batches and kept.nbytes * len(images) / len(x) > AREA_INPUTS_BYTES:
                return None
            batches.append(kept)
            dtype = found.dtype
    return AreaInputs(area, batches, dtype)


@torch.inference_mode()
def accuracy(
    model,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 256,
    seed: int = 0,
    inputs: AreaInputs | None = None,
) -> float | list[float]:
    """Fraction of ``images`` classified as ``labels`` (rate-coding draws seeded by ``seed``).
    A model whose logits are ``[S, B, classes]`` (S readouts of one pass, as
    :class:`~tdsnn.evaluate.temporal.EarlyReadout`'s) gives a list of S fractions. With
    ``inputs`` (:func:`area_inputs` of the same images, batch size and seed), only the layers
    from ``inputs.area`` on run."""
    correct = torch.zeros((), dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (x, y) in enumerate(
            zip(images.split(batch_size), labels.split(batch_size), strict=True)
        ):
            out = model(x) if inputs is None else model.forward_from(inputs.batch(i), inputs.area)
            correct = correct + (out.logits.argmax(dim=-1) == y).sum(dim=-1).cpu()
    fractions = correct.double() / len(labels)
    return fractions.tolist() if fractions.dim() else float(fractions)


Row = dict


@dataclass(frozen=True)
class Evaluation:
    """One accuracy evaluation of a test: its rows' condition, ``levels`` (one; or one per
    readout of a model that reads several out of one pass) and repeat, how many of the run's
    test images it scores (the first ``images``), and ``perturbed``, a callable returning a
    context manager that yields the ``(model, images, labels)`` to score. ``reference``: the
    level at which the test leaves the run as trained (:func:`reference_level`). ``start``:
    the first area whose weights, units or spikes it changes; the layers before it compute as
    trained on the run's images (None: it changes the input, the stem or the images)."""

    condition: str
    levels: tuple[float, ...]
    repeat: int
    images: int
    perturbed: Callable[[], AbstractContextManager[tuple[nn.Module, Tensor, Tensor]]]
    reference: float = 0.0
    start: str | None = None  # the first area it changes (None: the input or the stem)

    @property
    def identity(self) -> bool:
        """Whether it scores the run as trained (its one level is the reference)."""
        return self.levels == (self.reference,)


def plan(
    test: str, run: EvalRun, *, levels: tuple[float, ...] | None, repeats: int, seed: int
) -> Iterator[Evaluation]:
    """The evaluations of ``test`` (one of :data:`TESTS` but ``representation``) in order;
    nothing is perturbed until an evaluation's ``perturbed`` is entered."""
    if test not in TESTS or test == "representation":
        raise ConfigError(f"unknown test {test!r}; one of {', '.join(TESTS)}")
    check_levels((test,), levels)
    check_run_tests((test,), run, levels)
    model, images, labels = run.model, run.images, run.labels
    n = len(labels)
    # weight noise and pruning with layers None reach the stem and the classifier too
    first = _first_area(model, run.layers)
    if test in WEIGHT_NOISE_TESTS:
        scale = WEIGHT_NOISE_TESTS[test]
        for level in levels or DEFAULT_LEVELS[test]:
            for r in range(repeats):
                g = (seed, test, level, r)
                noisy = lambda g=g, lv=level: nullcontext(  # noqa: E731
                    (perturb.weight_noise(model, lv, _generator(*g), run.layers, scale), images,
                     labels)
                )  # fmt: skip
                yield Evaluation("gaussian", (level,), r, n, noisy, start=first)
    elif test == "input-noise":
        for kind in perturb.INPUT_DEGRADATIONS:
            for level in levels or DEFAULT_LEVELS[kind]:
                for r in range(repeats if kind not in ("blur", "contrast") else 1):
                    g = (seed, test, kind, level, r)
                    degraded = lambda g=g, k=kind, lv=level: nullcontext(  # noqa: E731
                        (model, perturb.degrade(k, images, lv, _generator(*g)), labels)
                    )
                    yield Evaluation(kind, (level,), r, n, degraded)
    elif test == "pruning":
        for level in levels or DEFAULT_LEVELS[test]:
            pruned = lambda lv=level: nullcontext(  # noqa: E731
                (perturb.magnitude_prune(model, lv, run.layers), images, labels)
            )
            yield Evaluation("magnitude", (level,), 0, n, pruned, start=first)
    elif test == "pruning-channels":  # silences every area when layers is None
        start = _first_area(model, run.layers or model.area_names)
        for level in levels or DEFAULT_LEVELS[test]:
            for mode in perturb.PRUNING_MODES:
                for r in range(repeats if mode == "random" and level else 1):
                    g = (seed, test, mode, level, r)
                    silenced = lambda g=g, lv=level, md=mode: _given(  # noqa: E731
                        _pruned(run, lv, md, _generator(*g)), model, images, labels
                    )
                    yield Evaluation(mode, (level,), r, n, silenced, start=start)
    elif test == "lesion":
        yield from _lesions(run, levels or DEFAULT_LEVELS[test], repeats, seed)
    elif test == "adversarial":
        k = min(ADVERSARIAL_IMAGES, n)
        x, y = images[:k], labels[:k]
        for level in levels or DEFAULT_LEVELS[test]:
            fgsm = lambda lv=level: nullcontext((model, perturb.fgsm(model, x, y, lv), y))  # noqa: E731
            yield Evaluation("fgsm", (level,), 0, k, fgsm)
            g = (seed, test, "pgd", level)
            pgd = lambda g=g, lv=level: nullcontext(  # noqa: E731
                (model, perturb.pgd(model, x, y, lv, steps=PGD_STEPS, generator=_generator(*g)), y)
            )
            yield Evaluation(f"pgd-{PGD_STEPS}", (level,), 0, k, pgd)
    else:
        yield from _temporal(test, run, levels or default_levels(test, run), repeats, seed)


def _first_area(model, areas: tuple[str, ...] | None) -> str | None:
    """The first of ``areas`` in the network's order (None for None: every layer)."""
    if areas is None:
        return None
    return next(name for name in model.area_names if name in areas)


@contextmanager
def _given(within: AbstractContextManager, *value) -> Iterator[tuple]:
    """``value`` while ``within`` is entered."""
    with within:
        yield value


def run_test(
    test: str,
    run: EvalRun,
    *,
    levels: tuple[float, ...] | None = None,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
    batch_size: int = 256,
    progress: tqdm | None = None,
    reuse_inputs: bool = True,
    baseline: dict[int, float] | None = None,
) -> Iterator[Row]:
    """Rows of ``test`` (one of :data:`TESTS` but ``representation``) for ``run``, one per
    level of each evaluation of :func:`plan`; weight noise, pruning, lesions and the spike
    perturbations act on ``run.layers``. Evaluations at the reference level reuse the
    unperturbed accuracy of the same images: ``baseline`` maps an image count to the
    accuracy of the run as trained on its first that many images (with ``seed`` and
    ``batch_size``), filled in here, so that tests of one run can share it. With
    ``reuse_inputs``, an evaluation that starts at an area runs from that area's
    :func:`area_inputs`, computed once (same accuracies)."""
    baseline = {} if baseline is None else baseline
    kept: dict[str, AreaInputs | None] = {}  # one area's inputs in memory at a time
    for step in plan(test, run, levels=levels, repeats=repeats, seed=seed):
        if step.identity and step.images in baseline:  # the run as trained: its accuracy
            found = [baseline[step.images]]
        else:
            if progress is not None:
                progress.update(1)
            inputs = None
            if reuse_inputs and step.start is not None:
                if step.start not in kept:
                    kept.clear()
                    kept[step.start] = area_inputs(run.model, run.images, step.start,
                                                   batch_size=batch_size, seed=seed)  # fmt: skip
                inputs = kept[step.start]
            with step.perturbed() as (m, x, y):
                found = accuracy(m, x, y, batch_size=batch_size, seed=seed, inputs=inputs)
            found = found if isinstance(found, list) else [found]  # one per level
            if step.identity:
                baseline[step.images] = found[0]
        for level, acc in zip(step.levels, found, strict=True):
            yield {"run": run.name, "test": test, "condition": step.condition,
                   "level": float(level), "repeat": step.repeat, "accuracy": acc}  # fmt: skip


@contextmanager
def _pruned(run: EvalRun, fraction: float, mode: str, generator) -> Iterator[None]:
    """Within the block, ``fraction`` of the output channels of each of ``run.layers`` (every
    area when None) are removed (silenced), chosen by ``mode``."""
    with ExitStack() as stack:
        for area in run.layers or run.model.area_names:
            shape = run.trained.sheets[area].shape
            channels = perturb.pruned_channels(run.model, area, fraction, mode, generator)
            units = perturb.channel_units(shape, channels)
            stack.enter_context(perturb.silence(run.model, area, units))
        yield


def _lesions(run: EvalRun, levels, repeats: int, seed: int) -> Iterator[Evaluation]:
    """Per area of ``run.layers``: a disc lesion of a fraction of its units against as many
    scattered units."""
    model, n = run.model, len(run.labels)
    for area in run.layers or model.area_names:
        sheet = run.trained.sheets[area]
        for level in levels:
            count = round(level * sheet.num_units)
            for r in range(repeats if count else 1):
                for condition, pick in LESIONS:
                    g = (seed, "lesion", area, level, r)
                    silenced = lambda a=area, p=pick, g=g, c=count, sh=sheet: _given(  # noqa: E731
                        perturb.silence(model, a, p(sh, c, _generator(*g))),
                        model, run.images, run.labels,
                    )  # fmt: skip
                    yield Evaluation(f"{area} {condition}", (level,), r, n, silenced, start=area)


TEMPORAL_CONDITIONS = {"timesteps": "steps", "early-readout": "readout", "spike-jitter": "jitter",
                       "spike-deletion": "deletion", "spike-insertion": "insertion",
                       "synchrony-disruption": "circular-shift"}  # fmt: skip


def _temporal(test: str, run: EvalRun, levels, repeats: int, seed: int) -> Iterator[Evaluation]:
    """The evaluations of a test of :data:`TEMPORAL_TESTS`: the stack run for T' steps, read
    out early (one pass for every t), or with the spikes of ``run.layers`` (every area when
    None) perturbed (:data:`~tdsnn.evaluate.temporal.SPIKE_PERTURBATIONS`)."""
    model, images, labels = run.model, run.images, run.labels
    n, condition, steps = len(labels), TEMPORAL_CONDITIONS[test], model.timesteps
    if test == "timesteps":
        for level in levels:
            ran = lambda lv=level: _given(temporal.run_for(model, int(lv)), model, images, labels)  # noqa: E731
            yield Evaluation(condition, (level,), 0, n, ran, reference=steps)
        return
    if test == "early-readout":
        early = temporal.EarlyReadout(model, tuple(int(t) for t in levels))
        read = lambda: nullcontext((early, images, labels))  # noqa: E731
        yield Evaluation(condition, tuple(levels), 0, n, read, reference=steps)
        return
    perturbation = temporal.SPIKE_PERTURBATIONS[test]
    areas = run.layers or model.area_names
    for level in levels:
        for r in range(repeats if level else 1):
            g = (seed, test, level, r)
            spiked = lambda g=g, lv=level: _given(  # noqa: E731
                temporal.perturbed_spikes(model, areas, perturbation, lv, _generator(*g)),
                model, images, labels,
            )  # fmt: skip
            yield Evaluation(condition, (level,), r, n, spiked, start=_first_area(model, areas))


def default_levels(test: str, run: EvalRun) -> tuple[float, ...]:
    """A test's levels unless given: :data:`DEFAULT_LEVELS`, T' = 1 .. 2T for ``timesteps``
    and t = 1 .. T for ``early-readout`` (T: the run's time steps)."""
    steps = run.model.timesteps
    if test == "timesteps":
        return tuple(float(t) for t in range(1, 2 * steps + 1))
    if test == "early-readout":
        return tuple(float(t) for t in range(1, steps + 1))
    return DEFAULT_LEVELS[test]


def reference_level(test: str, run: EvalRun) -> float:
    """The level at which ``test`` leaves ``run`` as trained, which its drops are taken from:
    the run's T for ``timesteps`` and ``early-readout``, else 0."""
    return float(run.model.timesteps) if test in ("timesteps", "early-readout") else 0.0


def representation(run: EvalRun, batch_size: int = 256) -> dict:
    """Per area, :func:`~tdsnn.evaluate.representation.representation_metrics` and
    :func:`~tdsnn.evaluate.representation.synaptic_operations` on the run's test images, and
    for ``run.layers`` (every area when None) also
    :func:`~tdsnn.evaluate.representation.layer_metrics` on their pre-activations."""
    model, sheets = run.model, run.trained.sheets
    out = representation_metrics(model, run.images, sheets, batch_size)
    for area, values in synaptic_operations(model, run.images, batch_size).items():
        out[area].update(values)
    layers = run.layers or model.area_names
    found = layer_metrics(model, run.images, sheets, layers, run.trained.config.topo, batch_size)
    for area, values in found.items():
        out[area].update(values)
    return out


def check_levels(tests, levels: tuple[float, ...] | None) -> None:
    """Levels every chosen test can take (before any work is done)."""
    if levels is None:
        return
    if any(not (math.isfinite(v) and v >= 0) for v in levels):
        raise ConfigError(f"levels must be non-negative numbers, got {list(levels)}")
    given = ",".join(f"{v:g}" for v in levels)
    for test in tests:
        bound, interval = FRACTION_TESTS.get(test, (math.inf, ""))
        if max(levels) >= bound:
            raise ConfigError(f"levels {given}: {test} takes fractions in {interval}")
        if test in STEP_TESTS and any(v != int(v) for v in levels):
            raise ConfigError(f"levels {given}: {test} takes whole numbers of time steps")
        if test in ("timesteps", "early-readout") and min(levels) < 1:
            raise ConfigError(f"levels {given}: {test} takes numbers of time steps >= 1")


def check_run_tests(tests, run: EvalRun, levels: tuple[float, ...] | None = None) -> None:
    """What ``run`` itself rules out: the temporal tests on a run of ReLU units (they have no
    spike timing), and early readouts past the run's T."""
    temporal_tests = [t for t in tests if t in TEMPORAL_TESTS]
    if temporal_tests and run.trained.config.model.neuron == "relu":
        raise ConfigError(
            f"tests {','.join(temporal_tests)} perturb spike timing, and run {run.name} has ReLU "
            "units (neuron: relu): leave them out of the tests for it"
        )
    steps = run.model.timesteps
    if "early-readout" in tests and levels and max(levels) > steps:
        raise ConfigError(
            f"levels {','.join(f'{v:g}' for v in levels)}: early-readout reads the first t of "
            f"the T = {steps} steps of run {run.name}; pass levels in 1..{steps}"
        )


def curve_summary(
    means: dict[float, float], chance: float, reference: float = 0.0, *, noisy_mean: bool = False
) -> dict:
    """A degradation curve ``{level: mean accuracy}`` as the papers report it: ``accuracy``,
    ``drop`` (the accuracy at the ``reference`` level, the run as trained, minus it; level 0
    as in Truong & Hasson unless :func:`reference_level` says otherwise), ``ratio`` (it over
    the reference accuracy) per level, and ``auc``, the chance-corrected area under the curve:
    the mean over the level range (trapezoids) of ``(acc − chance) / (acc_ref − chance)``; 1
    for no loss, 0 for chance at every level (NaN without the reference level, or at chance
    already there). ``noisy_mean`` (the weight-noise tests) adds ``mean_accuracy``, the plain
    mean of the accuracies at every level but the reference (NaN without one)."""
    levels = sorted(means)
    accuracy = {f"{lv:g}": means[lv] for lv in levels}
    out = {"accuracy": accuracy, "drop": {}, "ratio": {}, "auc": float("nan")}
    if noisy_mean:
        noisy = [means[lv] for lv in levels if lv != reference]
        out["mean_accuracy"] = float(np.mean(noisy)) if noisy else float("nan")
    if reference not in means:
        return out
    base = means[reference]
    out["drop"] = {f"{lv:g}": base - means[lv] for lv in levels}
    out["ratio"] = {f"{lv:g}": means[lv] / base if base else float("nan") for lv in levels}
    if base > chance and len(levels) > 1:
        from scipy.integrate import trapezoid

        kept = np.array([(means[lv] - chance) / (base - chance) for lv in levels])
        x = np.asarray(levels)
        out["auc"] = float(trapezoid(kept, x) / (x[-1] - x[0]))
    return out


def count_evaluations(tests, run: EvalRun, levels, repeats: int, known=()) -> int:
    """How many accuracies :func:`run_test` computes for ``tests`` sharing one ``baseline``
    (for the progress bar): the evaluations of :func:`plan`, those at the reference level
    once per image count not in ``known`` (counts whose accuracy is already in it)."""
    total, identity = 0, set()
    for test in tests:
        if test == "representation":
            continue
        steps = list(plan(test, run, levels=levels, repeats=repeats, seed=0))
        total += sum(1 for s in steps if not s.identity)
        identity |= {s.images for s in steps if s.identity}
    return total + len(identity - set(known))
