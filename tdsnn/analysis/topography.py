"""Topography metrics of a recording (DESIGN section 11), area by area.

:func:`analyze_recording` reads a recording only through :mod:`tdsnn.record` and returns, per
area, JSON-ready metrics plus the arrays the figures draw (:class:`AreaAnalysis`). The maths
lives in :mod:`tdsnn.analysis.maps`, on plain arrays.

Responses are spike counts per trial (activations for recordings of ReLU units), averaged
over the trials of each stimulus: ``[S, N]``.
Which metrics apply depends on the stimuli: tuning, orientation maps and pinwheels need
gratings (``orientation_deg`` in the stimulus table); category selectivity needs labels.
Correlation against distance and Moran's I of the response map apply to any recording,
synchrony to recordings of spiking units.

Orientation tuning is measured where the receptive field resolves it: each area's receptive
field comes from the recorded architecture (:mod:`tdsnn.receptive`); gratings coarser than one
cycle per receptive field (a luminance ramp across it) or finer than Nyquist are left out of
the choice of each unit's best spatial frequency, at which its preference and selectivity are
taken (:func:`tdsnn.analysis.maps.tuning_at_best_frequency`). Orientation maps hold every unit
at its own position, smoothed only by a Gaussian of stated width (``smooth_mm``; by default
:data:`SMOOTH_HYPERCOLUMNS` of the area's hypercolumn, the cell of one feature-map position);
pinwheels and the column spacing are measured on that map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tdsnn.analysis import maps, nulls
from tdsnn.errors import ConfigError
from tdsnn.receptive import border_units, receptive_field_px
from tdsnn.record import Recording
from tdsnn.topo.similarity import ccg_pairs, resolve_ccg_window

__all__ = [
    "EXPERT_DPRIME",
    "EXPERT_T",
    "SMOOTH_HYPERCOLUMNS",
    "AreaAnalysis",
    "analyze_recording",
    "map_units",
    "pinwheel_measure",
    "pinwheel_values",
    "stimulus_responses",
    "synchrony_vs_distance",
    "unit_tuning",
]

EXPERT_T = 3.0  # a unit is selective for a category when its t >= EXPERT_T ...
EXPERT_DPRIME = 1.0  # ... and its d' >= EXPERT_DPRIME (patches: smoothed t >= EXPERT_T)
MAP_PIXELS = 128  # most pixels per side of the resampled category t-maps
REACH_NEIGHBOURHOODS = 4  # distance curves span 4 neighbourhood widths (at most half the sheet)
MIN_PIXELS_PER_COLUMN = 4  # pinwheels: the map must resolve the column spacing ...
MIN_UNITS_PER_COLUMN = 20  # ... and hold this many units per column spacing squared
SMOOTH_HYPERCOLUMNS = 0.75  # default map kernel: Gaussian sigma = 0.75 hypercolumn widths
FINE_PIXELS_PER_SIGMA = 3  # the smoothed map's pixels: sigma / 3 ...
MAX_FINE_PIXELS = 768  # ... and at most this many per side
HISTOGRAM_BINS = 12  # orientation-preference histogram: 15 degree bins
MORAN_UNITS = 10_000  # units sampled for Moran's I (its neighbour pairs grow as N x density)
SYNCHRONY_UNITS = 1_500  # units sampled for r_CCG against distance
SYNCHRONY_TRIALS = 256  # trials read for r_CCG


@dataclass
class AreaAnalysis:
    """One area's metrics (``metrics``: JSON-ready numbers and curves), the maps that the
    figures draw (``arrays``: numpy arrays, not written to JSON), and ``positional``: the
    position-dependent metrics as functions of an order ``[N]`` (the unit whose values each
    position shows; :func:`tdsnn.analysis.nulls.permutation`) giving ``{name: value}``, which
    the nulls evaluate on surrogate orders."""

    area: str
    metrics: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    positional: list = field(default_factory=list)


def stimulus_responses(rec: Recording, area: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean response (spike count, or activation of ReLU units) of every unit to every
    stimulus shown: ``([S, N] float32, table)``, ``table`` holding the stimulus parameters of
    the S rows (DESIGN section 11)."""
    trials = rec.trials
    stimulus = trials["stimulus_index"]
    shown, row = np.unique(stimulus, return_inverse=True)
    n = rec.area(area).num_units
    sums = np.zeros((len(shown), n), dtype=np.float64)
    block = max(1, (1 << 24) // max(n, 1))  # ~16 MB of counts at a time
    for lo in range(0, rec.num_trials, block):
        counts = rec.counts(area, slice(lo, lo + block)).astype(np.float64)
        np.add.at(sums, row[lo : lo + len(counts)], counts)
    repeats = np.bincount(row, minlength=len(shown))[:, None]
    table = {key: column[shown] for key, column in rec.meta.stimuli.items()}
    return (sums / repeats).astype(np.float32), table


def map_pixels(nodes) -> int:
    """Pixels per side of an area's resampled maps: about two units' spacing per pixel
    (``sqrt(N) / 2``), between 16 and :data:`MAP_PIXELS`, so that pixels hold units."""
    return int(np.clip(np.sqrt(nodes.num_units) / 2, 16, MAP_PIXELS))


def reach_mm(nodes) -> float:
    """The distance range of the curves and smoothness: :data:`REACH_NEIGHBOURHOODS` times the
    area's neighbourhood width, at most half the sheet (mm)."""
    return min(REACH_NEIGHBOURHOODS * nodes.neighbourhood_mm, nodes.side_mm / 2)


def _curve(result: dict) -> dict:
    return {key: np.asarray(value).tolist() for key, value in result.items()}


def _nearest_vs_farthest(mean: np.ndarray) -> float:
    finite = np.asarray(mean)[np.isfinite(mean)]
    return float(finite[0] - finite[-1]) if len(finite) >= 2 else float("nan")


def map_units(rec: Recording, area: str, keep_border: bool = False) -> tuple[np.ndarray, str]:
    """The units of ``area`` that enter its map metrics, ``int64 [n]`` ascending, and a note:
    those whose receptive field (:func:`tdsnn.receptive.border_units`) stays inside the image,
    all of them with ``keep_border``, where every field overlaps the border, or where the
    recording does not say its architecture and image size."""
    nodes = rec.area(area)
    every = np.arange(nodes.num_units)
    if keep_border:
        return every, "border units kept (--keep-border)"
    image, _ = _geometry(rec, area)
    try:
        border = border_units(rec.meta.config or {}, nodes.name, nodes.shape, int(image or 0))
    except ConfigError:
        return every, "border units kept: the recording does not say its architecture"
    if image is None:
        return every, "border units kept: the recording does not say its image size"
    if border.all():
        return every, "every unit's receptive field overlaps the image border: all kept"
    return np.flatnonzero(~border), (
        f"{int(border.sum())} of {border.size} units left out of the map metrics: their "
        f"receptive field overlaps the image border (--keep-border keeps them)"
    )


def analyze_area(
    rec: Recording,
    area: str,
    *,
    seed: int = 0,
    smooth_mm: float | None = None,
    keep_border: bool = False,
) -> AreaAnalysis:
    """Every metric that applies to ``area`` of ``rec``; ``smooth_mm``: Gaussian sigma (mm) of
    the orientation map (0: none; default :data:`SMOOTH_HYPERCOLUMNS` hypercolumns). Units
    whose receptive field overlaps the image border are left out unless ``keep_border``
    (:func:`map_units`); ``arrays["map_positions"]`` holds the positions of those kept."""
    nodes = rec.area(area)
    out = AreaAnalysis(nodes.name)
    units, note = map_units(rec, area, keep_border)
    out.notes.append(note)
    responses, table = stimulus_responses(rec, area)
    responses = responses[:, units]
    positions = nodes.positions_mm[units]
    out.arrays["map_positions"] = positions
    active = responses.sum(axis=0) > 0
    out.metrics.update(
        units=nodes.num_units,
        map_units=len(units),
        border_units_left_out=nodes.num_units - len(units),
        stimuli=len(responses),
        responsive_fraction=float(active.mean()),
        mean_count=float(responses.mean()),
    )
    reach = reach_mm(nodes)
    out.metrics["reach_mm"] = reach
    corr = maps.correlation_vs_distance(responses, positions, max_distance=reach, seed=seed)
    out.metrics["correlation_vs_distance"] = _curve(corr)
    mean_response = responses.mean(axis=0)
    out.metrics["correlation_decay"] = _nearest_vs_farthest(corr["mean"])
    out.metrics["morans_i_response"] = _morans_i(mean_response, positions, nodes, seed)
    out.positional += [
        _named("correlation_decay", nulls.decay_null(
            responses, positions, bins=12, max_distance=reach, quantile=0.95, seed=seed)),
        _named("morans_i_response", _morans_null(mean_response, positions, nodes, seed)),
    ]  # fmt: skip
    if np.isfinite(table.get("orientation_deg", np.array([np.nan]))).any():
        _tuning(out, rec, responses, table, positions, nodes, seed, smooth_mm)
    else:
        out.notes.append("no grating trials: tuning, orientation maps and pinwheels skipped")
    labels = table.get("label", np.array([-1]))
    if (labels >= 0).any():
        _categories(out, rec, area, positions, nodes, seed, units)
    else:
        out.notes.append("no labelled trials: category selectivity skipped")
    if rec.rates:
        out.notes.append("ReLU units (activations, no spike trains): synchrony (r_CCG) skipped")
        return out
    sync = synchrony_vs_distance(rec, area, seed=seed, units=units)
    out.metrics["synchrony_window"] = int(sync.pop("window"))
    out.metrics["synchrony_vs_distance"] = _curve(sync)
    out.metrics["synchrony_decay"] = _nearest_vs_farthest(sync["mean"])
    return out


def _named(name: str, metric: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], dict]:
    """A function of an order giving ``{name: metric(order)}`` (:mod:`tdsnn.analysis.nulls`)."""
    return lambda order: {name: metric(order)}


