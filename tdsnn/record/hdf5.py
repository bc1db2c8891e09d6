"""The recording file (DESIGN section 10): its HDF5 layout and its one writer (the reader is
:mod:`tdsnn.record.reader`).

Layout (SONATA-compatible: libsonata and bmtk read ``/nodes``, ``/spikes`` and ``/report``)::

    /                       @magic = 0x0A7A, @version = [0, 1]
    /nodes/<AREA>/          node_id, node_type_id, node_group_id, node_group_index;
                            0/x, 0/y, 0/z (µm on the sheet), 0/channel, 0/row, 0/col,
                            0/area and 0/model_type (enumerations with 0/@library/...)
    /spikes/<AREA>/         @sorting = by_time (uint8 enum); timestamps (float64, ms), node_ids
                            (uint64): chunked, resizable, uncompressed
    /report/<AREA>/         membrane of the chosen units: data [steps, n_rec] float32 and
                            mapping/{node_ids, index_pointers (+ index_pointer link), element_ids,
                            element_pos, time = [start, stop, dt] ms}
    /tdsnn/                 @format = "tdsnn-recording", @format_version, metadata (JSON attrs)
        status              int64 [2]: trials completed, state (0 recording, 1 complete,
                            2 interrupted)
        stimuli/<column>    the probe table, one row per stimulus
        trials/{stimulus_index, start_ms, stop_ms}
        areas/<AREA>/counts       uint8 [trials, N] spikes per unit per trial (uint16 when
                                  T > 255; gzip); float32 activations in a recording of
                                  ReLU units (@responses = "rates" on /tdsnn; its /spikes
                                  populations are empty)
        areas/<AREA>/spike_index  uint64 [trials + 1]: trial k's spikes are rows
                                  spike_index[k] .. spike_index[k+1] of /spikes/<AREA>

Recordings of ReLU units (``model.neuron: relu``, ``@responses = "rates"``; without the
attribute a file is a spike recording) hold each unit's activation per trial (its mean over the
steps, T = 1; float32) in ``areas/<AREA>/counts``, which ``Recording.counts`` returns. Their
``/spikes/<AREA>`` populations are kept, empty (libsonata reads the nodes and zero spikes, the
spike index is all zeros) so that every recording has one layout; :meth:`Recording.spikes`
and :meth:`Recording.unit_spikes` refuse them in one line, and they have no ``/report``.

The writer works in HDF5's single-writer/multiple-reader (SWMR) mode: the file on disk is
consistent after every flush, so a killed process leaves a file that :class:`Recording` opens
(with every trial up to the last completed batch; the status row says how many). Files are
written in the v110 format, the newest that libsonata's HDF5 reads.
"""

from __future__ import annotations

import json
import os
import socket
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from tdsnn.atomic import FULL_DISK, disk_full, kill_hook
from tdsnn.errors import RecordingError
from tdsnn.errors import one_line as _one_line
from tdsnn.record.model import AreaNodes, RecordingMeta, TrialBatch

__all__ = ["FORMAT", "FORMAT_VERSION", "RecordingWriter"]

FORMAT = "tdsnn-recording"
FORMAT_VERSION = 2  # 2: @responses; rate recordings (ReLU units) are written as version 2
READ_VERSIONS = (1, 2)  # version 1 files are spike recordings
LIBVER = ("v110", "v110")  # SWMR needs v110; libsonata cannot read HDF5 2.0's newer format
STATES = ("recording", "complete", "interrupted")
SORTING = h5py.enum_dtype({"none": 0, "by_id": 1, "by_time": 2}, basetype=np.uint8)
EVENT_CHUNK = 1 << 16  # spikes per chunk of /spikes datasets (1 MiB of timestamps + node ids)
READ_BLOCK = 1 << 20  # spikes read at a time when scanning


