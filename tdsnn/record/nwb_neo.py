"""Exports of a recording for the electrophysiology tool chain (``tdsnn export``).

- NWB (pynwb): a ``Subject`` describing the model (:func:`nwb_subject`: id = the run's name,
  in-silico species, sex and age marked as not applicable), an experiment description and
  keywords, so that ``nwbinspector`` (the validator DANDI runs) finds no critical or
  best-practice-violation issue; a ``Units`` table with one row per unit of every area, spike
  times in seconds (ascending) and the columns ``area``, ``node_id``, ``channel``, ``row``, ``col``,
  ``sheet_x_um``, ``sheet_y_um``; the trial table as NWB ``trials`` (stimulus parameters as
  columns); membrane traces as one ``TimeSeries`` per area in ``acquisition``.
- neo: one ``Block`` with one ``Segment`` spanning the recording, one ``SpikeTrain`` per unit
  (annotated with the same columns) and the trials as an ``Epoch`` (:func:`neo_block`, in
  memory, for elephant), written with neo's ``PickleIO`` (``.pkl``; read it back with
  ``neo.io.PickleIO(path).read_block()``). neo's NIX writer stores every train as objects of
  its own: about 50 kB and 0.1 s per unit, too slow for whole areas.

Both keep every spike. They need the ``export`` extra (``pip install tdsnn[export]``).
Recordings of ReLU units hold activations, not spike trains: both formats refuse them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tdsnn.errors import ConfigError, import_optional
from tdsnn.record.reader import Recording
from tdsnn.record.recorder import check_output

__all__ = [
    "EXPORT_FORMATS",
    "IN_SILICO_SPECIES",
    "export_recording",
    "neo_block",
    "nwb_subject",
    "to_neo",
    "to_nwb",
    "unit_table",
]

EXPORT_FORMATS = ("nwb", "neo")
UNIT_COLUMNS = {
    "area": "visual area of the unit",
    "node_id": "index of the unit in its area (c*H*W + h*W + w), the SONATA node_id",
    "channel": "feature-map channel c",
    "row": "feature-map row h",
    "col": "feature-map column w",
    "sheet_x_um": "x position on the area's cortical sheet (um)",
    "sheet_y_um": "y position on the area's cortical sheet (um)",
}


def _require(module: str, what: str):
    return import_optional(module, "export", what)


def unit_table(recording: Recording) -> dict[str, np.ndarray]:
    """Every unit of every area, in area order then node id: the :data:`UNIT_COLUMNS`."""
    columns: dict[str, list] = {key: [] for key in UNIT_COLUMNS}
    for area in recording.meta.areas:
        n = area.num_units
        _, h, w = area.shape
        channel, rest = np.divmod(np.arange(n), h * w)
        row, col = np.divmod(rest, w)
        for key, value in (
            ("area", np.full(n, area.name, dtype=object)),
            ("node_id", np.arange(n)),
            ("channel", channel),
            ("row", row),
            ("col", col),
            ("sheet_x_um", area.positions_mm[:, 0] * 1000.0),
            ("sheet_y_um", area.positions_mm[:, 1] * 1000.0),
        ):
            columns[key].append(value)
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def _spikes_by_unit(recording: Recording, area: str) -> tuple[np.ndarray, np.ndarray]:
    """``(times_ms [n], ends [N])``: the area's spikes grouped by unit, ascending within a
    unit; unit u's spikes are ``times_ms[ends[u-1]:ends[u]]``."""
    timestamps, node_ids = recording.spikes(area)
    order = np.argsort(node_ids, kind="stable")  # stable: times stay ascending per unit
    counts = np.bincount(node_ids.astype(np.int64), minlength=recording.area(area).num_units)
    return timestamps[order], np.cumsum(counts)


def _duration_ms(recording: Recording) -> float:
    return recording.num_trials * recording.meta.timesteps * recording.meta.dt_ms


def _description(recording: Recording) -> str:
    meta = recording.meta
    return (
        f"tdsnn recording of {meta.source.get('run_dir', '?')}: {recording.num_trials} trials of "
        f"{meta.stimuli_kind} probes, {meta.timesteps} steps of {meta.dt_ms} ms each; areas "
        f"{', '.join(recording.areas)}"
    )


