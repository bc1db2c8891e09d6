"""The reader of the recording file (:mod:`tdsnn.record.hdf5` describes its layout): a
lazy view of one recording, complete, interrupted or still being written."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import h5py
import numpy as np

from tdsnn.errors import ConfigError, RecordingError
from tdsnn.errors import one_line as _one_line
from tdsnn.record.hdf5 import FORMAT, READ_BLOCK, READ_VERSIONS, STATES
from tdsnn.record.model import AreaBatch, AreaNodes, RecordingMeta, TrialBatch

__all__ = ["IncompleteRecordingWarning", "Recording", "open_recording"]


class IncompleteRecordingWarning(UserWarning):
    """The recording was interrupted; it holds the trials completed before that."""


# --------------------------------------------------------------------------- writer


def open_recording(path: str | Path) -> Recording:
    """Open a tdsnn recording for reading (see :class:`Recording`)."""
    return Recording(path)


class Recording:
    """A recording on disk, read lazily: nothing is loaded until asked for.

    ``meta`` is the :class:`RecordingMeta` the writer was given; ``num_trials`` the trials
    completed (all of them unless the recording was interrupted, which opening it warns about
    with :class:`IncompleteRecordingWarning`). ``state``: ``complete``, ``interrupted``,
    ``killed`` (its writer died), or ``writing`` (its writer is still at work on this host: the
    trials committed when it was opened, read in SWMR mode; open it again for more). Use as a
    context manager, or call :meth:`close`.

    Raises:
        RecordingError: the file is missing, not a tdsnn recording, truncated or corrupt.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file, self._closed_cleanly = _open_h5(self.path)
        try:
            self._read_header()
        except RecordingError:
            self.file.close()
            raise
        except (KeyError, OSError, ValueError, TypeError) as exc:
            self.file.close()
            raise RecordingError(
                f"{self.path} is a corrupt tdsnn recording ({_one_line(exc)})"
            ) from exc
        if self.state == "writing":
            warnings.warn(
                f"{self.path}: recording still being written: {self.num_trials} of "
                f"{self.total_trials} trials committed; reading those",
                IncompleteRecordingWarning,
                stacklevel=2,
            )
        elif not self.complete:
            warnings.warn(
                f"{self.path}: the recording was {self.state} after {self.num_trials} of "
                f"{self.total_trials} trials; it holds the trials completed so far",
                IncompleteRecordingWarning,
                stacklevel=2,
            )

    def _read_header(self) -> None:
        f = self.file
        if "tdsnn" not in f or f["tdsnn"].attrs.get("format") != FORMAT:
            raise RecordingError(f"{self.path} is an HDF5 file but not a tdsnn recording")
        attrs = f["tdsnn"].attrs
        version = int(attrs["format_version"])
        if version not in READ_VERSIONS:
            raise RecordingError(
                f"{self.path} is a tdsnn recording of format version {version}; this tdsnn "
                f"reads versions {', '.join(map(str, READ_VERSIONS))}"
            )
        trials, state = (int(v) for v in f["tdsnn/status"][()])
        self.num_trials = trials
        if self._closed_cleanly:
            self.state = STATES[state]
        else:  # open for writing: by a writer still at work, or one that was killed
            self.state = "writing" if _writer_alive(f.attrs.get("writer")) else "killed"
        self.total_trials = int(attrs["total_trials"])
        stimuli = {key: ds[()] for key, ds in f["tdsnn/stimuli"].items()}
        areas = tuple(self._read_area(name) for name in json.loads(attrs["areas"]))
        self.meta = RecordingMeta(
            areas=areas,
            timesteps=int(attrs["timesteps"]),
            dt_ms=float(attrs["dt_ms"]),
            stimuli_kind=str(attrs["stimuli_kind"]),
            stimuli=stimuli,
            class_names=tuple(json.loads(attrs["class_names"])),
            config=json.loads(attrs["config"]),
            source=json.loads(attrs["source"]),
            versions=json.loads(attrs["versions"]),
            v_threshold=float(attrs["v_threshold"]),
            responses=str(attrs.get("responses", "spikes")),
        )
        self._check_sizes()

    def _read_area(self, name: str) -> AreaNodes:
        g = self.file["nodes"][name]
        x, y = g["0/x"][()], g["0/y"][()]
        report = self.file.get(f"report/{name}/mapping/node_ids")
        units = np.zeros(0, np.int64) if report is None else report[()].astype(np.int64)
        return AreaNodes(
            name=name,
            shape=tuple(int(s) for s in g.attrs["shape"]),
            positions_mm=(np.stack([x, y], axis=1).astype(np.float64) / 1000.0),
            side_mm=float(g.attrs["side_mm"]),
            neighbourhood_mm=float(g.attrs["neighbourhood_mm"]),
            layout=str(g.attrs["layout"]),
            optimized=bool(g.attrs["optimized"]),
            membrane_units=units,
        )

    def _check_sizes(self) -> None:
        """Every dataset holds at least the completed trials (a killed writer may leave more)."""
        n, t = self.num_trials, self.meta.timesteps
        problems = []
        for key in ("stimulus_index", "start_ms", "stop_ms"):
            if len(self.file["tdsnn/trials"][key]) < n:
                problems.append(f"tdsnn/trials/{key}")
        self._spike_index = {}
        for area in self.meta.areas:
            group = self.file["tdsnn/areas"][area.name]
            index = group["spike_index"]
            if len(index) < n + 1 or group["counts"].shape != (
                len(group["counts"]),
                area.num_units,
            ):
                problems.append(f"tdsnn/areas/{area.name}")
                continue
            self._spike_index[area.name] = index[: n + 1].astype(np.int64)
            events = int(self._spike_index[area.name][-1])
            spikes = self.file["spikes"][area.name]
            if len(group["counts"]) < n or any(len(spikes[k]) < events for k in spikes):
                problems.append(f"spikes/{area.name}")
            if len(area.membrane_units) and len(self.file["report"][area.name]["data"]) < n * t:
                problems.append(f"report/{area.name}")
        if problems:
            raise RecordingError(
                f"{self.path} is truncated: {', '.join(problems)} hold(s) fewer rows than the "
                f"{n} completed trials need"
            )

    def refresh(self) -> int:
        """Read again a recording that was being written when it was opened (SWMR): the
        trials committed since then become readable. Returns :attr:`num_trials`."""
        if self._closed_cleanly:
            return self.num_trials

        def refresh(_: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                obj.refresh()

        self.file.visititems(refresh)
        status = self.file["tdsnn/status"]
        status.refresh()
        trials, state = (int(v) for v in status[()])
        self.num_trials = trials
        if not _writer_alive(self.file.attrs.get("writer")):
            self.state = STATES[state] if state else "killed"
        self._check_sizes()
        return trials

    # ----------------------------------------------------------------- what is in it

    @property
    def complete(self) -> bool:
        return self.state == "complete" and self.num_trials == self.total_trials

    @property
    def areas(self) -> tuple[str, ...]:
        return tuple(area.name for area in self.meta.areas)

    def area(self, name: str) -> AreaNodes:
        """The recorded area ``name`` (case-insensitive)."""
        spelled = {area.lower(): area for area in self.areas}
        if str(name).lower() not in spelled:
            raise ConfigError(
                f"area {name!r} is not in recording {self.path} (areas: {', '.join(self.areas)})"
            )
        return self.meta.area(spelled[str(name).lower()])

    def positions(self, area: str) -> np.ndarray:
        """``float64 [N, 2]`` sheet positions ``(x, y)`` of the area's units, mm."""
        return self.area(area).positions_mm

    @property
    def trials(self) -> dict[str, np.ndarray]:
        """The trial table, ``[num_trials]`` columns: ``stimulus_index``, ``start_ms``,
        ``stop_ms`` and the stimulus's parameters (``label``, ``orientation_deg``, ...)."""
        n = self.num_trials
        table = {key: ds[:n] for key, ds in self.file["tdsnn/trials"].items()}
        stimulus = table["stimulus_index"]
        return table | {key: column[stimulus] for key, column in self.meta.stimuli.items()}

    def _trial_range(self, trials: slice | int | None) -> tuple[int, int]:
        if trials is None:
            return 0, self.num_trials
        if isinstance(trials, slice):
            start, stop, step = trials.indices(self.num_trials)
            if step != 1:
                raise ConfigError("trial ranges must be contiguous (step 1)")
            return start, max(start, stop)
        k = int(trials)
        if not 0 <= k < self.num_trials:
            raise ConfigError(f"trial {k} is not in 0 .. {self.num_trials - 1}")
        return k, k + 1

    # ----------------------------------------------------------------- activity

    @property
    def rates(self) -> bool:
        """Whether the recording holds ReLU activations (``rates``), not spikes."""
        return self.meta.responses == "rates"

    def _spiking_only(self, what: str) -> None:
        if self.rates:
            raise RecordingError(
                f"{self.path} records ReLU units (--neuron relu): it holds activations, not "
                f"{what}; read them with counts()"
            )

    def counts(self, area: str, trials: slice | int | None = None) -> np.ndarray:
        """``[n_trials, N]`` spikes per unit per trial (uint8; uint16 when T > 255), or the
        activations of a recording of ReLU units (float32), for a trial range (default all)."""
        name = self.area(area).name
        lo, hi = self._trial_range(trials)
        return self.file["tdsnn/areas"][name]["counts"][lo:hi]

    def spikes(self, area: str, trials: slice | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps_ms float64 [n], node_ids uint64 [n])`` of a range of trials, by time."""
        self._spiking_only("spike trains")
        name = self.area(area).name
        lo, hi = self._trial_range(trials)
        index = self._spike_index[name]
        a, b = int(index[lo]), int(index[hi])
        g = self.file["spikes"][name]
        return g["timestamps"][a:b], g["node_ids"][a:b]

    def unit_spikes(self, area: str, unit: int) -> np.ndarray:
        """``float64 [n]`` every spike time (ms) of one unit, read a block at a time."""
        self._spiking_only("spike trains")
        nodes = self.area(area)
        if not 0 <= int(unit) < nodes.num_units:
            raise ConfigError(f"unit {unit} is not in {nodes.name}'s 0 .. {nodes.num_units - 1}")
        g = self.file["spikes"][nodes.name]
        end = int(self._spike_index[nodes.name][-1])
        found = []
        for a in range(0, end, READ_BLOCK):
            b = min(a + READ_BLOCK, end)
            ids = g["node_ids"][a:b]
            hit = np.flatnonzero(ids == np.uint64(unit))
            if len(hit):
                found.append(g["timestamps"][a:b][hit])
        return np.concatenate(found) if found else np.zeros(0)

    def membrane(self, area: str, trials: slice | int | None = None) -> np.ndarray:
        """``float32 [n_trials·T, n_rec]`` membrane potentials of ``area(...).membrane_units``."""
        nodes = self.area(area)
        if self.rates:
            raise ConfigError(
                f"{self.path} records ReLU units (--neuron relu), which have no membrane potential"
            )
        if not len(nodes.membrane_units):
            raise ConfigError(
                f"recording {self.path} holds no membrane traces of {nodes.name}; record with "
                "--membrane"
            )
        lo, hi = self._trial_range(trials)
        t = self.meta.timesteps
        return self.file["report"][nodes.name]["data"][lo * t : hi * t]

    def batches(self, trials_per_batch: int = 256):
        """The recording as the :class:`TrialBatch` objects it was written from."""
        for lo in range(0, self.num_trials, trials_per_batch):
            hi = min(lo + trials_per_batch, self.num_trials)
            areas = {}
            for area in self.meta.areas:
                if self.rates:  # activations only
                    timestamps, node_ids = np.zeros(0), np.zeros(0, np.uint64)
                else:
                    timestamps, node_ids = self.spikes(area.name, slice(lo, hi))
                membrane = (
                    self.membrane(area.name, slice(lo, hi)) if len(area.membrane_units) else None
                )
                areas[area.name] = AreaBatch(
                    timestamps, node_ids, self.counts(area.name, slice(lo, hi)), membrane
                )
            stimulus = self.file["tdsnn/trials/stimulus_index"][lo:hi]
            yield TrialBatch(lo, stimulus, areas)

    # ----------------------------------------------------------------- file

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Recording({str(self.path)!r}, areas={list(self.areas)}, trials={self.num_trials}, "
            f"state={self.state!r})"
        )


def _writer_alive(writer: str | None) -> bool:
    """Whether the writer process named by the file's ``writer`` attribute (its process id
    and host) is still running on this host."""
    if not writer:
        return False
    info = json.loads(writer)
    if info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _open_h5(path: Path) -> tuple[h5py.File, bool]:
    """Open ``path`` read-only: ``(file, closed_cleanly)``. A file whose writer was killed
    (not closed cleanly) is opened in SWMR read mode, which sees the state of its last flush."""
    if not path.exists():
        raise RecordingError(f"recording {path} does not exist")
    if path.is_dir():
        raise RecordingError(f"recording {path} is a folder, not a file")
    if not h5py.is_hdf5(path):
        raise RecordingError(f"{path} is not an HDF5 file (not a tdsnn recording)")
    try:
        return h5py.File(path, "r"), True
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise RecordingError(f"{path} is truncated or corrupt ({_one_line(exc)})") from exc
    try:
        return h5py.File(path, "r", swmr=True), False
    except OSError as exc:
        raise RecordingError(f"{path} is truncated or corrupt ({_one_line(exc)})") from exc