def _moran_units(values: np.ndarray, seed: int) -> np.ndarray:
    """The units Moran's I is taken on: those with finite values, a random subset of
    :data:`MORAN_UNITS` of them on large areas."""
    index = np.flatnonzero(np.isfinite(values))
    if len(index) > MORAN_UNITS:
        index = np.sort(np.random.default_rng(seed).choice(index, MORAN_UNITS, replace=False))
    return index


def _morans_null(values: np.ndarray, positions: np.ndarray, nodes, seed: int):
    """:func:`_morans_i` as a function of an order (:func:`tdsnn.analysis.nulls.morans_null`),
    on the units it takes (the identity gives its value)."""
    return nulls.morans_null(positions, values, nodes.neighbourhood_mm, _moran_units(values, seed))


def _morans_i(values: np.ndarray, positions: np.ndarray, nodes, seed: int) -> float:
    """Moran's I of ``values`` on the sheet, neighbours within the area's neighbourhood width
    (on :func:`_moran_units`)."""
    index = _moran_units(values, seed)
    if len(index) < 3 or np.ptp(values[index]) == 0:
        return float("nan")
    return float(maps.morans_i(values[index], positions[index], radius=nodes.neighbourhood_mm))


def _geometry(rec: Recording, area: str) -> tuple[float | None, float | None]:
    """``(image size px, receptive field px)`` of ``area`` from the recorded config; ``None``
    for what the config does not say."""
    config = rec.meta.config or {}
    image = (config.get("data") or {}).get("image_size")
    try:
        rf_px = receptive_field_px(config, area)
    except ConfigError:
        rf_px = None
    return (None if image is None else float(image)), rf_px