# NCBI Taxonomy's "synthetic construct": the species form nwbinspector accepts (a Latin binomial
# or an NCBITaxon IRI) for a subject that is no organism.
IN_SILICO_SPECIES = "http://purl.obolibrary.org/obo/NCBITaxon_32630"


def run_name(recording: Recording) -> str:
    """The name of the run directory the recording's model came from (the NWB subject id)."""
    run_dir = str(recording.meta.source.get("run_dir") or "unknown-run")
    return Path(run_dir).name.replace("/", "-") or "unknown-run"


def nwb_subject(recording: Recording):
    """The model as an NWB ``Subject``: id = the run's name, species NCBI's "synthetic
    construct", sex ``O`` (other: not applicable) and age ``P0D/`` (the ISO 8601 open range NWB
    uses for an age it cannot state); the description says what the network is."""
    from pynwb.file import Subject

    meta = recording.meta
    model = meta.config.get("model", {})
    data = meta.config.get("data", {})
    topo = meta.config.get("topo", {})
    return Subject(
        subject_id=run_name(recording),
        description=(
            f"In-silico subject: a simulated topographic spiking neural network (tdsnn), not an "
            f"animal. Area stack {model.get('area_stack', '?')} of {model.get('neuron', 'lif')} "
            f"units (tau {model.get('tau', '?')} steps, threshold {meta.v_threshold}), trained on "
            f"{data.get('dataset', '?')} with topographic loss {topo.get('name', '?')}; "
            f"checkpoint {meta.source.get('checkpoint', '?')} of "
            f"{meta.source.get('run_dir', '?')}. "
            "Sex and age do not apply (given as O and the open range P0D/)."
        ),
        species=IN_SILICO_SPECIES,
        sex="O",
        age="P0D/",
    )


def _experiment_description(recording: Recording) -> str:
    meta = recording.meta
    return (
        f"Spike responses of the units of a simulated topographic deep spiking network (areas "
        f"{', '.join(recording.areas)} on model cortical sheets) to {meta.stimuli_kind} probe "
        "stimuli, recorded with tdsnn record; every unit's sheet position is a column of the "
        "units table. A simulation, not an animal experiment."
    )


def _keywords(recording: Recording) -> list[str]:
    return [
        "in silico",
        "simulation",
        "spiking neural network",
        "topographic",
        "ventral visual stream",
        "tdsnn",
        recording.meta.stimuli_kind,
        *recording.areas,
    ]


def to_nwb(recording: Recording, path: str | Path) -> Path:
    """Write ``recording`` as an NWB file (see the module docstring)."""
    _require("pynwb", "NWB export")
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, H5DataIO, NWBFile, TimeSeries
    from pynwb.misc import Units

    meta = recording.meta
    identifier = hashlib.sha256(str(recording.path.resolve()).encode()).hexdigest()[:32]
    nwb = NWBFile(
        session_description=_description(recording),
        identifier=identifier,
        session_start_time=datetime.fromtimestamp(recording.path.stat().st_mtime, timezone.utc),
        notes=json.dumps({"config": meta.config, "versions": meta.versions}),
        experiment_description=_experiment_description(recording),
        keywords=_keywords(recording),
        subject=nwb_subject(recording),
    )
    times, ends = [], []
    offset = 0
    for area in recording.areas:
        area_times, area_ends = _spikes_by_unit(recording, area)
        times.append(area_times / 1000.0)
        ends.append(area_ends + offset)
        offset += len(area_times)
    spike_times = VectorData(
        name="spike_times",
        description="spike times (s), ascending per unit",
        data=H5DataIO(np.concatenate(times), compression="gzip", shuffle=True),
    )
    spike_index = VectorIndex(
        name="spike_times_index", data=np.concatenate(ends), target=spike_times
    )
    table = unit_table(recording)
    columns = [spike_times, spike_index] + [
        VectorData(name=key, description=UNIT_COLUMNS[key], data=table[key].tolist())
        if key == "area"
        else VectorData(name=key, description=UNIT_COLUMNS[key], data=table[key])
        for key in UNIT_COLUMNS
    ]
    nwb.units = Units(
        name="units",
        description="units of the tdsnn area stack, area by area",
        columns=columns,
        resolution=meta.dt_ms / 1000.0,
    )
    trials = recording.trials
    for key in ("stimulus_index", "label", "orientation_deg", "cycles_per_image", "phase_deg"):
        nwb.add_trial_column(key, _TRIAL_COLUMNS[key])
    for k in range(recording.num_trials):
        nwb.add_trial(
            start_time=trials["start_ms"][k] / 1000.0,
            stop_time=trials["stop_ms"][k] / 1000.0,
            **{key: trials[key][k] for key in _TRIAL_COLUMNS},
        )
    for area in recording.meta.areas:
        if len(area.membrane_units):
            nwb.add_acquisition(
                TimeSeries(
                    name=f"membrane_{area.name}",
                    data=H5DataIO(recording.membrane(area.name), compression="gzip"),
                    unit="a.u.",
                    rate=1000.0 / meta.dt_ms,
                    starting_time=0.0,
                    description=(
                        f"membrane potential (dimensionless, threshold {meta.v_threshold}) of "
                        f"{len(area.membrane_units)} {area.name} units, one column each"
                    ),
                    comments=json.dumps({"node_ids": area.membrane_units.tolist()}),
                )
            )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return Path(path)


