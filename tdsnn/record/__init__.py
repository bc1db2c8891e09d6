"""Spike recordings (DESIGN section 10): probe responses of a trained run, written to one
SONATA-compatible HDF5 file, read back lazily, and exported to NWB and neo.

- :func:`record_run`: record a run directory's responses to a probe set (``tdsnn record``).
- :func:`open`: read a recording (:class:`Recording`).
- :mod:`tdsnn.record.nwb_neo`: NWB and neo exports (``tdsnn export``; the ``export`` extra).

The names below are imported on first use, so that :mod:`tdsnn.record.options` (the command
line's checks) loads without torch or h5py.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "FORMAT": "hdf5",
    "FORMAT_VERSION": "hdf5",
    "IncompleteRecordingWarning": "reader",
    "Recording": "reader",
    "RecordingWriter": "hdf5",
    "open_recording": "reader",
    "AreaBatch": "model",
    "AreaNodes": "model",
    "RecordingMeta": "model",
    "TrialBatch": "model",
    "RecordOptions": "options",
    "RecordResult": "recorder",
    "area_batch": "recorder",
    "record_run": "recorder",
}

__all__ = sorted([*_HOME, "open"])


def __getattr__(name: str) -> Any:
    """``tdsnn.record.X``: ``X`` from its module (``open`` is :func:`open_recording`, like
    h5py.File or pynwb's IO)."""
    home = _HOME.get("open_recording" if name == "open" else name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{home}")
    value = getattr(module, "open_recording" if name == "open" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
