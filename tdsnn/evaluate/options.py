"""The sizes of an evaluation, declared once (:func:`tdsnn.fields.option`): checked in
parameter terms by :func:`tdsnn.evaluate.report.evaluate_runs`, and mapped to the flags of
``tdsnn evaluate`` by :func:`tdsnn.fields.from_args`; and the names of its tests. Importing it
is cheap (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from tdsnn.choices import EVALUATE_REPEATS, EVALUATE_TESTS
from tdsnn.fields import check_fields, option

__all__ = [
    "NAMED_TESTS",
    "TEMPORAL_TESTS",
    "TESTS",
    "WEIGHT_NOISE_SCALES",
    "WEIGHT_NOISE_TESTS",
    "EvaluateOptions",
]

WEIGHT_NOISE_SCALES = ("relative", "absolute", "multiplicative")
"""How weight noise is scaled (:func:`tdsnn.evaluate.perturb.weight_noise`), ε ~ N(0, 1) per
weight: ``relative`` W + level · std(W) · ε, ``absolute`` W + level · ε, ``multiplicative``
W · (1 + level · ε)."""

WEIGHT_NOISE_TESTS = {
    "weight-noise": "relative",
    "weight-noise-absolute": "absolute",
    "weight-noise-multiplicative": "multiplicative",
}
"""The weight-noise tests, one per scale of :data:`WEIGHT_NOISE_SCALES` (test -> scale): one
implementation, told apart by name, so that one evaluation or experiment measures several."""

TEMPORAL_TESTS = (
    "timesteps",
    "early-readout",
    "spike-jitter",
    "spike-deletion",
    "spike-insertion",
    "synchrony-disruption",
)
"""Tests of spike timing (:mod:`tdsnn.evaluate.temporal`): LIF runs only."""

TESTS = (
    *(t for t in EVALUATE_TESTS if t != "representation"),
    *(t for t in WEIGHT_NOISE_TESTS if t not in EVALUATE_TESTS),
    *TEMPORAL_TESTS,
    "representation",
)
"""Every test of ``tdsnn evaluate --tests``, in the order they run: those of
:data:`tdsnn.choices.EVALUATE_TESTS`, weight noise at its other scales, the temporal ones,
``representation`` last."""

NAMED_TESTS = (*(t for t in WEIGHT_NOISE_TESTS if t not in EVALUATE_TESTS), *TEMPORAL_TESTS)
"""Tests that run only when named: weight noise at its absolute and multiplicative scales, and
the temporal tests."""


@dataclass(frozen=True)
class EvaluateOptions:
    """Noise draws per noisy level, test images per run (None: the whole split), images per
    forward pass."""

    repeats: int = option(EVALUATE_REPEATS, low=1, high=100)
    test_size: int | None = option(None, low=1, high=10**7)
    batch_size: int = option(256, low=1, high=10**7)

    def __post_init__(self) -> None:
        check_fields(self, "")