_TRIAL_COLUMNS = {
    "stimulus_index": "row of the stimulus table",
    "label": "class index of the stimulus (-1: none)",
    "orientation_deg": "grating orientation (deg; NaN: not a grating)",
    "cycles_per_image": "grating spatial frequency (cycles per image)",
    "phase_deg": "grating phase (deg)",
}


def neo_block(recording: Recording):
    """``recording`` as a neo ``Block`` (see the module docstring)."""
    neo = _require("neo", "neo export")
    import quantities as pq

    meta = recording.meta
    t_stop = _duration_ms(recording) * pq.ms
    segment = neo.Segment(name="recording", description=_description(recording))
    table = unit_table(recording)
    row = 0
    for area in recording.areas:
        times, ends = _spikes_by_unit(recording, area)
        starts = np.concatenate([[0], ends[:-1]])
        for unit, (a, b) in enumerate(zip(starts, ends, strict=True)):
            train = neo.SpikeTrain(
                times[a:b] * pq.ms,
                t_stop=t_stop,
                name=f"{area}:{unit}",
                sampling_rate=(1000.0 / meta.dt_ms) * pq.Hz,
                **{key: _plain(table[key][row]) for key in UNIT_COLUMNS},
            )
            train.segment = segment
            segment.spiketrains.append(train)
            row += 1
    trials = recording.trials
    segment.epochs.append(
        neo.Epoch(
            times=trials["start_ms"] * pq.ms,
            durations=(trials["stop_ms"] - trials["start_ms"]) * pq.ms,
            labels=np.asarray([f"trial {k}" for k in range(recording.num_trials)]),
            name="trials",
            array_annotations={key: trials[key] for key in _TRIAL_COLUMNS},
        )
    )
    block = neo.Block(
        name="tdsnn recording",
        description=_description(recording),
        session_start_time=datetime.fromtimestamp(recording.path.stat().st_mtime, timezone.utc),
    )
    block.segments.append(segment)
    segment.block = block
    return block


def to_neo(recording: Recording, path: str | Path):
    """Write ``recording`` as a pickled neo ``Block`` (``.pkl``) and return the block."""
    neo = _require("neo", "neo export")
    if Path(path).suffix.lower() != ".pkl":
        raise ConfigError(f"neo export writes a .pkl file (neo's PickleIO), got {path}")
    block = neo_block(recording)
    neo.io.PickleIO(str(path)).write_block(block)
    return block


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def export_recording(
    source: str | Path, fmt: str, out: str | Path, overwrite: bool = False
) -> Path:
    """``tdsnn export``: convert the recording ``source`` to ``fmt`` at ``out``.

    The export is written beside ``out`` and moved over it once complete, so an existing file
    is replaced only by a complete one (and only with ``overwrite``).
    """
    import os

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    check_output(out, overwrite)
    if fmt == "nwb":
        _require("pynwb", "NWB export")
    else:
        _require("neo", "neo export")
        if out.suffix.lower() != ".pkl":
            raise ConfigError(f"out {out}: neo export writes a .pkl file (neo's PickleIO)")
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")
    try:
        with Recording(source) as recording:
            if recording.rates:
                raise ConfigError(
                    f"{source} records ReLU units (activations, no spikes); NWB Units and neo "
                    "SpikeTrains hold spike trains: read its rates with tdsnn.record.open"
                )
            (to_nwb if fmt == "nwb" else to_neo)(recording, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