class RecordingWriter:
    """Write a recording batch by batch; the file is readable after every batch.

    Use as a context manager: leaving it normally marks the recording complete; leaving it
    by an exception (Ctrl-C included) cuts every dataset back to the last committed batch,
    marks the recording interrupted and closes the file cleanly.

    A batch's spikes, index and trial rows are written at once; its spike counts are
    compressed in worker threads (zlib releases the GIL) while the caller simulates the next
    batch, and written, flushed and committed in the status row by the next :meth:`append`
    (or by :meth:`close`). A killed writer therefore loses at most the last two batches.

    Args:
        path: the file to create (an existing file is replaced).
        meta: what is recorded (:class:`RecordingMeta`).
        total_trials: trials the recording is meant to hold (for the interrupted message).
        trials_per_chunk: rows of a chunk of the count datasets; batches of this many trials
            are compressed in the background, others are written through HDF5's filter.
    """

    def __init__(
        self, path: str | Path, meta: RecordingMeta, total_trials: int, trials_per_chunk: int = 64
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.total_trials = total_trials
        self.trials = 0  # trials whose spikes are written
        self.events = {area.name: 0 for area in meta.areas}
        self.committed = 0  # trials whose counts are written too, and flushed
        self.committed_events = dict(self.events)
        self._pending: tuple | None = None  # ([(dataset, row, future)], trials, events)
        self.file = _create_file(self.path, meta, total_trials, trials_per_chunk)
        self._space = _SpaceReserve(self.path)
        self.count_dtype = meta.count_dtype
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        # every dataset handle once: an h5py lookup by name costs more than a small write
        f = self.file
        self._spikes = {
            a.name: {key: f[f"spikes/{a.name}/{key}"] for key in ("timestamps", "node_ids")}
            for a in meta.areas
        }
        self._areas = {
            a.name: {key: f[f"tdsnn/areas/{a.name}/{key}"] for key in ("counts", "spike_index")}
            for a in meta.areas
        }
        self._reports = {
            a.name: {key: f[f"report/{a.name}/{key}"] for key in ("data", "mapping/time")}
            for a in meta.areas
            if len(a.membrane_units)
        }
        self._trials = {
            key: f[f"tdsnn/trials/{key}"] for key in ("stimulus_index", "start_ms", "stop_ms")
        }
        self._status = f["tdsnn/status"]
        growing = [
            *(
                d
                for group in (*self._spikes.values(), *self._areas.values())
                for d in group.values()
            ),
            *(r["data"] for r in self._reports.values()),
            *self._trials.values(),
        ]
        self._space.ahead = sum(_chunk_bytes(d) for d in growing)  # a new chunk each at most

    def append(self, batch: TrialBatch) -> None:
        """Append ``batch`` (the next trials in order); commit the batch before it."""
        if batch.first_trial != self.trials:
            raise ValueError(f"batch starts at trial {batch.first_trial}, expected {self.trials}")
        self._space.reserve(self.file, batch, self.total_trials - self.trials)
        meta = self.meta
        n, t, dt = len(batch), meta.timesteps, meta.dt_ms
        events = dict(self.events)
        for area in self.meta.areas:
            data = batch.areas[area.name]
            per_trial = data.counts.sum(axis=1, dtype=np.int64)
            if meta.responses == "rates":  # activations, no events
                per_trial = np.zeros(len(data.counts), dtype=np.int64)
            if int(per_trial.sum()) != len(data.node_ids):
                raise ValueError(f"{area.name}: counts and spike events disagree")
            spikes = self._spikes[area.name]
            _append(spikes["timestamps"], data.timestamps_ms, events[area.name])
            _append(spikes["node_ids"], data.node_ids, events[area.name])
            ends = events[area.name] + np.cumsum(per_trial)
            _append(self._areas[area.name]["spike_index"], ends.astype(np.uint64), self.trials + 1)
            events[area.name] += len(data.node_ids)
            if area.name in self._reports:
                _append(self._reports[area.name]["data"], data.membrane, self.trials * t)
        trial = np.arange(self.trials, self.trials + n)
        _append(self._trials["stimulus_index"], batch.stimulus_index.astype(np.int64), self.trials)
        _append(self._trials["start_ms"], trial * t * dt, self.trials)
        _append(self._trials["stop_ms"], (trial + 1) * t * dt, self.trials)
        counts = [
            batch.areas[a.name].counts.astype(self.count_dtype, copy=False) for a in self.meta.areas
        ]
        datasets = [self._areas[a.name]["counts"] for a in self.meta.areas]
        rows = datasets[0].chunks[0]
        if self.trials % rows:  # not on a chunk boundary: through HDF5's filter, in place
            self._commit()
            for dataset, block in zip(datasets, counts, strict=True):
                _append(dataset, block, self.trials)
            pending = []
        else:
            pending = _submit_chunks(datasets, counts, self.trials, self.pool)
        self.trials += n
        self.events = events
        kill_hook(self.path.name)  # test hook: a kill between a batch's data and its commit
        self._commit()
        self._pending = (pending, self.trials, events)

    def _commit(self) -> None:
        """Write the pending batch's count chunks, flush, and record it in the status row."""
        if not self._pending:
            return
        chunks, trials, events = self._pending
        for dataset, row, future in chunks:
            dataset.id.write_direct_chunk((row, 0), future.result())
        self.file.flush()  # the data first, then the row that makes it count
        self.committed, self.committed_events = trials, events
        self._status[...] = [trials, 0]
        self.file.flush()
        self._pending = None

    def close(self, state: str = "complete") -> None:
        """Commit what is complete, mark the recording ``complete`` or ``interrupted``, close."""
        if not self.file.id.valid:
            return
        try:
            self._commit()
            if state != "complete":  # an append may have been cut short
                self._cut_to_committed()
            stop = self.committed * self.meta.timesteps * self.meta.dt_ms
            for report in self._reports.values():
                report["mapping/time"][...] = [0.0, stop, self.meta.dt_ms]
            self._status[...] = [self.committed, STATES.index(state)]
        finally:
            self.file.close()
            self.pool.shutdown(cancel_futures=True)
            self._space.release()

    def _cut_to_committed(self) -> None:
        """Drop whatever was written past the last committed batch."""
        n = self.committed
        for area in self.meta.areas:
            for key in ("timestamps", "node_ids"):
                self._spikes[area.name][key].resize((self.committed_events[area.name],))
            self._areas[area.name]["counts"].resize(n, axis=0)
            self._areas[area.name]["spike_index"].resize((n + 1,))
            if area.name in self._reports:
                self._reports[area.name]["data"].resize(n * self.meta.timesteps, axis=0)
        for key in ("stimulus_index", "start_ms", "stop_ms"):
            self._trials[key].resize((n,))
        self.trials, self.events = n, dict(self.committed_events)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("complete" if exc_type is None else "interrupted")


def _create_file(
    path: Path, meta: RecordingMeta, total_trials: int, trials_per_chunk: int
) -> h5py.File:
    """A new recording file with every dataset, in SWMR write mode; nothing is left behind
    (no open handle, no file) if that fails. A full disk is a :class:`DiskFullError`."""
    try:
        f = h5py.File(path, "w", libver=LIBVER)
    except OSError as exc:
        raise RecordingError(f"cannot create {path} ({_one_line(exc)})") from exc
    try:
        _create_layout(f, meta, total_trials, max(1, min(trials_per_chunk, 1024)))
        f.attrs["writer"] = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        f.swmr_mode = True  # no new objects from here on
    except BaseException:
        f.close()
        path.unlink(missing_ok=True)
        raise
    return f


class _SpaceReserve:
    """Disk space claimed ahead of HDF5's writes, so that a full disk or file-size limit
    (ENOSPC, EDQUOT, EFBIG) is found before a batch is written, never inside HDF5: a failed
    HDF5 write leaves a file handle that cannot be closed (and crashes the process at exit).

    Before each batch the file is extended (``posix_fallocate``) past HDF5's end of file by
    the batch's uncompressed size, one new chunk of every growing dataset (HDF5 allocates
    chunks whole) and a margin for the metadata; a clean close cuts the
    unused claim off again. Where the file system cannot allocate ahead, nothing is claimed."""

    MARGIN = 1 << 18  # bytes of metadata a batch and the closing may write

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = os.open(path, os.O_RDWR)
        self.ahead = 0  # bytes of the chunks a batch may start (allocated whole)

    def reserve(self, file: h5py.File, batch: TrialBatch, trials_left: int) -> None:
        """Claim room for ``batch``; a :class:`DiskFullError` if there is none."""
        if self.fd is None:
            return
        end = file.id.get_filesize()
        size = batch.nbytes
        try:
            have, want = os.fstat(self.fd).st_size, end + size + self.ahead + self.MARGIN
            if want > have:  # beyond the file's end only (emulated allocation writes blocks)
                os.posix_fallocate(self.fd, have, want - have)
        except OSError as exc:
            if exc.errno in FULL_DISK:
                needed = end + size * max(1, trials_left) // max(1, len(batch)) + self.MARGIN
                raise disk_full(exc, self.path, needed) from exc
            os.close(self.fd)  # allocation ahead not supported here: write without it
            self.fd = None

    def release(self) -> None:
        """Once the file is closed: drop the claim beyond HDF5's end of file."""
        if self.fd is None:
            return
        try:
            end = _end_of_allocations(self.fd)
            if end is not None and os.fstat(self.fd).st_size > end:
                os.ftruncate(self.fd, end)
        finally:
            os.close(self.fd)
            self.fd = None


def _chunk_bytes(dataset: h5py.Dataset) -> int:
    """Bytes of one chunk of ``dataset`` (uncompressed)."""
    return int(np.prod(dataset.chunks)) * dataset.dtype.itemsize


def _end_of_allocations(fd: int) -> int | None:
    """The end-of-file address a closed HDF5 file's superblock (version 2 or 3, 8-byte
    addresses, as ``libver="v110"`` writes) records: where HDF5's allocations end."""
    head = os.pread(fd, 36, 0)
    if len(head) < 36 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
        return None
    if head[9] != 8:  # size of addresses
        return None
    return int.from_bytes(head[28:36], "little")


def _append(dataset: h5py.Dataset, values: np.ndarray, at: int) -> None:
    """Write ``values`` at row ``at`` of a resizable dataset, growing it to fit (through the
    low-level API: h5py's slicing costs more than writing a small batch)."""
    stop = at + len(values)
    dataset.resize(stop, axis=0)
    if len(values):
        values = np.ascontiguousarray(values, dtype=dataset.dtype)
        space = dataset.id.get_space()
        space.select_hyperslab((at,) + (0,) * (values.ndim - 1), values.shape)
        dataset.id.write(h5py.h5s.create_simple(values.shape), space, values)


def _submit_chunks(
    datasets: list[h5py.Dataset], blocks: list[np.ndarray], at: int, pool: ThreadPoolExecutor
) -> list:
    """Grow every area's count dataset by its block of rows (starting on a chunk boundary)
    and start compressing the blocks' chunks in ``pool``: ``[(dataset, row, future)]``."""
    chunks = []
    for dataset, counts in zip(datasets, blocks, strict=True):
        dataset.resize(at + len(counts), axis=0)
        rows = dataset.chunks[0]
        shuffle, level = bool(dataset.shuffle), int(dataset.compression_opts)
        for lo in range(0, len(counts), rows):
            future = pool.submit(_deflate_chunk, counts[lo : lo + rows], rows, shuffle, level)
            chunks.append((dataset, at + lo, future))
    return chunks


def _deflate_chunk(block: np.ndarray, rows: int, shuffle: bool, level: int) -> bytes:
    """``block`` (at most ``rows`` rows) as one chunk through the count datasets' filters:
    byte shuffle for multi-byte types, then deflate. A short last chunk is zero-padded (the
    dataset's extent hides the padding)."""
    if len(block) < rows:
        block = np.concatenate([block, np.zeros((rows - len(block), block.shape[1]), block.dtype)])
    raw = np.ascontiguousarray(block).view(np.uint8)
    if shuffle and block.itemsize > 1:
        raw = raw.reshape(-1, block.itemsize).T  # HDF5's shuffle: byte planes in order
    return zlib.compress(memoryview(np.ascontiguousarray(raw)).cast("B"), level)


def _growing(group: h5py.Group, name: str, dtype, row: tuple = (), chunk: int = 4096, **kw):
    return group.create_dataset(
        name, (0, *row), maxshape=(None, *row), chunks=(chunk, *row), dtype=dtype, **kw
    )


def _create_layout(
    f: h5py.File, meta: RecordingMeta, total_trials: int, trials_per_chunk: int
) -> None:
    f.attrs["magic"] = np.uint32(0x0A7A)
    f.attrs["version"] = np.array([0, 1], dtype=np.uint32)
    names = [area.name for area in meta.areas]
    count_dtype = meta.count_dtype
    top = f.create_group("tdsnn")
    attrs = {
        "format": FORMAT,
        # spike recordings stay version 1, which earlier readers read; rate recordings are 2,
        # so that an earlier reader refuses them instead of taking activations for counts
        "format_version": FORMAT_VERSION if meta.responses == "rates" else 1,
        "timesteps": meta.timesteps,
        "dt_ms": meta.dt_ms,
        "v_threshold": meta.v_threshold,
        "responses": meta.responses,
        "stimuli_kind": meta.stimuli_kind,
        "total_trials": total_trials,
        "areas": json.dumps(names),
        "class_names": json.dumps(list(meta.class_names)),
        "config": json.dumps(meta.config),
        "source": json.dumps(meta.source),
        "versions": json.dumps(meta.versions),
    }
    top.attrs.update(attrs)
    top.create_dataset("status", data=np.array([0, 0], dtype=np.int64))
    stimuli = top.create_group("stimuli")
    for key, column in meta.stimuli.items():
        stimuli.create_dataset(key, data=np.asarray(column))
    trials = top.create_group("trials")
    _growing(trials, "stimulus_index", np.int64)
    _growing(trials, "start_ms", np.float64)
    _growing(trials, "stop_ms", np.float64)
    for i, area in enumerate(meta.areas):
        _create_nodes(f.create_group(f"nodes/{area.name}"), area, i, names)
        spikes = f.create_group(f"spikes/{area.name}")
        spikes.attrs.create("sorting", 2, dtype=SORTING)
        _growing(spikes, "timestamps", np.float64, chunk=EVENT_CHUNK).attrs["units"] = "ms"
        _growing(spikes, "node_ids", np.uint64, chunk=EVENT_CHUNK)
        group = top.create_group(f"areas/{area.name}")
        _growing(
            group, "counts", count_dtype, (area.num_units,), trials_per_chunk,
            compression="gzip", compression_opts=1, shuffle=count_dtype != np.uint8,
        )  # fmt: skip
        group.create_dataset("spike_index", data=np.zeros(1, np.uint64), maxshape=(None,))
        if len(area.membrane_units):
            _create_report(f.create_group(f"report/{area.name}"), area, meta)


def _create_nodes(g: h5py.Group, area: AreaNodes, index: int, names: list[str]) -> None:
    n = area.num_units
    c, h, w = area.shape
    g.attrs.update(
        {
            "shape": np.asarray(area.shape, dtype=np.int64),
            "side_mm": area.side_mm,
            "neighbourhood_mm": area.neighbourhood_mm,
            "layout": area.layout,
            "optimized": bool(area.optimized),
        }
    )
    g["node_id"] = np.arange(n, dtype=np.uint64)
    g["node_type_id"] = np.zeros(n, dtype=np.int64)
    g["node_group_id"] = np.zeros(n, dtype=np.uint32)
    g["node_group_index"] = np.arange(n, dtype=np.uint64)
    g0 = g.create_group("0")
    um = np.asarray(area.positions_mm, dtype=np.float32) * np.float32(1000.0)
    for key, column in (("x", um[:, 0]), ("y", um[:, 1]), ("z", np.zeros(n, np.float32))):
        g0.create_dataset(key, data=column).attrs["units"] = "um"
    channel, rest = np.divmod(np.arange(n), h * w)
    row, col = np.divmod(rest, w)
    for key, column in (("channel", channel), ("row", row), ("col", col)):
        g0[key] = column.astype(np.int32)
    strings = h5py.string_dtype()
    g0["area"] = np.full(n, index, dtype=np.uint8)
    g0["model_type"] = np.zeros(n, dtype=np.uint8)
    g0.create_dataset("@library/area", data=np.array(names, dtype=object), dtype=strings)
    g0.create_dataset("@library/model_type", data=np.array(["point_neuron"], object), dtype=strings)


def _create_report(g: h5py.Group, area: AreaNodes, meta: RecordingMeta) -> None:
    k = len(area.membrane_units)
    rows = max(1, min(1024, (1 << 20) // (4 * k)))
    data = _growing(g, "data", np.float32, (k,), rows)
    data.attrs["units"] = "a.u."  # the model's dimensionless potential; threshold below
    data.attrs["v_threshold"] = meta.v_threshold
    m = g.create_group("mapping")
    m.create_dataset("node_ids", data=area.membrane_units.astype(np.uint64)).attrs["sorted"] = (
        np.uint8(1)
    )
    m["index_pointers"] = np.arange(k + 1, dtype=np.uint64)
    m["index_pointer"] = m["index_pointers"]  # hard link: bmtk reads the singular name
    m["element_ids"] = np.zeros(k, dtype=np.uint32)
    m["element_pos"] = np.full(k, 0.5, dtype=np.float32)
    m.create_dataset("time", data=np.array([0.0, 0.0, meta.dt_ms])).attrs["units"] = "ms"


# --------------------------------------------------------------------------- reader
