"""Every map metric of an analysed area beside its null (``tdsnn analyze --nulls K``).

:func:`add_nulls` takes an area's :class:`~tdsnn.analysis.topography.AreaAnalysis` and adds
``metrics["nulls"]``: for each position-dependent metric, the metric on K surrogate maps of
each kind of :mod:`tdsnn.analysis.nulls` (``within``, ``sheet``; pinwheel density and the
column spacing also ``field``) and the value's place among them; the population vector
length against its ``floor`` (``metrics["population_vector_floor"]`` also gives the length of
N of the map's own preferences, ``own``). ``metrics["pinwheel_curve"]`` holds the pinwheel
density of the map and of its nulls over the smoothing kernels :data:`PINWHEEL_KERNELS`.
"""

from __future__ import annotations

import numpy as np

from tdsnn.analysis import maps, nulls
from tdsnn.analysis.topography import (
    AreaAnalysis,
    hypercolumn_mm,
    map_kernel,
    pinwheel_measure,
    pinwheel_values,
)
from tdsnn.errors import ConfigError

__all__ = ["NULL_DRAWS", "PINWHEEL_KERNELS", "add_nulls", "check_kernels"]

NULL_DRAWS = 20  # surrogate maps per null kind by default (tdsnn analyze --nulls)
PINWHEEL_KERNELS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the curve's map kernels (hypercolumns)
FLOOR_DRAWS = 1_000  # draws of the population vector floor


def check_kernels(kernels, nodes=None) -> tuple[float, ...]:
    """The pinwheel curve's kernels (hypercolumn widths): positive, and, given ``nodes`` (an
    :class:`~tdsnn.record.AreaNodes` with pinwheels), σ at most half of the area's sheet."""
    widths = tuple(float(k) for k in kernels)
    if not widths or not all(np.isfinite(k) and k > 0 for k in widths):
        raise ConfigError(f"--pinwheel-kernels must be positive hypercolumn widths, got {kernels}")
    for width in widths if nodes is not None else ():
        sigma = width * hypercolumn_mm(nodes)
        if sigma > nodes.side_mm / 2:
            raise ConfigError(
                f"--pinwheel-kernels: {width:g} hypercolumns is σ = {sigma:.3g} mm, wider than "
                f"half of {nodes.name}'s {nodes.side_mm:.3g} mm sheet"
            )
    return widths


def add_nulls(
    out: AreaAnalysis,
    nodes,
    count: int,
    seed: int = 0,
    kernels: tuple[float, ...] = PINWHEEL_KERNELS,
) -> None:
    """Add ``nulls`` (and, where pinwheels were measured, ``pinwheel_curve`` over ``kernels``,
    in hypercolumn widths) to
    ``out.metrics``: ``count`` surrogate maps per kind, seeded by ``seed``. Each metric's
    ``value`` there is the headline metric, computed on the pair sample its nulls share."""
    count = nulls.check_nulls(count)
    spatial = max(nodes.shape[1:]) > 1  # a map, not one position (an fc layer's grid of units)
    kernels = check_kernels(kernels, nodes if spatial else None)
    positions = out.arrays["map_positions"]
    surrogates = nulls.surrogate_orders(positions, hypercolumn_mm(nodes), count, seed)
    values, draws = nulls.position_nulls(out.positional, surrogates)
    if "pinwheels" in out.metrics:
        fields = _field_pinwheels(out.arrays["orientation_map"], out.metrics["map_pixel_mm"],
                                  nodes, count, seed)  # fmt: skip
        for name, field_draws in fields.items():
            draws[name]["field"] = field_draws
        out.metrics["pinwheel_curve"] = _pinwheel_curve(out, nodes, surrogates, seed, kernels)
    table = {
        name: {kind: nulls.compare(values[name], d) for kind, d in kinds.items()}
        for name, kinds in draws.items()
    }
    if "population_vector_length" in out.metrics:
        floor = nulls.preference_floor(
            out.arrays["preferred_orientation"], nodes.shape[0], FLOOR_DRAWS, seed
        )
        value = out.metrics["population_vector_length"]
        table["population_vector_length"] = {
            "floor": nulls.compare(value, floor["random"]["draws"])
        }
        out.metrics["population_vector_floor"] = {
            name: {k: v for k, v in f.items() if k != "draws"} for name, f in floor.items()
        }
    out.metrics["nulls"] = table
    out.metrics["null_draws"] = count


def _field_pinwheels(z_map, pixel_mm: float, nodes, count: int, seed: int) -> dict:
    """Pinwheel density and Λ of ``count`` random fields with ``z_map``'s spectrum."""
    rng = np.random.default_rng([seed, len(nulls.POSITION_NULLS)])
    fields = [
        pinwheel_values(pinwheel_measure(nulls.random_field(z_map, rng), pixel_mm, nodes)[0])
        for _ in range(count)
    ]
    return {name: np.array([f[name] for f in fields], dtype=np.float64) for name in fields[0]}


def _pinwheel_curve(out: AreaAnalysis, nodes, surrogates: dict, seed: int, kernels) -> dict:
    """Pinwheels per Λ² of the map and of each null, the map smoothed by each kernel of
    :data:`PINWHEEL_KERNELS` (hypercolumn widths): per kernel the map's density and each
    null's mean and central 95 % band; ``outside`` marks the kernels where the map lies
    outside every null's band."""
    z = out.arrays["unit_orientation"]
    positions = out.arrays["map_positions"]
    rng = np.random.default_rng([seed, len(nulls.POSITION_NULLS) + 1])
    curve = {"kernel_hypercolumns": list(kernels), "sigma_mm": [], "map": [],
             "outside": [], **{kind: {"mean": [], "low": [], "high": []}
                               for kind in (*surrogates, "field")}}  # fmt: skip
    for width in kernels:
        sigma, pixel = map_kernel(nodes, width * hypercolumn_mm(nodes))
        z_map = _map_at(positions, z, nodes, sigma, pixel)
        value = _density(z_map, pixel, nodes)
        draws = {
            kind: [_density(_map_at(positions, z[order], nodes, sigma, pixel), pixel, nodes)
                   for order in orders]
            for kind, orders in surrogates.items()
        }  # fmt: skip
        fields = len(surrogates[nulls.POSITION_NULLS[0]])
        draws["field"] = [
            _density(nulls.random_field(z_map, rng), pixel, nodes) for _ in range(fields)
        ]
        inside = False
        for kind, values in draws.items():
            summary = nulls.compare(value, values)
            low, high = nulls.chance_band(values)
            curve[kind]["mean"].append(summary["null_mean"])
            curve[kind]["low"].append(low)
            curve[kind]["high"].append(high)
            inside = inside or summary["chance"] is True
        curve["sigma_mm"].append(sigma)
        curve["map"].append(value if np.isfinite(value) else None)
        curve["outside"].append(bool(np.isfinite(value) and not inside))
    return curve


def _map_at(where: np.ndarray, z: np.ndarray, nodes, sigma: float, pixel: float) -> np.ndarray:
    """The orientation map of units ``z [N]`` at ``where [N, 2]``, kernel ``sigma`` (mm)."""
    return maps.unit_map(where, z, side_mm=nodes.side_mm, sigma_mm=sigma, pixel_mm=pixel)


def _density(z_map: np.ndarray, pixel: float, nodes) -> float:
    """Pinwheels per Λ² of ``z_map`` (NaN where :func:`pinwheel_measure` does not measure)."""
    return pinwheel_values(pinwheel_measure(z_map, pixel, nodes)[0])["pinwheel_density"]
