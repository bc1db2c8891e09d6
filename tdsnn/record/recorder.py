"""Record a trained run's responses to probe stimuli (``tdsnn record``).

The model sees the probe set batch by batch; each batch's spikes (every unit of each chosen
area) and, optionally, the membrane potentials of a subset of units become one
:class:`~tdsnn.record.model.TrialBatch` for the :class:`~tdsnn.record.hdf5.RecordingWriter`.
Memory holds one batch at a time, whatever the number of trials.
A run of ReLU units (``model.neuron: relu``) gives each unit's activation per trial instead
(float32, ``RecordingMeta.responses = "rates"``); it has no membrane potential to record.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import tdsnn
from tdsnn.data import build_test_split
from tdsnn.data.probes import (
    PROBE_KINDS,
    ProbeSet,
    category_probes,
    dataset_probes,
    grating_probes,
    natural_probes,
)
from tdsnn.errors import ConfigError, DiskFullError, RecordingError, Stopped
from tdsnn.model_config import spell_areas
from tdsnn.receptive import grating_frequencies
from tdsnn.record.hdf5 import RecordingWriter
from tdsnn.record.model import AreaBatch, AreaNodes, RecordingMeta, TrialBatch
from tdsnn.record.options import RecordOptions
from tdsnn.record.reader import IncompleteRecordingWarning, Recording
from tdsnn.rundir import TrainedRun, check_run_dir, checkpoint_file, load_run
from tdsnn.runtime import StopSignals

__all__ = [
    "RecordOptions",
    "RecordResult",
    "area_batch",
    "build_probes",
    "record_run",
]


@dataclass(frozen=True)
class RecordResult:
    path: Path
    trials: int
    spikes: dict[str, int]  # spike events written per area (0 for ReLU units)
    responses: str = "spikes"  # "spikes", or "rates" for ReLU units (RecordingMeta.responses)


def build_probes(
    kind: str,
    trained: TrainedRun,
    *,
    data_root: str | None = None,
    per_class: int = 16,
    limit: int | None = None,
) -> ProbeSet:
    """The probe set ``kind`` (:data:`PROBE_KINDS`) at the run's input size and channels."""
    data = trained.config.data
    channels = trained.model.in_channels
    if kind == "gratings":
        freqs = grating_frequencies(trained.model, data.image_size)
        return grating_probes(data.image_size, channels=channels, cycles_per_image=freqs)
    if kind == "natural":
        return natural_probes(data.image_size, channels=channels)
    if kind not in PROBE_KINDS:
        raise ConfigError(f"stimuli {kind!r} is not one of {', '.join(PROBE_KINDS)}")
    test, info = build_test_split(
        data.dataset,
        data_root=data_root or data.data_root,
        image_size=data.image_size,
        seed=trained.config.run.seed,
        test_size=data.test_size,
    )
    if kind == "categories":
        return category_probes(test, info.class_names, per_class=per_class, channels=channels)
    return dataset_probes(test, info.class_names, limit=limit, channels=channels)


def choose_membrane_units(num_units: int, count: int, seed: int) -> np.ndarray:
    """``count`` units spread at random over an area (all when it has fewer), ascending."""
    if count >= num_units:
        return np.arange(num_units, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_units, size=count, replace=False)).astype(np.int64)


def area_batch(
    spikes: Tensor,
    first_trial: int,
    dt_ms: float,
    membrane: Tensor | None = None,
    units: np.ndarray | None = None,
    rates: bool = False,
) -> AreaBatch:
    """One area's ``spikes [T, B, C, H, W]`` (and ``membrane``, same shape) as an
    :class:`AreaBatch` of trials ``first_trial ..``: events in time order, per-trial counts,
    and the membrane of ``units``. With ``rates`` (ReLU units), the activations averaged over
    T as float32 ``[B, N]`` in place of the counts, and no events."""
    t, b = spikes.shape[:2]
    n = spikes[0, 0].numel()
    if rates:
        values = spikes.reshape(t, b, n).float().mean(0).cpu().numpy()
        return AreaBatch(np.zeros(0), np.zeros(0, np.uint64), values)
    raster = spikes.reshape(t, b, n).transpose(0, 1).to(torch.bool).contiguous().cpu().numpy()
    per_step = raster.reshape(b * t, n).sum(axis=1)  # events per (trial, step)
    flat = np.flatnonzero(raster)  # [B, T, N] row-major: ascending time
    node = flat - np.repeat(np.arange(b * t, dtype=np.int64) * n, per_step)
    step_ms = (np.arange(b * t) + first_trial * t).astype(np.float64) * dt_ms
    timestamps = np.repeat(step_ms, per_step)
    counts = raster.sum(axis=1, dtype=np.uint8 if t <= 255 else np.uint16)
    traces = None
    if membrane is not None and units is not None and len(units):
        picked = membrane.reshape(t, b, n)[:, :, torch.from_numpy(units).to(membrane.device)]
        traces = picked.transpose(0, 1).reshape(b * t, len(units)).float().cpu().numpy()
    return AreaBatch(timestamps, node.view(np.uint64), counts, traces)