def _frequency_table(
    tuning: dict, best: np.ndarray, image: float | None, rf_px: float | None
) -> list[dict]:
    """One row per frequency shown: period, cycles per receptive field, whether the receptive
    field resolves it, mean selectivity of the units it drives, their fraction, and the
    fraction of units whose best frequency it is (``best [N]``)."""
    rows = []
    for f, sel, resp in zip(tuning["frequencies"], tuning["per_frequency_selectivity"],
                            tuning["per_frequency_response"], strict=True):  # fmt: skip
        driven = resp > 0
        rows.append(
            {
                "cycles_per_image": float(f),
                "period_px": None if image is None else image / f,
                "cycles_per_rf": None if None in (image, rf_px) else f * min(rf_px, image) / image,
                "resolvable": _resolvable(f, image, rf_px),
                "selectivity_mean": float(sel[driven].mean()) if driven.any() else None,
                "responsive_fraction": float(driven.mean()),
                "best_fraction": float(np.mean(best == f)),
            }
        )
    return rows


def _resolvable(f: float, image: float | None, rf_px: float | None) -> bool:
    """At least one cycle per receptive field (the field clipped to the image) and at least
    two pixels per cycle; True when the geometry is unknown."""
    if image is None:
        return True
    low = 1.0 if rf_px is None else image / min(rf_px, image)
    return bool(low * (1 - 1e-9) <= f <= image / 2)


