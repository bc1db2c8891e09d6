"""What a map metric gives by chance: surrogate maps and the metric's place among them.

A map metric means something only against its null (DESIGN section 11). Two surrogates keep
every unit's response and move where it sits:

- ``within``: unit positions permuted within each hypercolumn (the sheet cell of one
  feature-map position, which holds every channel): the map at the hypercolumn's scale is
  kept, the order inside it is destroyed.
- ``sheet``: positions permuted across the whole sheet.

Pinwheel density has a third, ``field``: Gaussian random fields with the map's own radially
averaged power spectrum (random phases), which have about π pinwheels per Λ² whatever their
origin. The population vector length does not depend on positions; its null is the
``floor``: the length of N random preferences, N the area's distinct kernels per hypercolumn.

:func:`compare` places a value among its null draws: mean, sd, z-score, empirical percentile,
and whether the value lies within the null's central 95 % (**not distinguishable from
chance**).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tdsnn.analysis import maps
from tdsnn.choices import NULL_METRICS, POSITION_NULLS
from tdsnn.errors import ConfigError
from tdsnn.spatial import morans_i_pairs, neighbour_pairs

__all__ = [
    "CHANCE_BAND",
    "NULL_METRICS",
    "POSITION_NULLS",
    "chance_band",
    "compare",
    "check_nulls",
    "decay_null",
    "hypercolumn_cells",
    "morans_null",
    "permutation",
    "position_nulls",
    "preference_floor",
    "random_field",
    "smoothness_null",
    "surrogate_orders",
]

CHANCE_BAND = (2.5, 97.5)  # percentiles: a value inside is not distinguishable from chance


def check_nulls(count: int) -> int:
    """``count`` surrogate maps per null kind, a positive integer (``--nulls``)."""
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ConfigError(
            f"--nulls must be a positive number of surrogate maps (e.g. 20), got {count}"
        )
    return int(count)


def hypercolumn_cells(positions: np.ndarray, cell_mm: float) -> np.ndarray:
    """The hypercolumn of each unit: the index of its ``cell_mm``-wide square of the sheet,
    ``int64 [N]`` from ``positions [N, 2]`` (mm)."""
    cell = np.floor(np.asarray(positions, dtype=np.float64) / cell_mm).astype(np.int64)
    cell -= cell.min(axis=0)
    return cell[:, 1] * (cell[:, 0].max() + 1) + cell[:, 0]


def permutation(kind: str, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A surrogate map as a permutation ``order [N]``: the unit at ``u``'s position shows unit
    ``order[u]``'s values, ``order`` permuting the units within each of ``cells [N]``
    (``within``) or across the sheet (``sheet``). Moving values among fixed positions is moving
    positions among units: the two give the same maps."""
    if kind == "sheet":
        return rng.permutation(len(cells))
    if kind != "within":
        raise ValueError(f"unknown null {kind!r}; expected one of {POSITION_NULLS}")
    ordered = np.argsort(cells, kind="stable")  # units grouped by cell, in index order
    shuffled = np.lexsort((rng.random(len(cells)), cells))  # the same groups, shuffled inside
    order = np.empty(len(cells), dtype=np.int64)
    order[ordered] = shuffled
    return order