def check_output(out: Path, overwrite: bool) -> None:
    """``out`` must be a file name in an existing folder, and new unless ``overwrite``."""
    if out.is_dir():
        raise ConfigError(f"out {out} is a folder; pass a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"out {out}: the folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise ConfigError(f"output file {out} exists; pass overwrite=True to replace it")


def resume_source(out: Path) -> Path:
    """The interrupted recording that ``resume`` continues: ``out.partial`` (an existing
    ``out`` was being replaced) or ``out`` itself; an error if there is none."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        return partial
    if not out.exists():
        raise ConfigError(
            f"resume: there is no interrupted recording {out} (or {partial.name}); "
            "start one with resume=False"
        )
    with _open_quietly(out) as rec:
        if rec.complete:
            raise ConfigError(f"resume: {out} is complete; there is nothing to resume")
    return out


def _open_quietly(path: Path) -> Recording:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteRecordingWarning)
        return Recording(path)


def _differences(recorded: RecordingMeta, wanted: RecordingMeta) -> list[str]:
    """What of ``wanted`` (this command's recording) differs from ``recorded`` (the file's)."""
    names = [a.name for a in recorded.areas], [a.name for a in wanted.areas]
    diff = []
    if names[0] != names[1]:
        return [f"areas ({','.join(names[0])} recorded, {','.join(names[1])} asked for)"]
    for old, new in zip(recorded.areas, wanted.areas, strict=True):
        if not np.array_equal(old.membrane_units, new.membrane_units):
            diff.append(f"{old.name} membrane units (--membrane, --membrane-units, --seed)")
        if old.shape != new.shape or not np.allclose(
            old.positions_mm, new.positions_mm, rtol=1e-5, atol=1e-6
        ):
            diff.append(f"{old.name} sheet (the run's sheets changed)")
    stimuli = recorded.stimuli_kind != wanted.stimuli_kind or set(recorded.stimuli) != set(
        wanted.stimuli
    )
    if stimuli or any(
        not np.array_equal(recorded.stimuli[k], wanted.stimuli[k], equal_nan=True)
        for k in wanted.stimuli
    ):
        diff.append(f"stimuli ({recorded.stimuli_kind} recorded, {wanted.stimuli_kind} asked for)")
    for label, a, b in (
        ("run directory or checkpoint", recorded.source, wanted.source),
        ("model config", recorded.config, wanted.config),
        ("dt_ms", recorded.dt_ms, wanted.dt_ms),
    ):
        if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):  # as the file stores them
            diff.append(label)
    return diff


def _run_meta(
    trained: TrainedRun, run_dir: Path, which: str | int, areas: tuple[str, ...], probes: ProbeSet,
    membrane_units: int | None, dt_ms: float, seed: int,
) -> RecordingMeta:  # fmt: skip
    nodes = []
    for i, name in enumerate(areas):
        sheet = trained.sheets[name]
        units = (
            choose_membrane_units(sheet.num_units, membrane_units, seed + i)
            if membrane_units
            else np.zeros(0, np.int64)
        )
        nodes.append(
            AreaNodes(
                name=name,
                shape=sheet.shape,
                positions_mm=sheet.positions.numpy(),
                side_mm=sheet.side_mm,
                neighbourhood_mm=sheet.neighbourhood_mm,
                layout=sheet.layout,
                optimized=sheet.optimized,
                membrane_units=units,
            )
        )
    model = trained.config.model
    return RecordingMeta(
        areas=tuple(nodes),
        timesteps=model.timesteps,
        dt_ms=dt_ms,
        stimuli_kind=probes.kind,
        stimuli=probes.params,
        class_names=probes.class_names,
        config=trained.config.to_dict(),
        source={"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint_file(which)},
        versions={
            "tdsnn": tdsnn.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "h5py": h5py.__version__,
            "python": platform.python_version(),
        },
        v_threshold=model.v_threshold,
        responses="rates" if model.neuron == "relu" else "spikes",
    )


def parse_areas(text: str | None, available: tuple[str, ...]) -> tuple[str, ...]:
    """``"v1,readout"`` -> ``("V1", "readout")`` in the stack's order and spelling (names
    match case-insensitively); ``None`` = every area."""
    if not text:
        return available
    found, unknown = spell_areas([a.strip() for a in text.split(",") if a.strip()], available)
    if unknown or not found:
        raise ConfigError(
            f"areas {text!r}: {', '.join(a.lower() for a in unknown) or 'no area'} not in "
            f"this run's stack; choose from {','.join(a.lower() for a in available)}"
        )
    return tuple(a for a in available if a in found)


@dataclass(frozen=True)
class _Target:
    """Where a recording goes: ``path`` is written, then moved to ``out``; ``source`` is the
    interrupted recording that ``--resume`` continues (``None`` for a new one)."""

    out: Path
    path: Path
    source: Path | None


def _choose_target(out: Path, overwrite: bool, resume: bool) -> _Target:
    """A new file beside the interrupted one (``.resuming``), which stays until then; beside
    an existing ``out`` (``.partial``), which only a complete recording replaces; or ``out``."""
    if resume:
        source = resume_source(out)
        return _Target(out, source.with_name(source.name + ".resuming"), source)
    check_output(out, overwrite)
    return _Target(out, out.with_name(out.name + ".partial") if out.exists() else out, None)


def _check_checkpoint(run_dir: str | Path, which: str | int) -> Path:
    run_dir = check_run_dir(run_dir, must_exist=True)
    if not (run_dir / checkpoint_file(which)).is_file():
        raise RecordingError(
            f"run directory {run_dir} has no checkpoint {checkpoint_file(which)}; train it "
            f"first (tdsnn train --out {run_dir}; --keep-epochs keeps every epoch's)"
        )
    return run_dir


def _open_previous(source: Path | None, meta: RecordingMeta) -> Recording | None:
    """The interrupted recording ``source``, open, once its options are checked to be
    ``meta``'s; closed again if they are not."""
    if source is None:
        return None
    previous = _open_quietly(source)
    diff = _differences(previous.meta, meta)
    if diff:
        previous.close()
        raise ConfigError(
            f"resume: {source} was recorded with another {', '.join(diff)}; repeat the "
            "options of the interrupted recording, or record anew with resume=False"
        )
    return previous


