"""Run the robustness and representation tests on trained runs (``tdsnn evaluate``).

Each test gives rows ``(run, test, condition, level, repeat, accuracy)``: the run's accuracy
on (a fixed subset of) its own test split under one perturbation. Every condition is batched
and seeded: the same (seed, test, condition, level, repeat) always draws the same noise, and
every accuracy is computed with the same rate-coding draws. Every perturbation is the identity
at level 0 (tested), so level-0 rows reuse the run's unperturbed accuracy instead of
recomputing it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tdsnn.data import build_datasets
from tdsnn.errors import ConfigError
from tdsnn.evaluate import perturb
from tdsnn.evaluate.representation import representation_metrics
from tdsnn.rundir import TrainedRun, load_run

__all__ = ["DEFAULT_LEVELS", "TESTS", "EvalRun", "accuracy", "load_eval_run", "run_test"]

TESTS = ("weight-noise", "input-noise", "pruning", "lesion", "adversarial", "representation")
DEFAULT_LEVELS = {
    "weight-noise": (0.0, 0.05, 0.1, 0.2, 0.4),  # noise std / the layer's weight std
    "white-noise": (0.0, 0.02, 0.05, 0.1),  # std, in units of the [0, 1] intensity range
    "pink-noise": (0.0, 0.02, 0.05, 0.1),
    "salt-and-pepper": (0.0, 0.01, 0.03, 0.1),  # fraction of pixels
    "blur": (0.0, 0.5, 1.0, 2.0),  # Gaussian sigma, pixels
    "contrast": (0.0, 0.5, 0.8, 0.95),  # fraction of contrast removed
    "pruning": (0.0, 0.25, 0.5, 0.75, 0.9),  # fraction of each layer's weights zeroed
    "lesion": (0.0, 0.1, 0.3),  # fraction of the area's units silenced
    "adversarial": (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255),  # L-inf epsilon
}
LESIONS = (("disc", perturb.disc_units), ("scattered", perturb.scattered_units))
ADVERSARIAL_IMAGES = 128  # attacks cost a backward pass per step: a subset of the test images
PGD_STEPS = 5


@dataclass
class EvalRun:
    """A trained run and the test images it is evaluated on."""

    name: str
    trained: TrainedRun
    images: Tensor  # [n, C, S, S] in [0, 1], on the device
    labels: Tensor  # [n]

    @property
    def model(self):
        return self.trained.model


def load_eval_run(
    run_dir: str | Path,
    *,
    test_size: int,
    data_root: str | None,
    device,
    name: str,
    which: str | int = "best",
) -> EvalRun:
    """A checkpoint's model (default ``best``; see :func:`~tdsnn.rundir.load_run`) and the
    first ``test_size`` images of the run's test split."""
    trained = load_run(run_dir, which, device)
    data = trained.config.data
    size = test_size if data.test_size is None else min(test_size, data.test_size)
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
    return EvalRun(name, trained, images.to(device), labels.to(device))


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