def unit_tuning(
    rec: Recording, area: str, responses: np.ndarray | None = None, table: dict | None = None
) -> dict:
    """Each unit's orientation tuning at its best resolvable spatial frequency.

    The frequencies at or above one cycle per ``area``'s receptive field (from the recorded
    architecture) and at most Nyquist are the candidates (all of them when the geometry is
    unknown or none qualifies); :func:`tdsnn.analysis.maps.tuning_at_best_frequency` on the
    grating trials. ``responses`` and ``table``: :func:`stimulus_responses` of ``area``,
    computed when not given. Returns its dict for the candidates (``preferred``,
    ``selectivity``, ``best_frequency`` ``[N]`` ...) plus ``every`` (the same over every
    frequency shown), ``receptive_field_px`` (None when unknown), ``image_px`` and ``notes``.
    """
    if responses is None or table is None:
        responses, table = stimulus_responses(rec, area)
    grating = np.isfinite(table["orientation_deg"])
    r = responses[grating]
    ori, sf = table["orientation_deg"][grating], table["cycles_per_image"][grating]
    image, rf_px = _geometry(rec, area)
    every = maps.tuning_at_best_frequency(r, ori, sf)
    usable = [f for f in every["frequencies"] if _resolvable(f, image, rf_px)]
    coarse = [f for f in every["frequencies"] if f not in usable]
    notes = []
    if coarse:
        notes.append(
            f"gratings outside 1 cycle per receptive field ({rf_px or float('nan'):g} px) to "
            f"Nyquist, left out of the best-frequency choice: "
            f"{', '.join(f'{f:.3g}' for f in coarse)} cycles per image"
        )
    if not usable:
        notes.append("no grating is resolvable by the receptive field: tuning uses them all")
        usable = list(every["frequencies"])
    if rf_px is None:
        notes.append("receptive field unknown (no architecture in the recording's config)")
    tuning = maps.tuning_at_best_frequency(r, ori, sf, usable)
    return {**tuning, "every": every, "receptive_field_px": rf_px, "image_px": image,
            "notes": notes}  # fmt: skip