def chance_band(null: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """The central :data:`CHANCE_BAND` of the finite ``null`` draws; ``(None, None)`` without
    any."""
    draws = np.asarray(null, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return None, None
    low, high = np.percentile(draws, CHANCE_BAND)
    return float(low), float(high)


def compare(value: float, null: np.ndarray) -> dict:
    """``value`` among its ``null`` draws: ``value``, ``null_mean``, ``null_sd``, ``z``
    (NaN when the null has no spread), ``percentile`` (% of draws at or below the value, ties
    counted half), ``draws`` and ``chance`` (True when the value lies within the null's central
    :data:`CHANCE_BAND`; None when either is not a number)."""
    draws = np.asarray(null, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    out = {"value": float(value), "draws": int(draws.size)}
    if draws.size == 0 or not np.isfinite(value):
        return {**out, "null_mean": None, "null_sd": None, "z": None, "percentile": None,
                "chance": None}  # fmt: skip
    mean, sd = float(draws.mean()), float(draws.std(ddof=1)) if draws.size > 1 else 0.0
    below = np.mean(draws < value) + 0.5 * np.mean(draws == value)
    low, high = chance_band(draws)
    return {
        **out,
        "null_mean": mean,
        "null_sd": sd,
        "z": (value - mean) / sd if sd > 0 else None,
        "percentile": float(100 * below),
        "chance": bool(low <= value <= high),
    }


def surrogate_orders(
    positions: np.ndarray, cell_mm: float, count: int, seed: int
) -> dict[str, list[np.ndarray]]:
    """``count`` surrogate maps of each kind of :data:`POSITION_NULLS` for units at
    ``positions [N, 2]`` (hypercolumns ``cell_mm`` wide), as :func:`permutation` orders,
    seeded: ``{kind: [[N], ...]}``."""
    cells = hypercolumn_cells(positions, cell_mm)
    out = {}
    for k, kind in enumerate(POSITION_NULLS):
        rng = np.random.default_rng([seed, k])
        out[kind] = [permutation(kind, cells, rng) for _ in range(count)]
    return out


def position_nulls(
    metrics: Sequence[Callable[[np.ndarray], dict]], surrogates: dict[str, list[np.ndarray]]
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Each function of ``metrics`` (an order ``[N]`` -> ``{metric name: value}``) on the map
    itself (the identity) and on every surrogate of ``surrogates`` (:func:`surrogate_orders`):
    ``({name: value}, {name: {kind: float64 [count]}})``."""
    n = len(next(iter(surrogates.values()))[0])
    values = {name: v for metric in metrics for name, v in metric(np.arange(n)).items()}
    draws = {name: {kind: np.full(len(orders), np.nan) for kind, orders in surrogates.items()}
             for name in values}  # fmt: skip
    for kind, orders in surrogates.items():
        for index, order in enumerate(orders):
            for metric in metrics:
                for name, value in metric(order).items():
                    draws[name][kind][index] = value
    return values, draws


def smoothness_null(
    positions: np.ndarray, values: np.ndarray, *, period: float | None = None, **sampling
) -> Callable[[np.ndarray], float]:
    """:func:`tdsnn.analysis.maps.smoothness` of ``values [N]`` as a function of an order, on
    the pair sample it draws itself (of the units with finite values; ``sampling``:
    :func:`~tdsnn.analysis.maps.sample_pairs`'s keywords), so that the identity gives its value
    exactly; a surrogate's NaN values leave their pairs out."""
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    sample = maps.sample_pairs(np.asarray(positions, dtype=np.float64)[keep], **sampling)
    return lambda order: maps.smoothness_of(sample, values[order][keep], period=period)[
        "smoothness"
    ]


def morans_null(
    positions: np.ndarray, values: np.ndarray, radius: float, units: np.ndarray
) -> Callable[[np.ndarray], float]:
    """Moran's I (:func:`tdsnn.spatial.morans_i`) of ``values [N]`` at the ``units`` (index)
    as a function of an order: neighbours within ``radius`` mm found once; units with a NaN
    value left out."""
    pos = np.asarray(positions, dtype=np.float64)[units]
    pairs = neighbour_pairs(pos, radius)
    values = np.asarray(values, dtype=np.float64)

    def morans(order: np.ndarray) -> float:
        x = values[order][units]
        ok = np.isfinite(x)
        kept = pairs[ok[pairs[:, 0]] & ok[pairs[:, 1]]]
        if ok.sum() < 3 or np.ptp(x[ok]) == 0:
            return float("nan")
        return float(morans_i_pairs(x[ok][None], (np.cumsum(ok) - 1)[kept])[0])

    return morans


def decay_null(
    responses: np.ndarray, positions: np.ndarray, **sampling
) -> Callable[[np.ndarray], float]:
    """The correlation decay of :func:`tdsnn.analysis.maps.correlation_vs_distance` (mean r of
    the nearest distance bin minus that of the farthest) as a function of an order, on one
    pair sample of ``positions`` (``sampling``: :func:`~tdsnn.analysis.maps.sample_pairs`'s
    keywords) drawn, as it draws it, among the units that respond; pairs with a constant unit
    are left out."""
    units = np.flatnonzero(np.ptp(responses, axis=0) > 0)
    sample = maps.sample_pairs(np.asarray(positions, dtype=np.float64)[units], **sampling)
    last = int(sample["bin"].max(initial=0))
    ends = (sample["bin"] == 0) | (sample["bin"] == last)
    i, j = units[sample["i"][ends]], units[sample["j"][ends]]
    near = sample["bin"][ends] == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = maps.unit_vectors(responses, np.arange(responses.shape[1]))

    def decay(order: np.ndarray) -> float:
        r = maps.pair_pearson(z, order[i], order[j])
        ok = np.isfinite(r)
        if not ((ok & near).any() and (ok & ~near).any()):
            return float("nan")
        return float(r[ok & near].mean() - r[ok & ~near].mean())

    return decay


def random_field(z_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A complex Gaussian random field with the radially averaged power spectrum of ``z_map``
    ``[rows, cols]`` (mean removed, NaN pixels as the mean), random phases; NaN where
    ``z_map`` is NaN, scaled to its variance."""
    z = np.asarray(z_map, dtype=np.complex128)
    empty = ~np.isfinite(z)
    z = np.where(empty, np.nanmean(z), z)
    z = z - z.mean()
    rows, cols = z.shape
    ring, radial = maps.radial_power(np.abs(np.fft.fft2(z)) ** 2)
    noise = rng.standard_normal((rows, cols)) + 1j * rng.standard_normal((rows, cols))
    field = np.fft.ifft2(np.fft.fft2(noise) * np.sqrt(radial[ring]))
    field *= np.sqrt(np.mean(np.abs(z) ** 2) / max(np.mean(np.abs(field) ** 2), 1e-300))
    field[empty] = np.nan
    return field


def preference_floor(
    preferred_deg: np.ndarray, kernels: int, count: int, seed: int
) -> dict[str, dict]:
    """Population vector lengths ``|mean exp(2iθ)|`` that ``kernels`` preferences give by
    chance, ``count`` draws each: ``random`` (uniform angles) and ``own`` (``kernels`` of the
    map's own finite preferences, drawn without replacement). Each: ``mean``, ``sd``,
    ``low``/``high`` (central 95 %) and the draws."""
    rng = np.random.default_rng(seed)
    own = np.asarray(preferred_deg, dtype=np.float64)
    own = own[np.isfinite(own)]
    draws = {
        "random": rng.uniform(0.0, 180.0, size=(count, kernels)),
        "own": np.stack([rng.choice(own, min(kernels, own.size), replace=False)
                         for _ in range(count)]) if own.size else np.full((count, 1), np.nan),
    }  # fmt: skip
    out = {}
    for name, theta in draws.items():
        length = np.abs(np.exp(2j * np.deg2rad(theta)).mean(axis=1))
        low, high = np.percentile(length, CHANCE_BAND)
        out[name] = {"kernels": int(theta.shape[1]), "mean": float(length.mean()),
                     "sd": float(length.std(ddof=1)), "low": float(low), "high": float(high),
                     "draws": length}  # fmt: skip
    return out