def run_test(
    test: str,
    run: EvalRun,
    *,
    levels: tuple[float, ...] | None = None,
    repeats: int = 2,
    seed: int = 0,
    batch_size: int = 256,
    progress: tqdm | None = None,
) -> Iterator[Row]:
    """Rows of ``test`` (one of :data:`TESTS` but ``representation``) for ``run``."""
    if test not in TESTS or test == "representation":
        raise ConfigError(f"unknown test {test!r}; one of {', '.join(TESTS)}")
    model, images, labels = run.model, run.images, run.labels
    baseline: dict[int, float] = {}

    def score(m, x=images, y=labels, level: float | None = None) -> float:
        if level == 0 and len(y) in baseline:  # the identity: the unperturbed accuracy
            return baseline[len(y)]
        if progress is not None:
            progress.update(1)
        acc = accuracy(m, x, y, batch_size=batch_size, seed=seed)
        if level == 0:
            baseline[len(y)] = acc
        return acc

    def row(condition, level, repeat, acc) -> Row:
        return {"run": run.name, "test": test, "condition": condition, "level": float(level),
                "repeat": repeat, "accuracy": acc}  # fmt: skip

    if test == "weight-noise":
        for level in levels or DEFAULT_LEVELS[test]:
            for r in range(repeats):
                g = _generator(seed, test, level, r)
                noisy = perturb.weight_noise(model, level, g)
                yield row("all layers", level, r, score(noisy, level=level))
    elif test == "input-noise":
        for kind in perturb.INPUT_DEGRADATIONS:
            for level in levels or DEFAULT_LEVELS[kind]:
                for r in range(repeats if kind not in ("blur", "contrast") else 1):
                    g = _generator(seed, test, kind, level, r)
                    x = perturb.degrade(kind, images, level, g)
                    yield row(kind, level, r, score(model, x, level=level))
    elif test == "pruning":
        for level in levels or DEFAULT_LEVELS[test]:
            pruned = perturb.magnitude_prune(model, level)
            yield row("magnitude", level, 0, score(pruned, level=level))
    elif test == "lesion":
        yield from _lesions(run, levels or DEFAULT_LEVELS[test], repeats, seed, score, row)
    elif test == "adversarial":
        n = min(ADVERSARIAL_IMAGES, len(labels))
        x, y = images[:n], labels[:n]
        for level in levels or DEFAULT_LEVELS[test]:
            attacked = perturb.fgsm(model, x, y, level)
            yield row("fgsm", level, 0, score(model, attacked, y, level=level))
            g = _generator(seed, test, "pgd", level)
            attacked = perturb.pgd(model, x, y, level, steps=PGD_STEPS, generator=g)
            yield row(f"pgd-{PGD_STEPS}", level, 0, score(model, attacked, y, level=level))


def _lesions(run: EvalRun, levels, repeats: int, seed: int, score, row) -> Iterator[Row]:
    """Per area: a disc lesion of a fraction of its units against as many scattered units."""
    model = run.model
    for area, sheet in run.trained.sheets.items():
        for level in levels:
            count = round(level * sheet.num_units)
            for r in range(repeats if count else 1):
                for condition, pick in LESIONS:
                    units = pick(sheet, count, _generator(seed, "lesion", area, level, r))
                    with perturb.silence(model, area, units):
                        acc = score(model, level=level)
                    yield row(f"{area} {condition}", level, r, acc)


def representation(run: EvalRun, batch_size: int = 256) -> dict:
    """:func:`tdsnn.evaluate.representation.representation_metrics` on the run's test images."""
    return representation_metrics(run.model, run.images, run.trained.sheets, batch_size)


def count_evaluations(tests, run: EvalRun, levels, repeats: int) -> int:
    """How many accuracy evaluations ``tests`` make (for the progress bar)."""

    def nonzero(key: str) -> int:
        return sum(1 for level in (levels or DEFAULT_LEVELS[key]) if level != 0)

    def zero(key: str) -> int:
        return int(any(level == 0 for level in (levels or DEFAULT_LEVELS[key])))

    total = 0
    for test in tests:
        if test == "weight-noise":
            total += nonzero(test) * repeats + zero(test)
        elif test == "input-noise":
            for kind in perturb.INPUT_DEGRADATIONS:
                reps = repeats if kind not in ("blur", "contrast") else 1
                total += nonzero(kind) * reps
            total += int(any(zero(kind) for kind in perturb.INPUT_DEGRADATIONS))
        elif test == "pruning":
            total += nonzero(test) + zero(test)
        elif test == "lesion":
            for level in levels or DEFAULT_LEVELS[test]:
                for sheet in run.trained.sheets.values():
                    total += 2 * repeats if round(level * sheet.num_units) else 0
            total += zero(test)
        elif test == "adversarial":
            total += 2 * nonzero(test) + zero(test)
    return total