def _tuning(
    out: AreaAnalysis, rec: Recording, responses, table, positions, nodes, seed: int,
    smooth_mm: float | None,
) -> None:  # fmt: skip
    tuning = unit_tuning(rec, nodes.name, responses, table)
    out.notes += tuning["notes"]
    every, image, rf_px = tuning["every"], tuning["image_px"], tuning["receptive_field_px"]
    usable = list(tuning["frequencies"])
    preferred, selectivity = tuning["preferred"], tuning["selectivity"]
    best = tuning["best_frequency"]
    reach = reach_mm(nodes)
    ori_smooth = maps.smoothness(positions, preferred, period=180.0, max_distance=reach, seed=seed)
    sf_smooth = maps.smoothness(positions, np.log2(best), max_distance=reach, seed=seed)
    out.positional += [
        _named("orientation_smoothness", nulls.smoothness_null(
            positions, preferred, period=180.0, max_distance=reach, seed=seed)),
        _named("frequency_smoothness", nulls.smoothness_null(
            positions, np.log2(best), max_distance=reach, seed=seed)),
        _named("morans_i_frequency", _morans_null(np.log2(best), positions, nodes, seed)),
    ]  # fmt: skip
    counts, edges = maps.orientation_histogram(preferred, HISTOGRAM_BINS)
    out.metrics.update(
        receptive_field_px=rf_px,
        tuning_frequencies=[float(f) for f in usable],
        orientation_selectivity_mean=float(np.nanmean(selectivity)),
        orientation_selectivity_median=float(np.nanmedian(selectivity)),
        tuned_fraction=float(np.mean(selectivity >= 0.2)),
        population_vector_length=maps.population_vector_length(preferred),
        orientation_histogram={"edges_deg": edges.tolist(), "counts": counts.tolist()},
        selectivity_per_frequency=_frequency_table(every, best, image, rf_px),
        orientation_smoothness=ori_smooth["smoothness"],
        orientation_smoothness_curve=_curve(ori_smooth),
        frequency_smoothness=sf_smooth["smoothness"],
        frequency_smoothness_curve=_curve(sf_smooth),
        morans_i_frequency=_morans_i(np.log2(best), positions, nodes, seed),
    )
    z = np.where(np.isfinite(preferred), selectivity * np.exp(2j * np.deg2rad(preferred)), np.nan)
    sigma, pixel_mm = map_kernel(nodes, smooth_mm)
    z_map = maps.unit_map(positions, z, side_mm=nodes.side_mm, sigma_mm=sigma, pixel_mm=pixel_mm)
    out.metrics.update(map_smoothing_mm=sigma, map_pixel_mm=pixel_mm)
    pin, note = pinwheel_measure(z_map, pixel_mm, nodes)
    if pin is None:
        out.notes.append(note)
    else:
        out.metrics["pinwheels"] = pin
        out.arrays["pinwheels"] = maps.pinwheels(z_map)

        def pinwheel_map(order: np.ndarray) -> dict:
            moved_map = maps.unit_map(
                positions, z[order], side_mm=nodes.side_mm, sigma_mm=sigma, pixel_mm=pixel_mm
            )
            return pinwheel_values(pinwheel_measure(moved_map, pixel_mm, nodes)[0])

        out.positional.append(pinwheel_map)
    out.arrays.update(
        preferred_orientation=preferred,
        selectivity=selectivity,
        unit_orientation=z,
        side_mm=nodes.side_mm,
        orientation_map=z_map,
        pixel_mm=pixel_mm,
    )


def hypercolumn_mm(nodes) -> float:
    """Width (mm) of the sheet cell of one feature-map position, which holds every channel."""
    _, h, w = nodes.shape
    return nodes.side_mm / max(h, w)


def map_kernel(nodes, smooth_mm: float | None) -> tuple[float, float]:
    """``(sigma, pixel)`` in mm of an area's orientation map: sigma ``smooth_mm``, by default
    :data:`SMOOTH_HYPERCOLUMNS` hypercolumn widths; pixels sigma / :data:`FINE_PIXELS_PER_SIGMA`
    (half the mean unit spacing when sigma is 0), at most :data:`MAX_FINE_PIXELS` per side."""
    sigma = SMOOTH_HYPERCOLUMNS * hypercolumn_mm(nodes) if smooth_mm is None else smooth_mm
    if not (sigma >= 0 and np.isfinite(sigma)):
        raise ConfigError(f"--smooth-mm must be a number >= 0 (mm), got {smooth_mm}")
    spacing = nodes.side_mm / np.sqrt(max(nodes.num_units, 1))
    pixel = sigma / FINE_PIXELS_PER_SIGMA if sigma > 0 else spacing / 2
    return float(sigma), float(max(pixel, nodes.side_mm / MAX_FINE_PIXELS))


def pinwheel_measure(z_map: np.ndarray, pixel_mm: float, nodes) -> tuple[dict | None, str]:
    """Pinwheel density per Λ² (:func:`tdsnn.analysis.maps.pinwheel_density`) of an area's
    orientation map, only where the map resolves its columns: Λ of at least
    :data:`MIN_PIXELS_PER_COLUMN` pixels and at most half the sheet, and
    :data:`MIN_UNITS_PER_COLUMN` units per Λ²
    (a small area's map is interpolated noise, whose "pinwheels" mean nothing). Plaquettes
    touching an empty (NaN) pixel hold no pinwheel. Returns ``(metrics, "")``, or
    ``(None, why not)``."""
    spacing = maps.column_spacing(np.nan_to_num(z_map), pixel_mm)
    per_column = nodes.num_units * spacing**2 / nodes.side_mm**2
    resolved = MIN_PIXELS_PER_COLUMN * pixel_mm <= spacing <= nodes.side_mm / 2
    if not (np.isfinite(spacing) and resolved):
        return None, (
            f"pinwheels not measured: column spacing {spacing:.3g} mm not resolved (needs "
            f"{MIN_PIXELS_PER_COLUMN} pixels and two columns across the {nodes.side_mm} mm sheet)"
        )
    if per_column < MIN_UNITS_PER_COLUMN:
        return None, (
            f"pinwheels not measured: {per_column:.1f} units per column spacing² "
            f"(Λ = {spacing:.2f} mm), fewer than {MIN_UNITS_PER_COLUMN}"
        )
    pin = maps.pinwheel_density(z_map, pixel_mm, spacing)
    return {key: float(value) for key, value in pin.items()}, ""


