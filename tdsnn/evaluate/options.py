"""The sizes of an evaluation, declared once (:func:`tdsnn.fields.option`): checked in
parameter terms by :func:`tdsnn.evaluate.report.evaluate_runs`, and mapped to the flags of
``tdsnn evaluate`` by :func:`tdsnn.fields.from_args`. Importing it is cheap (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from tdsnn.choices import EVALUATE_REPEATS
from tdsnn.fields import check_fields, option

__all__ = ["EvaluateOptions"]


@dataclass(frozen=True)
class EvaluateOptions:
    """Noise draws per noisy level, test images per run (None: the whole split), images per
    forward pass."""

    repeats: int = option(EVALUATE_REPEATS, low=1, high=100)
    test_size: int | None = option(None, low=1, high=10**7)
    batch_size: int = option(256, low=1, high=10**7)

    def __post_init__(self) -> None:
        check_fields(self, "")
