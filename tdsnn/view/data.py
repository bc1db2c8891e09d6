"""What the viewer shows, computed from recordings (read only through :mod:`tdsnn.record`).

Maps come from the analysis functions, so they are the numbers ``tdsnn analyze`` reports:

- ``orientation``, ``selectivity`` and ``frequency``: :func:`tdsnn.analysis.topography.unit_tuning`
  (each unit's preference, 1 − circular variance and best spatial frequency, taken at that
  frequency among those its receptive field resolves);
- ``rate``: mean response per trial (spikes, or a ReLU unit's activation), averaged over stimuli;
- ``t``: :func:`tdsnn.analysis.maps.category_selectivity` Welch t on single trials, ``[K, N]``.

Spikes travel to the page as bits: ``uint8 [trials, T, ceil(N/8)]`` (``numpy.packbits``,
little bit order), a unit's bit at step t of trial k being ``bits[k, t, u >> 3] >> (u & 7) & 1``.
For 23 k units, 256 trials and T = 4 that is 2.9 MB, a quarter of the per-trial counts at 8 bits.
"""

from __future__ import annotations

import numpy as np

from tdsnn.analysis import maps
from tdsnn.analysis.topography import stimulus_responses, unit_tuning
from tdsnn.record import Recording

__all__ = [
    "area_maps",
    "map_keys",
    "manifest_entry",
    "region_responses",
    "spike_bits",
    "trial_bits",
    "unit_activity",
]

TRIAL_BLOCK = 64  # trials read at a time when packing spikes


def area_maps(rec: Recording, area: str) -> dict[str, np.ndarray]:
    """Per-unit maps of one area, float32: ``x``, ``y`` (mm, ``[N]``), ``rate`` and, where the
    stimuli allow, ``orientation``, ``selectivity``, ``frequency`` (``[N]``) and ``t``
    (``[K·N]``, category-major)."""
    nodes = rec.area(area)
    responses, table = stimulus_responses(rec, nodes.name)
    out = {
        "x": nodes.positions_mm[:, 0],
        "y": nodes.positions_mm[:, 1],
        "rate": responses.mean(axis=0),
    }
    orientation = table.get("orientation_deg", np.array([np.nan]))
    grating = np.isfinite(orientation)
    if grating.any():
        tuning = unit_tuning(rec, nodes.name, responses, table)
        out["orientation"], out["selectivity"] = tuning["preferred"], tuning["selectivity"]
        out["frequency"] = tuning["best_frequency"]
    labels = rec.trials["label"]
    if (labels >= 0).any():
        keep = labels >= 0
        k = max(len(rec.meta.class_names), int(labels.max()) + 1)
        counts = rec.counts(nodes.name).astype(np.float32)
        out["t"] = maps.category_selectivity(counts[keep], labels[keep], k)["t"].reshape(-1)
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in out.items()}


def map_keys(rec: Recording) -> list[str]:
    """The maps :func:`area_maps` returns for ``rec``, known from its trial table alone."""
    trials = rec.trials
    keys = ["rate", "x", "y"]
    if np.isfinite(trials.get("orientation_deg", np.array([np.nan]))).any():
        keys += ["frequency", "orientation", "selectivity"]
    if (trials["label"] >= 0).any():
        keys.append("t")
    return sorted(keys)


def _bit_rows(timestamps_ms: np.ndarray, node_ids: np.ndarray, rec: Recording, first: int):
    """``(row, unit)`` of spikes: row = (trial − first)·T + step."""
    steps = np.rint(timestamps_ms / rec.meta.dt_ms).astype(np.int64)
    return steps - first * rec.meta.timesteps, node_ids.astype(np.int64)