def pinwheel_values(pin: dict | None) -> dict:
    """``pinwheel_density`` and ``column_spacing_mm`` of a :func:`pinwheel_measure` result, the
    names of their nulls (NaN where it was not measured)."""
    pin = pin or {"density": np.nan, "spacing_mm": np.nan}
    return {"pinwheel_density": pin["density"], "column_spacing_mm": pin["spacing_mm"]}


def _categories(
    out: AreaAnalysis, rec: Recording, area: str, positions, nodes, seed, units: np.ndarray
) -> None:
    """Selectivity per unit and category on single trials (t, d'), experts and patches."""
    counts = rec.counts(area)[:, units].astype(np.float32)
    labels = rec.trials["label"]
    keep = labels >= 0
    k = max(len(rec.meta.class_names), int(labels.max()) + 1)
    sel = maps.category_selectivity(counts[keep], labels[keep], k)
    t, dprime = sel["t"], sel["dprime"]
    expert = (t >= EXPERT_T) & (dprime >= EXPERT_DPRIME)  # [K, N]
    pixels = map_pixels(nodes)
    pixel_mm = nodes.side_mm / pixels
    reach = reach_mm(nodes)

    sample = maps.sample_pairs(positions.astype(np.float64), max_distance=reach, seed=seed)

    def category_maps(order: np.ndarray) -> dict:
        t_maps = [maps.grid_map(positions, t[c, order], side_mm=nodes.side_mm, pixels=pixels)
                  for c in range(k)]  # fmt: skip
        found = [maps.patches(np.nan_to_num(m, nan=-np.inf), EXPERT_T, pixel_mm) for m in t_maps]
        smooth = [maps.smoothness_of(sample, t[c, order])["smoothness"] for c in range(k)]
        return {"t_maps": t_maps, "found": found, "smooth": smooth,
                "patches_mean": float(np.mean([f["count"] for f in found])),
                "category_smoothness": float(np.nanmean(smooth))}  # fmt: skip

    def category_summary(order: np.ndarray) -> dict:
        maps_of = category_maps(order)
        return {key: maps_of[key] for key in ("patches_mean", "category_smoothness")}

    measured = category_maps(np.arange(len(positions)))
    out.positional.append(category_summary)
    t_maps, found, smooth = measured["t_maps"], measured["found"], measured["smooth"]
    patch_counts = [f["count"] for f in found]
    patch_areas = [float(np.sum(f["areas_mm2"])) for f in found]
    masks = [f["labels"] > 0 for f in found]
    overlaps = [maps.map_overlap(masks[a], masks[b]) for a in range(k) for b in range(a + 1, k)]
    names = list(rec.meta.class_names) or [str(c) for c in range(k)]
    out.metrics.update(
        categories=names[:k],
        expert_fraction=float(expert.any(axis=0).mean()),
        expert_fraction_per_category=expert.mean(axis=1).tolist(),
        max_t_mean=float(np.nanmean(t.max(axis=0))),
        category_smoothness=measured["category_smoothness"],
        category_smoothness_per_category=smooth,
        patches_per_category=patch_counts,
        patches_mean=measured["patches_mean"],
        patch_area_mm2_per_category=patch_areas,
        patch_overlap_mean=float(np.mean(overlaps)) if overlaps else float("nan"),
    )
    out.arrays.update(
        category_t=t, category_t_maps=np.stack(t_maps), category_masks=np.stack(masks)
    )
    out.arrays["category_pixel_mm"] = pixel_mm