class _Progress:
    """Trials written and spike events per area, with the progress bar."""

    def __init__(self, areas: tuple[str, ...], start: int, total: int, quiet: bool) -> None:
        self.start = self.done = start
        self.events = dict.fromkeys(areas, 0)
        self.bar = tqdm(total=total, initial=start, desc="recording", unit="trial", disable=quiet)

    def add(self, batch: TrialBatch, new: bool = True) -> None:
        for name, data in batch.areas.items():
            self.events[name] += len(data.node_ids)
        if new:
            self.done += len(batch)
            self.bar.update(len(batch))


def _write_trials(
    writer: RecordingWriter, trained: TrainedRun, probes: ProbeSet, meta: RecordingMeta,
    previous: Recording | None, progress: _Progress, opts: RecordOptions, device: str,
    stop: StopSignals,
) -> None:  # fmt: skip
    """Copy ``previous``'s trials, then simulate and write the rest batch by batch: the model
    runs the next batch while a worker thread turns the last one into events and writes it.
    A stop request raises KeyboardInterrupt at the next batch boundary."""
    chosen = tuple(area.name for area in meta.areas)
    if previous is not None:
        for batch in previous.batches(opts.batch_size):  # as they were written
            if stop.requested:
                raise KeyboardInterrupt
            writer.append(batch)
            progress.add(batch, new=False)

    def store(output, indices: np.ndarray) -> None:
        first = int(indices[0])
        batch = TrialBatch(first, indices, {
            name: area_batch(
                output.spikes[name], first, meta.dt_ms, output.membrane.get(name),
                meta.area(name).membrane_units, rates=meta.responses == "rates",
            )
            for name in chosen
        })  # fmt: skip
        writer.append(batch)
        progress.add(batch)

    want_membrane = chosen if opts.membrane_units else ()
    # leaving the block waits for the storer (its last batch)
    with ThreadPoolExecutor(max_workers=1) as storer:
        stored = None
        for indices, images in probes.batches(opts.batch_size, start=progress.done):
            if stop.requested:  # leaving the writer's block commits the batch in flight
                raise KeyboardInterrupt
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(opts.seed * 1_000_003 + int(indices[0]))  # rate coding
                output = trained.model(
                    images.to(device), record=chosen, record_membrane=want_membrane
                )
            if stored is not None:
                stored.result()  # one batch in flight: memory holds two
            stored = storer.submit(store, output, indices)
        if stored is not None:
            stored.result()


def _keep_stopped(target: _Target, committed: int, start: int) -> Path:
    """After a stop or a full disk: the file that holds the committed trials. A resumed
    recording takes the old file's place if it holds at least as many trials."""
    if target.source is None:
        return target.path
    if committed >= start and target.path.exists():
        os.replace(target.path, target.source)
    else:
        target.path.unlink(missing_ok=True)
    return target.source