def spike_bits(rec: Recording, area: str) -> np.ndarray:
    """Every spike of ``area`` as bits: ``uint8 [trials, T, ceil(N/8)]`` (module docstring)."""
    nodes = rec.area(area)
    t, n = rec.meta.timesteps, nodes.num_units
    out = np.zeros((rec.num_trials, t, (n + 7) // 8), dtype=np.uint8)
    for lo in range(0, rec.num_trials, TRIAL_BLOCK):
        hi = min(lo + TRIAL_BLOCK, rec.num_trials)
        raster = np.zeros(((hi - lo) * t, n), dtype=bool)
        row, unit = _bit_rows(*rec.spikes(nodes.name, slice(lo, hi)), rec, lo)
        raster[row, unit] = True
        out[lo:hi] = np.packbits(raster, axis=1, bitorder="little").reshape(hi - lo, t, -1)
    return out


def trial_bits(rec: Recording, area: str, trial: int) -> np.ndarray:
    """The spikes of one trial: ``uint8 [T, ceil(N/8)]``, bits as in :func:`spike_bits`."""
    n = rec.area(area).num_units
    raster = np.zeros((rec.meta.timesteps, n), dtype=bool)
    row, unit = _bit_rows(*rec.spikes(area, int(trial)), rec, int(trial))
    raster[row, unit] = True
    return np.packbits(raster, axis=1, bitorder="little")


def unit_activity(rec: Recording, area: str, unit: int) -> dict:
    """One unit: ``counts`` ``[trials]`` (responses per trial) and, for spiking units,
    ``raster`` ``[trials·T]`` of 0/1 (trial-major), as lists."""
    nodes = rec.area(area)
    counts = rec.counts(nodes.name)[:, int(unit)].astype(np.float64)
    out: dict = {"counts": counts.tolist(), "raster": None}
    if not rec.rates:
        steps = np.rint(rec.unit_spikes(nodes.name, int(unit)) / rec.meta.dt_ms).astype(np.int64)
        raster = np.zeros(rec.num_trials * rec.meta.timesteps, dtype=np.int64)
        raster[steps[steps < len(raster)]] = 1
        out["raster"] = raster.tolist()
    return out


def region_responses(rec: Recording, area: str, box_mm: tuple[float, ...]) -> dict:
    """Mean response per trial of the units inside ``box_mm = (x0, y0, x1, y1)``:
    ``{"units": n, "mean": [trials]}`` (an empty box gives zeros)."""
    positions = rec.positions(area)
    x0, y0, x1, y1 = box_mm
    inside = np.flatnonzero(
        (positions[:, 0] >= min(x0, x1))
        & (positions[:, 0] <= max(x0, x1))
        & (positions[:, 1] >= min(y0, y1))
        & (positions[:, 1] <= max(y0, y1))
    )
    mean = np.zeros(rec.num_trials)
    if len(inside):
        mean = rec.counts(area)[:, inside].astype(np.float64).mean(axis=1)
    return {"units": int(len(inside)), "mean": mean.tolist()}


def _column(values: np.ndarray) -> list:
    """A table column as JSON (NaN as null)."""
    return [None if isinstance(v, float) and not np.isfinite(v) else v for v in values.tolist()]


def manifest_entry(rec: Recording, label: str) -> dict:
    """What the page needs to know about a recording, JSON-ready (no per-unit arrays)."""
    trials = rec.trials
    stimuli = {key: _column(np.asarray(col)) for key, col in rec.meta.stimuli.items()}
    areas = []
    for nodes in rec.meta.areas:
        areas.append(
            {
                "name": nodes.name,
                "shape": list(nodes.shape),
                "units": nodes.num_units,
                "side_mm": nodes.side_mm,
                "layout": nodes.layout,
            }
        )
    return {
        "label": label,
        "file": rec.path.name,
        "state": rec.state,
        "complete": rec.complete,
        "trials": rec.num_trials,
        "total_trials": rec.total_trials,
        "timesteps": rec.meta.timesteps,
        "dt_ms": rec.meta.dt_ms,
        "stimuli_kind": rec.meta.stimuli_kind,
        "responses": rec.meta.responses,
        "class_names": list(rec.meta.class_names),
        "stimuli": stimuli,
        "stimulus_index": trials["stimulus_index"].astype(np.int64).tolist(),
        "areas": areas,
    }