def synchrony_vs_distance(
    rec: Recording,
    area: str,
    *,
    window: int | None = None,
    bins: int = 10,
    seed: int = 0,
    units: np.ndarray | None = None,
) -> dict:
    """The loss's r_CCG of unit pairs against cortical distance.

    The very function the synchrony term trains with (:func:`tdsnn.topo.similarity.ccg_pairs`,
    DESIGN section 8), on recorded trains: raw spike trains (no mean removed), trials as the
    batch, ``CCG(i,j) = Σ_{|τ|≤W} 1/(B·(T−|τ|)) Σ_b Σ_t S_i^b(t)·S_j^b(t+τ)``, normalised by
    ``√(ACG(i)·ACG(j))``; lags never cross a trial. ``window`` W: the run's ``topo.ccg_window``
    by default (``⌊T/2⌋`` when unset). Of raw trains it measures co-firing, driven by shared
    stimuli too, not spike timing beyond the rates (Bair, Zohary & Newsome's r_CCG removes
    the mean); it is reported because it is what the loss shapes.

    For a random subset of :data:`SYNCHRONY_UNITS` of ``units`` (default: every unit) and the
    first
    :data:`SYNCHRONY_TRIALS` trials: ``bin_centers`` (mm), ``mean`` and ``count`` per distance
    bin, bins up to :func:`reach_mm`, and ``window`` (steps).

    Raises:
        ConfigError: ``rec`` records ReLU units, which have no spike trains.
    """
    nodes = rec.area(area)
    if rec.rates:
        raise ConfigError(
            f"r_CCG synchrony needs spike trains; {rec.path} records ReLU units (activations)"
        )
    rng = np.random.default_rng(seed)
    units = np.arange(nodes.num_units) if units is None else np.asarray(units, dtype=np.int64)
    if len(units) > SYNCHRONY_UNITS:
        units = np.sort(rng.choice(units, SYNCHRONY_UNITS, replace=False))
    trials = min(rec.num_trials, SYNCHRONY_TRIALS)
    t = rec.meta.timesteps
    if window is None:
        window = ((rec.meta.config or {}).get("topo") or {}).get("ccg_window")
    window = resolve_ccg_window(t, window)
    column = np.full(nodes.num_units, -1)
    column[units] = np.arange(len(units))
    raster = np.zeros((t, trials, len(units)), dtype=np.float32)  # [T, B, n], as the loss
    stamps, ids = rec.spikes(area, slice(0, trials))
    step = np.rint(stamps / rec.meta.dt_ms).astype(np.int64)
    pick = column[ids.astype(np.int64)]
    hit = pick >= 0
    raster[step[hit] % t, step[hit] // t, pick[hit]] = 1.0
    i, j = np.triu_indices(len(units), k=1)
    pairs = torch.from_numpy(np.stack([i, j], axis=1))
    with torch.no_grad():
        r = ccg_pairs(torch.from_numpy(raster), pairs, window).double().numpy()
    distance = np.linalg.norm(nodes.positions_mm[units[i]] - nodes.positions_mm[units[j]], axis=1)
    silent = raster.sum(axis=(0, 1)) == 0  # r_CCG is 0 by convention: not a measurement
    ok = ~(silent[i] | silent[j])
    edges = np.linspace(0.0, reach_mm(nodes), bins + 1)
    which = np.digitize(distance[ok], edges) - 1
    inside = (which >= 0) & (which < bins)
    total = np.bincount(which[inside], weights=r[ok][inside], minlength=bins)
    count = np.bincount(which[inside], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return {
        "bin_centers": (edges[:-1] + edges[1:]) / 2,
        "mean": mean,
        "count": count,
        "window": window,
    }


def analyze_recording(
    rec: Recording,
    *,
    seed: int = 0,
    smooth_mm: float | None = None,
    keep_border: bool = False,
) -> list[AreaAnalysis]:
    """:func:`analyze_area` for every recorded area, in stack order."""
    return [
        analyze_area(rec, area, seed=seed, smooth_mm=smooth_mm, keep_border=keep_border)
        for area in rec.areas
    ]
