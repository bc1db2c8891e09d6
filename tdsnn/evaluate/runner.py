"""Run the robustness and representation tests on trained runs (``tdsnn evaluate``).

Each test gives rows ``(run, test, condition, level, repeat, accuracy)``: the run's accuracy
on its own test split (or its first ``test_size`` images) under one perturbation. Weight
noise, both prunings and lesions act on the run's ``layers`` (:func:`resolve_layers`: by
default the layers its topographic loss acts on). Every condition is batched
and seeded: the same (seed, test, condition, level, repeat) always draws the same noise, and
every accuracy is computed with the same rate-coding draws. Every perturbation is the identity
at level 0 (tested), so level-0 rows reuse the run's unperturbed accuracy instead of
recomputing it.
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
from scipy.integrate import trapezoid
from torch import Tensor, nn
from tqdm.auto import tqdm

from tdsnn.choices import EVALUATE_REPEATS as DEFAULT_REPEATS
from tdsnn.choices import EVALUATE_TESTS as TESTS
from tdsnn.data import build_datasets
from tdsnn.errors import ConfigError
from tdsnn.evaluate import perturb
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
    "accuracy",
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
    "white-noise": (0.0, 0.02, 0.05, 0.1),  # std, in units of the [0, 1] intensity range
    "pink-noise": (0.0, 0.02, 0.05, 0.1),
    "salt-and-pepper": (0.0, 0.01, 0.03, 0.1),  # fraction of pixels
    "blur": (0.0, 0.5, 1.0, 2.0),  # Gaussian sigma, pixels
    "contrast": (0.0, 0.5, 0.8, 0.95),  # fraction of contrast removed
    "pruning": (0.0, 0.25, 0.5, 0.75, 0.9),  # fraction of each layer's weights zeroed
    "pruning-channels": (0.0, 0.1, 0.25, 0.5, 0.75),  # fraction of each layer's channels
    "lesion": (0.0, 0.1, 0.3),  # fraction of the area's units silenced
    "adversarial": (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255),  # L-inf epsilon
}
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
    _, test, _ = build_datasets(
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


@torch.no_grad()
def accuracy(
    model, images: Tensor, labels: Tensor, *, batch_size: int = 256, seed: int = 0
) -> float:
    """Fraction of ``images`` classified as ``labels`` (rate-coding draws seeded by ``seed``)."""
    correct = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            correct += int((model(x).logits.argmax(dim=1) == y).sum())
    return correct / len(labels)


Row = dict


@dataclass(frozen=True)
class Evaluation:
    """One accuracy evaluation of a test: its row's condition, level and repeat, how many of
    the run's test images it scores (the first ``images``), and ``perturbed``, a callable
    returning a context manager that yields the ``(model, images, labels)`` to score."""

    condition: str
    level: float
    repeat: int
    images: int
    perturbed: Callable[[], AbstractContextManager[tuple[nn.Module, Tensor, Tensor]]]


def plan(
    test: str, run: EvalRun, *, levels: tuple[float, ...] | None, repeats: int, seed: int
) -> Iterator[Evaluation]:
    """The evaluations of ``test`` (one of :data:`TESTS` but ``representation``) in order;
    nothing is perturbed until an evaluation's ``perturbed`` is entered."""
    if test not in TESTS or test == "representation":
        raise ConfigError(f"unknown test {test!r}; one of {', '.join(TESTS)}")
    model, images, labels = run.model, run.images, run.labels
    n = len(labels)
    if test == "weight-noise":
        for level in levels or DEFAULT_LEVELS[test]:
            for r in range(repeats):
                g = (seed, test, level, r)
                noisy = lambda g=g, lv=level: nullcontext(  # noqa: E731
                    (perturb.weight_noise(model, lv, _generator(*g), run.layers), images, labels)
                )
                yield Evaluation("gaussian", level, r, n, noisy)
    elif test == "input-noise":
        for kind in perturb.INPUT_DEGRADATIONS:
            for level in levels or DEFAULT_LEVELS[kind]:
                for r in range(repeats if kind not in ("blur", "contrast") else 1):
                    g = (seed, test, kind, level, r)
                    degraded = lambda g=g, k=kind, lv=level: nullcontext(  # noqa: E731
                        (model, perturb.degrade(k, images, lv, _generator(*g)), labels)
                    )
                    yield Evaluation(kind, level, r, n, degraded)
    elif test == "pruning":
        for level in levels or DEFAULT_LEVELS[test]:
            pruned = lambda lv=level: nullcontext(  # noqa: E731
                (perturb.magnitude_prune(model, lv, run.layers), images, labels)
            )
            yield Evaluation("magnitude", level, 0, n, pruned)
    elif test == "pruning-channels":
        for level in levels or DEFAULT_LEVELS[test]:
            for mode in perturb.PRUNING_MODES:
                for r in range(repeats if mode == "random" and level else 1):
                    g = (seed, test, mode, level, r)
                    silenced = lambda g=g, lv=level, md=mode: _given(  # noqa: E731
                        _pruned(run, lv, md, _generator(*g)), model, images, labels
                    )
                    yield Evaluation(mode, level, r, n, silenced)
    elif test == "lesion":
        yield from _lesions(run, levels or DEFAULT_LEVELS[test], repeats, seed)
    elif test == "adversarial":
        k = min(ADVERSARIAL_IMAGES, n)
        x, y = images[:k], labels[:k]
        for level in levels or DEFAULT_LEVELS[test]:
            fgsm = lambda lv=level: nullcontext((model, perturb.fgsm(model, x, y, lv), y))  # noqa: E731
            yield Evaluation("fgsm", level, 0, k, fgsm)
            g = (seed, test, "pgd", level)
            pgd = lambda g=g, lv=level: nullcontext(  # noqa: E731
                (model, perturb.pgd(model, x, y, lv, steps=PGD_STEPS, generator=_generator(*g)), y)
            )
            yield Evaluation(f"pgd-{PGD_STEPS}", level, 0, k, pgd)


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
) -> Iterator[Row]:
    """Rows of ``test`` (one of :data:`TESTS` but ``representation``) for ``run``, one per
    evaluation of :func:`plan`; weight noise, pruning and lesions act on ``run.layers``.
    Level-0 evaluations reuse the unperturbed accuracy of the same images."""
    baseline: dict[int, float] = {}
    for step in plan(test, run, levels=levels, repeats=repeats, seed=seed):
        if step.level == 0 and step.images in baseline:  # the identity: unperturbed accuracy
            acc = baseline[step.images]
        else:
            if progress is not None:
                progress.update(1)
            with step.perturbed() as (m, x, y):
                acc = accuracy(m, x, y, batch_size=batch_size, seed=seed)
            if step.level == 0:
                baseline[step.images] = acc
        yield {"run": run.name, "test": test, "condition": step.condition,
               "level": float(step.level), "repeat": step.repeat, "accuracy": acc}  # fmt: skip


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
                    yield Evaluation(f"{area} {condition}", level, r, n, silenced)


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
    bounded = {"pruning-channels": (1, "[0, 1)"), "pruning": (1.0001, "[0, 1]"),
               "lesion": (1.0001, "[0, 1]")}  # fmt: skip
    for test in tests:
        if test in bounded and max(levels) >= bounded[test][0]:
            raise ConfigError(
                f"levels {','.join(f'{v:g}' for v in levels)}: {test} takes fractions in "
                f"{bounded[test][1]}"
            )


