"""The sizes of a recording, declared once (:func:`tdsnn.fields.option`): checked in parameter
terms by :func:`tdsnn.record.record_run`, and mapped to the flags of ``tdsnn record`` by
:func:`tdsnn.fields.from_args`. Importing it is cheap (no torch, numpy or h5py)."""

from __future__ import annotations

from dataclasses import dataclass

from tdsnn.fields import check_fields, option

__all__ = ["RecordOptions"]


@dataclass(frozen=True)
class RecordOptions:
    """Trials per batch, images per class (categories), membrane units per area (``None``: no
    membrane), first test images (dataset; ``None``: all), ms per step, seed."""

    batch_size: int = option(64, low=1, high=1_000_000)
    per_class: int = option(16, low=1, high=1_000_000)
    membrane_units: int | None = option(None, low=1, high=10**7)
    limit: int | None = option(None, low=1, high=10**7)
    dt_ms: float = option(1.0, low=0, low_open=True, high=1000)
    seed: int = option(0, low=0, high=2**32 - 1)

    def __post_init__(self) -> None:
        check_fields(self, "")
