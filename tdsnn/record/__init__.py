"""Spike recordings (DESIGN section 10): probe responses of a trained run, written to one
SONATA-compatible HDF5 file, read back lazily, and exported to NWB and neo.

- :func:`record_run`: record a run directory's responses to a probe set (``tdsnn record``).
- :func:`open`: read a recording (:class:`Recording`).
- :mod:`tdsnn.record.export`: NWB and neo exports (``tdsnn export``; the ``export`` extra).
"""

from tdsnn.record.hdf5 import (
    FORMAT,
    FORMAT_VERSION,
    IncompleteRecordingWarning,
    Recording,
    RecordingWriter,
    open_recording,
)
from tdsnn.record.model import AreaBatch, AreaNodes, RecordingMeta, TrialBatch
from tdsnn.record.recorder import (
    RecordingInterrupted,
    RecordOptions,
    RecordResult,
    area_batch,
    record_run,
)

open = open_recording  # noqa: A001 - tdsnn.record.open(path), like h5py.File / pynwb IO

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "AreaBatch",
    "AreaNodes",
    "IncompleteRecordingWarning",
    "Recording",
    "RecordingInterrupted",
    "RecordingMeta",
    "RecordOptions",
    "RecordResult",
    "RecordingWriter",
    "TrialBatch",
    "area_batch",
    "open",
    "open_recording",
    "record_run",
]