def curve_summary(means: dict[float, float], chance: float) -> dict:
    """A degradation curve ``{level: mean accuracy}`` as the papers report it: ``accuracy``,
    ``drop`` (the level-0 accuracy minus it, Truong & Hasson), ``ratio`` (it over the level-0
    accuracy) per level, and ``auc``, the chance-corrected area under the curve: the mean over
    the level range (trapezoids) of ``(acc − chance) / (acc₀ − chance)``; 1 for no loss, 0 for
    chance at every level (NaN without level 0, or at chance already at level 0)."""
    levels = sorted(means)
    accuracy = {f"{lv:g}": means[lv] for lv in levels}
    out = {"accuracy": accuracy, "drop": {}, "ratio": {}, "auc": float("nan")}
    if 0.0 not in means:
        return out
    base = means[0.0]
    out["drop"] = {f"{lv:g}": base - means[lv] for lv in levels}
    out["ratio"] = {f"{lv:g}": means[lv] / base if base else float("nan") for lv in levels}
    if base > chance and len(levels) > 1:
        kept = np.array([(means[lv] - chance) / (base - chance) for lv in levels])
        x = np.asarray(levels)
        out["auc"] = float(trapezoid(kept, x) / (x[-1] - x[0]))
    return out


def count_evaluations(tests, run: EvalRun, levels, repeats: int) -> int:
    """How many accuracies :func:`run_test` computes for ``tests`` (for the progress bar):
    the evaluations of :func:`plan`, level-0 ones once per image count."""
    total = 0
    for test in tests:
        if test == "representation":
            continue
        steps = list(plan(test, run, levels=levels, repeats=repeats, seed=0))
        total += sum(1 for s in steps if s.level != 0)
        total += len({s.images for s in steps if s.level == 0})
    return total
