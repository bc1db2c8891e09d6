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
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import tdsnn
from tdsnn.areas import spell_areas
from tdsnn.data import build_datasets
from tdsnn.data.probes import (
    PROBE_KINDS,
    ProbeSet,
    category_probes,
    dataset_probes,
    grating_probes,
    natural_probes,
)
from tdsnn.errors import ConfigError, RecordingError
from tdsnn.receptive import grating_frequencies
from tdsnn.record.hdf5 import IncompleteRecordingWarning, Recording, RecordingWriter
from tdsnn.record.model import AreaBatch, AreaNodes, RecordingMeta, TrialBatch
from tdsnn.rundir import TrainedRun, check_run_dir, checkpoint_file, load_run
from tdsnn.runtime import StopSignals

__all__ = ["RecordingInterrupted", "RecordResult", "area_batch", "build_probes", "record_run"]


class RecordingInterrupted(RecordingError):
    """Ctrl-C or SIGTERM stopped a recording; the file holds the trials completed before."""


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
    channels = trained.model.stem.conv.in_channels
    if kind == "gratings":
        freqs = grating_frequencies(trained.model, data.image_size)
        return grating_probes(data.image_size, channels=channels, cycles_per_image=freqs)
    if kind == "natural":
        return natural_probes(data.image_size, channels=channels)
    if kind not in PROBE_KINDS:
        raise ConfigError(f"--stimuli {kind!r} is not one of {', '.join(PROBE_KINDS)}")
    _, test, info = build_datasets(
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
    """``--out`` must be a file name in an existing folder, and new unless ``overwrite``."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise ConfigError(f"output file {out} exists; pass --overwrite to replace it")


def resume_source(out: Path) -> Path:
    """The interrupted recording that ``--resume`` continues: ``out.partial`` (an existing
    ``out`` was being replaced) or ``out`` itself; an error if there is none."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        return partial
    if not out.exists():
        raise ConfigError(
            f"--resume: there is no interrupted recording {out} (or {partial.name}); "
            "start one without --resume"
        )
    with _open_quietly(out) as rec:
        if rec.complete:
            raise ConfigError(f"--resume: {out} is complete; there is nothing to resume")
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
        ("--dt-ms", recorded.dt_ms, wanted.dt_ms),
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
            f"--areas {text!r}: {', '.join(a.lower() for a in unknown) or 'no area'} not in "
            f"this run's stack; choose from {','.join(a.lower() for a in available)}"
        )
    return tuple(a for a in available if a in found)


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
        RecordingInterrupted: stopped by Ctrl-C or SIGTERM (:class:`~tdsnn.runtime.StopSignals`)
            after the batch being written; the file written so far is kept and readable.
        ConfigError: ``resume`` with no interrupted recording, or one made with other options.
    """
    run_dir = check_run_dir(run_dir, must_exist=True)
    if not (run_dir / checkpoint_file(which)).is_file():
        raise RecordingError(
            f"run directory {run_dir} has no checkpoint {checkpoint_file(which)}; train it "
            f"first (tdsnn train --out {run_dir}; --keep-epochs keeps every epoch's)"
        )
    for name, value, low in (("--batch-size", batch_size, 1), ("--per-class", per_class, 1)):
        if not low <= value <= 1_000_000:
            raise ConfigError(f"{name} must be an integer in [{low}, 1000000], got {value}")
    if membrane_units is not None and membrane_units < 1:
        raise ConfigError(f"--membrane-units must be >= 1, got {membrane_units}")
    if not (dt_ms > 0 and np.isfinite(dt_ms)):
        raise ConfigError(f"--dt-ms must be a positive number, got {dt_ms}")
    out = Path(out)
    source = resume_source(out) if resume else None
    if source is not None:  # a new file beside the interrupted one, which stays until then
        target = source.with_name(source.name + ".resuming")
    else:  # an existing file is replaced only by a complete recording: write beside it
        check_output(out, overwrite)
        target = out.with_name(out.name + ".partial") if out.exists() else out
    trained = load_run(run_dir, which, device)
    if membrane_units and trained.config.model.neuron != "lif":
        raise ConfigError(
            f"--membrane: run {run_dir} has {trained.config.model.neuron} units, which have no "
            "membrane potential; record without --membrane"
        )
    chosen = parse_areas(areas, trained.model.area_names)
    probes = build_probes(stimuli, trained, data_root=data_root, per_class=per_class, limit=limit)
    meta = _run_meta(trained, run_dir, which, chosen, probes, membrane_units, dt_ms, seed)
    previous = _open_quietly(source) if source is not None else None
    if previous is not None:
        diff = _differences(previous.meta, meta)
        if diff:
            previous.close()
            raise ConfigError(
                f"--resume: {source} was recorded with another {', '.join(diff)}; repeat the "
                "options of the interrupted command, or record anew without --resume"
            )
    start = previous.num_trials if previous is not None else 0
    want_membrane = chosen if membrane_units else ()
    events = dict.fromkeys(chosen, 0)
    progress = tqdm(total=len(probes), initial=start, desc="recording", unit="trial", disable=quiet)
    done = start
    writer = None

    def store(output, indices: np.ndarray) -> None:
        """Spike tensors -> events -> file (in a worker thread, beside the next forward)."""
        nonlocal done
        first = int(indices[0])
        batch = {
            name: area_batch(
                output.spikes[name],
                first,
                dt_ms,
                output.membrane.get(name),
                meta.area(name).membrane_units,
                rates=meta.responses == "rates",
            )  # fmt: skip
            for name in chosen
        }
        writer.append(TrialBatch(first, indices, batch))
        for name, data in batch.items():
            events[name] += len(data.node_ids)
        done += len(indices)
        progress.update(len(indices))

    try:
        # leaving the block waits for the storer (its last batch) before closing the writer
        with (
            StopSignals() as stop,
            RecordingWriter(target, meta, len(probes), batch_size) as writer,
            ThreadPoolExecutor(max_workers=1) as storer,
        ):
            if previous is not None:
                with previous:  # the completed trials, as they were written
                    for batch in previous.batches(batch_size):
                        if stop.requested:
                            raise KeyboardInterrupt  # the stop below: committed trials kept
                        writer.append(batch)
                        for name, data in batch.areas.items():
                            events[name] += len(data.node_ids)
            stored = None
            for indices, images in probes.batches(batch_size, start=start):
                if stop.requested:  # leaving the block commits the batch in flight
                    raise KeyboardInterrupt
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1_000_003 + int(indices[0]))  # rate coding
                    output = trained.model(
                        images.to(device), record=chosen, record_membrane=want_membrane
                    )
                if stored is not None:
                    stored.result()  # one batch in flight: memory holds two
                stored = storer.submit(store, output, indices)
            if stored is not None:
                stored.result()
    except KeyboardInterrupt as exc:
        progress.close()
        kept = target
        if source is not None:  # the new file takes the old one's place if it holds more
            if writer is not None and writer.committed >= start:
                os.replace(target, source)
            else:
                target.unlink(missing_ok=True)
            kept = source
        unchanged = f"; {out} is unchanged" if kept != out else ""
        raise RecordingInterrupted(
            f"interrupted after {done} of {len(probes)} trials; {kept} holds them{unchanged} "
            "(continue with --resume)"
        ) from exc
    progress.close()
    if target != out:
        os.replace(target, out)
    if source is not None and source != out:
        source.unlink()
    return RecordResult(out, len(probes), events, meta.responses)