def _finish(target: _Target) -> None:
    """The complete recording takes ``out``'s place; the interrupted one it continued goes."""
    if target.path != target.out:
        os.replace(target.path, target.out)
    if target.source is not None and target.source != target.out:
        target.source.unlink()


def _record(
    target: _Target, trained: TrainedRun, probes: ProbeSet, meta: RecordingMeta,
    previous: Recording | None, progress: _Progress, opts: RecordOptions, device: str,
    stop: StopSignals,
) -> None:  # fmt: skip
    """Write the recording into ``target.path`` under the stop policy (``stop``); a stop or a
    full disk keeps the committed trials (:func:`_keep_stopped`) and ends in a one-line
    error."""
    writer = None
    try:
        with RecordingWriter(target.path, meta, len(probes), opts.batch_size) as writer:
            _write_trials(writer, trained, probes, meta, previous, progress, opts, device, stop)
    except KeyboardInterrupt as exc:
        committed = writer.committed if writer is not None else -1
        kept = _keep_stopped(target, committed, progress.start)
        unchanged = f"; {target.out} is unchanged" if kept != target.out else ""
        raise Stopped(
            f"interrupted after {progress.done} of {len(probes)} trials; {kept} holds "
            f"them{unchanged} (continue with resume=True)",
            path=kept,
            continue_with={"resume": True},
        ) from exc
    except DiskFullError as exc:
        if writer is None:  # the writer could not create its file: nothing was written
            raise
        kept = _keep_stopped(target, writer.committed, progress.start)
        unchanged = f"; {target.out} is unchanged" if kept != target.out else ""
        raise DiskFullError(
            f"{exc}; {kept} holds the trials committed so far{unchanged} "
            "(continue with resume=True)"
        ) from exc


def record_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    stimuli: str = "gratings",
    areas: str | None = None,
    membrane_units: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    data_root: str | None = None,
    per_class: int = 16,
    limit: int | None = None,
    dt_ms: float = 1.0,
    which: str | int = "best",
    seed: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    quiet: bool = False,
) -> RecordResult:
    """Record ``run_dir``'s responses to the probe set ``stimuli`` into ``out`` (HDF5).

    Args:
        areas: comma-separated areas to record (default every area of the stack).
        membrane_units: record the membrane potential of this many units per area (chosen at
            random from ``seed``; all units when the area has fewer); ``None``: no membrane.
        batch_size: trials simulated and written at a time (bounds the memory).
        dt_ms: length of one simulation step in the file's timestamps.
        overwrite: replace an existing ``out``; the new file is written beside it and moved
            over it only once complete.
        resume: continue the interrupted recording of ``out`` (``out.partial`` when it was
            replacing a file) made with the same options: its completed trials are copied
            into a new file, which goes on from the first missing trial and takes the old
            file's place (also when interrupted again, once it holds at least as many trials).

    Raises:
        Stopped: Ctrl-C or SIGTERM (:class:`~tdsnn.runtime.StopSignals`) stopped it after the
            batch being written; the file written so far (its ``path``) is kept and readable,
            and ``resume=True`` continues it.
        DiskFullError: the disk or the file-size limit is full; the committed trials are kept
            (and an existing ``out`` is unchanged), to continue with ``resume``.
        ConfigError: a size out of range (named as the parameter, e.g. ``batch_size``);
            ``resume`` with no interrupted recording, or one made with other options.
    """
    opts = RecordOptions(batch_size, per_class, membrane_units, limit, dt_ms, seed)
    # the stop policy from the start: a signal while the run loads stops before any trial
    with StopSignals() as stop:
        run_dir = _check_checkpoint(run_dir, which)
        target = _choose_target(Path(out), overwrite, resume)
        trained = load_run(run_dir, which, device)
        if membrane_units and trained.config.model.neuron != "lif":
            raise ConfigError(
                f"membrane potentials asked for, but run {run_dir} has "
                f"{trained.config.model.neuron} units, which have no membrane potential; record "
                "without them"
            )
        chosen = parse_areas(areas, trained.model.area_names)
        probes = build_probes(
            stimuli, trained, data_root=data_root, per_class=per_class, limit=limit
        )
        meta = _run_meta(trained, run_dir, which, chosen, probes, membrane_units, dt_ms, seed)
        with ExitStack() as stack:
            previous = _open_previous(target.source, meta)
            if previous is not None:
                stack.enter_context(previous)  # closed however the writer ends, or fails to open
            start = previous.num_trials if previous is not None else 0
            progress = _Progress(chosen, start, len(probes), quiet)
            stack.callback(progress.bar.close)
            _record(target, trained, probes, meta, previous, progress, opts, device, stop)
        _finish(target)
        return RecordResult(target.out, len(probes), progress.events, meta.responses)
