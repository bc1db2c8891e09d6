"""Topographic map analyses of recorded responses: tuning, smoothness, columns and pinwheels.

Conventions: ``responses`` are ``[S, N]`` (S stimuli, N units, non-negative: spike counts or
ReLU activations), ``positions`` are ``[N, 2]`` cortical positions ``(x, y)`` in mm, angles are
in degrees unless stated. Maps on a regular grid are ``[rows, cols]`` with row = y and col = x.
Functions that work on unit pairs never build an N×N matrix: they sample at most ``max_pairs``
random pairs of distinct units (all pairs when there are fewer; with a ``max_distance``, pairs
within it), so they scale to 100 000 units.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from tdsnn.spatial import CHUNK as _CHUNK
from tdsnn.spatial import morans_i, morans_i_pairs
from tdsnn.spatial import pair_distances as _pair_distances

__all__ = [
    "orientation_tuning",
    "tuning_at_best_frequency",
    "population_vector_length",
    "orientation_histogram",
    "preferred_value",
    "sample_pairs",
    "correlation_vs_distance",
    "pair_pearson",
    "unit_vectors",
    "smoothness",
    "smoothness_of",
    "morans_i",
    "morans_i_pairs",
    "grid_map",
    "unit_map",
    "column_spacing",
    "radial_power",
    "pinwheels",
    "pinwheel_density",
    "category_selectivity",
    "patches",
    "map_overlap",
]

Seed = int | np.random.Generator


def orientation_tuning(
    responses: np.ndarray, orientation_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Preferred orientation (degrees in [0, 180)) and selectivity (|z| in [0, 1]) per unit.

    ``z_n = Σ_s r_sn·exp(2iθ_s) / Σ_s r_sn`` over ``responses [S, N]`` and stimulus orientations
    ``[S]`` (period 180°). Units with zero total response get NaN and selectivity 0.
    """
    r = _as_float(responses)
    doubled = 2 * np.deg2rad(np.asarray(orientation_deg, dtype=np.float64))
    total = r.sum(axis=0, dtype=np.float64)
    silent = total == 0
    z = np.cos(doubled).astype(r.dtype) @ r + 1j * (np.sin(doubled).astype(r.dtype) @ r)
    z = z / np.where(silent, 1.0, total)
    preferred = np.mod(np.rad2deg(np.angle(z)) / 2.0, 180.0)
    preferred[silent] = np.nan
    return preferred, np.where(silent, 0.0, np.abs(z))


def tuning_at_best_frequency(
    responses: np.ndarray,
    orientation_deg: np.ndarray,
    cycles_per_image: np.ndarray,
    frequencies: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Orientation tuning of each unit at its own best spatial frequency (TDANN's protocol).

    ``responses [S, N]`` to gratings with ``orientation_deg [S]`` and ``cycles_per_image [S]``.
    A unit's best frequency is the one (of ``frequencies``, default every frequency shown)
    whose gratings drive it most on average over orientations and phases (the peak of its
    spatial-frequency tuning curve); its preferred orientation and selectivity are those of
    :func:`orientation_tuning` on the gratings of that frequency alone, not one vector sum over
    all stimuli. Returns ``frequencies [F]`` (ascending), ``best_frequency [N]`` (NaN for units
    silent at all of them), ``preferred [N]`` (degrees in [0, 180), NaN when silent),
    ``selectivity [N]`` (in [0, 1]) and ``per_frequency_selectivity [F, N]`` (selectivity from
    each frequency's gratings; 0 where the unit is silent at it) and ``per_frequency_response
    [F, N]`` (mean response to each frequency's gratings).
    """
    r = _as_float(responses)
    sf = np.asarray(cycles_per_image, dtype=np.float64)
    theta = np.asarray(orientation_deg, dtype=np.float64)
    freqs = np.unique(sf) if frequencies is None else np.unique(np.asarray(frequencies, float))
    if freqs.size == 0:
        raise ValueError("no spatial frequency to take tuning at")
    n = r.shape[1]
    mean = np.empty((freqs.size, n))
    pref = np.empty((freqs.size, n))
    sel = np.empty((freqs.size, n))
    for k, f in enumerate(freqs):
        shown = sf == f
        if not shown.any():
            raise ValueError(f"no grating of {f} cycles per image among the stimuli")
        mean[k] = r[shown].mean(axis=0, dtype=np.float64)
        pref[k], sel[k] = orientation_tuning(r[shown], theta[shown])
    best = np.argmax(mean, axis=0)
    units = np.arange(n)
    silent = ~(mean > 0).any(axis=0)
    best_frequency = freqs[best]
    best_frequency[silent] = np.nan
    return {
        "frequencies": freqs,
        "best_frequency": best_frequency,
        "preferred": pref[best, units],
        "selectivity": sel[best, units],
        "per_frequency_selectivity": sel,
        "per_frequency_response": mean,
    }


def population_vector_length(preferred_deg: np.ndarray) -> float:
    """``|mean_n exp(2iθ_n)|`` of orientation preferences (degrees, NaN ignored): 0 when all
    orientations are equally represented, 1 when every unit prefers the same one; NaN when no
    preference is finite. ``N`` random preferences give about ``sqrt(π/(4N))``."""
    theta = np.asarray(preferred_deg, dtype=np.float64)
    theta = theta[np.isfinite(theta)]
    if theta.size == 0:
        return float("nan")
    return float(np.abs(np.exp(2j * np.deg2rad(theta)).mean()))


def orientation_histogram(
    preferred_deg: np.ndarray, bins: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of preferred orientations (degrees, NaN ignored) in ``bins`` equal bins on
    ``[0, 180)``: ``(counts [bins] int64, edges [bins + 1] degrees)``."""
    theta = np.asarray(preferred_deg, dtype=np.float64)
    theta = np.mod(theta[np.isfinite(theta)], 180.0)
    edges = np.linspace(0.0, 180.0, bins + 1)
    counts, _ = np.histogram(theta, bins=edges)
    return counts.astype(np.int64), edges


def preferred_value(responses: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The stimulus value (``values [S]``) with the largest mean response, per unit: ``[N]``.

    Responses are averaged over the stimuli sharing a value; silent units get NaN.
    """
    r = _as_float(responses)
    levels, inverse = np.unique(np.asarray(values), return_inverse=True)
    onehot = np.zeros((levels.size, r.shape[0]), dtype=r.dtype)
    onehot[inverse, np.arange(r.shape[0])] = 1.0
    means = (onehot @ r) / onehot.sum(axis=1, keepdims=True)
    best = levels[np.argmax(means, axis=0)].astype(np.float64)
    best[~np.any(r != 0, axis=0)] = np.nan
    return best


def _as_float(responses: np.ndarray) -> np.ndarray:
    """Responses as a float array: float input as is (no copy), anything else as float64."""
    r = np.asarray(responses)
    return r if np.issubdtype(r.dtype, np.floating) else r.astype(np.float64)


def _sample_pairs(
    positions: np.ndarray, max_pairs: int, rng: np.random.Generator, reach: float | None = None
) -> tuple[np.ndarray, ...]:
    """Index pairs ``(i, j)`` of distinct units: all of them if there are at most ``max_pairs``,
    else about ``max_pairs`` random pairs (with replacement): uniform over all pairs, or, with
    ``reach`` (mm), over the pairs closer than ``reach`` (a random unit and the unit nearest a
    uniform random point of the disc of radius ``reach`` around it), so that a large sheet's
    near distances are not starved of pairs."""
    n = len(positions)
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    if reach is None:
        i = rng.integers(0, n, size=max_pairs)
        j = (i + rng.integers(1, n, size=max_pairs)) % n
        return i, j
    m = int(max_pairs * 1.5)
    i = rng.integers(0, n, size=m)
    radius = reach * np.sqrt(rng.random(m))
    angle = rng.uniform(0, 2 * np.pi, m)
    points = positions[i] + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    _, j = cKDTree(positions).query(points)
    keep = (j != i) & (_pair_distances(positions, i, j) <= reach)
    return i[keep][:max_pairs], j[keep][:max_pairs]


def _edges(
    dist: np.ndarray, bins: np.ndarray | int, max_distance: float | None, quantile: float
) -> np.ndarray:
    """Bin edges (mm): ``bins`` equal bins on ``[0, max_distance]``, or explicit edges; NaN when
    the default ``max_distance`` is wanted but there are no pairs."""
    if not np.isscalar(bins):
        return np.asarray(bins, dtype=np.float64)
    if max_distance is None:
        max_distance = float(np.quantile(dist, quantile)) if dist.size else np.nan
    return np.linspace(0.0, max_distance, int(bins) + 1)


def _bin_index(dist: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each distance; -1 outside ``[edges[0], edges[-1]]``."""
    idx = np.searchsorted(edges, dist, side="right") - 1
    idx[dist == edges[-1]] = len(edges) - 2
    idx[(dist < edges[0]) | (dist > edges[-1])] = -1
    return idx


def _binned_mean(idx: np.ndarray, x: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    keep = idx >= 0
    count = np.bincount(idx[keep], minlength=nbins)
    total = np.bincount(idx[keep], weights=x[keep], minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count


def unit_vectors(responses: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``[len(units), S]`` float32 rows ``(r − r̄)/‖r − r̄‖``: their dot products are Pearson r."""
    out = np.empty((units.size, responses.shape[0]), dtype=np.float32)
    step = max(1, _CHUNK // max(1, responses.shape[0]))
    for a in range(0, units.size, step):
        block = np.asarray(responses[:, units[a : a + step]], dtype=np.float64).T
        block = block - block.mean(axis=1, keepdims=True)
        out[a : a + step] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def pair_pearson(z: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson r ``[P]`` of the unit pairs ``(i, j)`` from :func:`unit_vectors` ``z``."""
    out = np.empty(i.size)
    step = max(1, _CHUNK // max(1, z.shape[1]))
    for a in range(0, i.size, step):
        zi = z[i[a : a + step]].astype(np.float64)
        out[a : a + step] = np.einsum("ps,ps->p", zi, z[j[a : a + step]])
    return out


def _bootstrap_band(
    idx: np.ndarray, x: np.ndarray, nbins: int, boots: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile band of the per-bin mean, resampling pairs within each bin."""
    keep = idx >= 0
    order = np.argsort(idx[keep], kind="stable")
    slot_bin, xs = idx[keep][order], x[keep][order]
    count = np.bincount(slot_bin, minlength=nbins)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])[slot_bin]
    size = count[slot_bin]
    means = np.empty((boots, nbins))
    for b in range(boots):
        pick = start + (rng.random(slot_bin.size) * size).astype(np.int64)
        means[b] = np.bincount(slot_bin, weights=xs[pick], minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means /= count
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return low, high


def correlation_vs_distance(
    responses: np.ndarray,
    positions: np.ndarray,
    *,
    bins: np.ndarray | int = 12,
    max_distance: float | None = None,
    max_pairs: int = 200_000,
    boots: int = 200,
    seed: Seed = 0,
) -> dict:
    """Pearson correlation (over stimuli) of random unit pairs, binned by cortical distance.

    ``responses [S, N]``, ``positions [N, 2]`` (mm). Constant (e.g. silent) units are excluded.
    ``bins``: count of equal bins on ``[0, max_distance]`` or explicit edges (mm); by default
    ``max_distance`` is the 95th percentile of the sampled pair distances. Returns arrays
    ``bin_centers`` (mm), ``mean`` (mean r), ``low``/``high`` (95 % bootstrap band of the bin
    mean, pairs resampled within bins; NaN with ``boots=0``), ``chance`` (bin means after
    shuffling the distances over all sampled pairs: flat at the mean r of random pairs) and
    ``count`` (pairs), each ``[B]``.
    Bins without pairs are NaN (all of them, with NaN centres, when < 2 units respond).
    """
    rng = np.random.default_rng(seed)  # the pairs' draw, then the bootstrap's and the chance's
    units = np.flatnonzero(np.ptp(responses, axis=0) > 0)
    sample = sample_pairs(np.asarray(positions, dtype=np.float64)[units], bins=bins,
                          max_distance=max_distance, quantile=0.95, max_pairs=max_pairs,
                          seed=rng)  # fmt: skip
    dist, edges, idx = sample["distance"], sample["edges"], sample["bin"]
    r = pair_pearson(unit_vectors(responses, units), sample["i"], sample["j"])
    nbins = len(edges) - 1
    mean, count = _binned_mean(idx, r, nbins)
    if boots > 0:
        low, high = _bootstrap_band(idx, r, nbins, boots, rng)
    else:
        low = high = np.full(nbins, np.nan)
    chance, _ = _binned_mean(_bin_index(rng.permutation(dist), edges), r, nbins)
    centers = (edges[:-1] + edges[1:]) / 2
    return {
        "bin_centers": centers,
        "mean": mean,
        "low": low,
        "high": high,
        "chance": chance,
        "count": count,
    }


def smoothness(
    positions: np.ndarray,
    values: np.ndarray,
    *,
    period: float | None = None,
    bins: int = 10,
    max_distance: float | None = None,
    max_pairs: int = 200_000,
    seed: Seed = 0,
) -> dict:
    """TDANN map smoothness ``(max_b c(b) − c(0)) / max_b c(b)``, 1 smooth, 0 salt-and-pepper.

    ``c(b)`` is the mean ``|Δvalue|`` of random unit pairs in distance bin ``b`` (circular,
    ``min(d, period − d)``, when ``period`` is given, e.g. 180 for orientation); ``c(0)`` is the
    nearest bin. ``bins`` equal bins on ``[0, max_distance]`` mm; by default ``max_distance`` is
    the median pair distance, which keeps the nearest bin narrow (1/``bins`` of it). NaN values
    are ignored. Returns ``smoothness`` (float; NaN if the nearest bin holds no pair, e.g. with
    fewer than two finite values),
    ``bin_centers`` and ``difference`` ``[B]``.
    """
    vals = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(vals)
    sample = sample_pairs(np.asarray(positions, dtype=np.float64)[keep], bins=bins,
                          max_distance=max_distance, max_pairs=max_pairs, seed=seed)  # fmt: skip
    return smoothness_of(sample, vals[keep], period=period)


def sample_pairs(
    positions: np.ndarray,
    *,
    bins: np.ndarray | int = 10,
    max_distance: float | None = None,
    quantile: float = 0.5,
    max_pairs: int = 200_000,
    seed: Seed = 0,
) -> dict:
    """Random unit pairs of ``positions [N, 2]`` (mm) and their distance bins, as
    :func:`smoothness` draws them: ``i``, ``j``, ``distance`` and ``bin`` ``[P]`` (-1 outside
    the bins), ``edges [B + 1]`` (``bins`` equal bins up to ``max_distance``, by default the
    ``quantile`` of the pair distances)."""
    i, j = _sample_pairs(positions, max_pairs, np.random.default_rng(seed), max_distance)
    dist = _pair_distances(positions, i, j)
    edges = _edges(dist, bins, max_distance, quantile)
    return {"i": i, "j": j, "distance": dist, "edges": edges, "bin": _bin_index(dist, edges)}


def smoothness_of(sample: dict, values: np.ndarray, *, period: float | None = None) -> dict:
    """:func:`smoothness` of ``values [N]`` on the pairs of :func:`sample_pairs`; pairs with a
    NaN value are left out."""
    vals = np.asarray(values, dtype=np.float64)
    diff = np.abs(vals[sample["i"]] - vals[sample["j"]])
    if period is not None:
        diff = np.mod(diff, period)
        diff = np.minimum(diff, period - diff)
    edges = sample["edges"]
    c, _ = _binned_mean(np.where(np.isfinite(diff), sample["bin"], -1), diff, len(edges) - 1)
    top = np.nanmax(c) if np.isfinite(c).any() else np.nan
    return {  # NaN where no bin holds a difference (constant values: top is 0)
        "smoothness": float((top - c[0]) / top) if top > 0 else np.nan,
        "bin_centers": (edges[:-1] + edges[1:]) / 2,
        "difference": c,
    }


def grid_map(
    positions: np.ndarray,
    values: np.ndarray,
    *,
    side_mm: float,
    pixels: int = 64,
    sigma_mm: float | None = None,
) -> np.ndarray:
    """Scattered unit ``values [N]`` (real or complex; NaN ignored) on a ``[pixels, pixels]`` grid.

    The grid covers ``[0, side_mm]²`` (row = y, col = x). Values are binned into pixels and the
    sum and the count are both blurred with a Gaussian of ``sigma_mm`` (default: one pixel):
    normalised convolution. Pixels with no unit within ~4 sigma are NaN; units outside the
    square count in its edge pixels.
    """
    vals = np.asarray(values)
    keep = np.isfinite(vals)
    pos, vals = np.asarray(positions, dtype=np.float64)[keep], vals[keep]
    pixel = side_mm / pixels
    cell = np.clip(np.floor(pos / pixel).astype(np.int64), 0, pixels - 1)
    flat = cell[:, 1] * pixels + cell[:, 0]
    sigma = 1.0 if sigma_mm is None else sigma_mm / pixel

    def blur(w: np.ndarray) -> np.ndarray:
        grid = np.bincount(flat, weights=w, minlength=pixels * pixels).reshape(pixels, pixels)
        return ndimage.gaussian_filter(grid, sigma, mode="constant")

    weight = blur(np.ones(vals.size))
    total = blur(vals.real)
    if np.iscomplexobj(vals):
        total = total + 1j * blur(vals.imag)
    filled = weight > 1e-9 * max(weight.max(), 1e-300)
    out = np.full(weight.shape, np.nan, dtype=total.dtype)
    out[filled] = total[filled] / weight[filled]
    return out


def unit_map(
    positions: np.ndarray,
    values: np.ndarray,
    *,
    side_mm: float,
    sigma_mm: float,
    pixel_mm: float,
) -> np.ndarray:
    """Unit ``values [N]`` (real or complex, NaN ignored) at ``positions [N, 2]`` (mm) on a fine
    ``[P, P]`` grid over ``[0, side_mm]²``, ``P = ceil(side_mm / pixel_mm)``.

    ``sigma_mm > 0``: normalised Gaussian convolution with standard deviation ``sigma_mm`` (each
    unit binned into its ``pixel_mm`` pixel first, so take ``pixel_mm`` a few times smaller
    than ``sigma_mm``); the stated kernel is the only smoothing. ``sigma_mm == 0``: no
    smoothing, the values interpolated linearly between units (Delaunay triangles; NaN outside
    the units' convex hull). Row = y, col = x.
    """
    if not (sigma_mm >= 0 and pixel_mm > 0):
        raise ValueError(f"sigma_mm must be >= 0 and pixel_mm > 0, got {sigma_mm}, {pixel_mm}")
    pixels = int(np.ceil(side_mm / pixel_mm - 1e-9))
    if sigma_mm > 0:
        return grid_map(positions, values, side_mm=pixels * pixel_mm, pixels=pixels,
                        sigma_mm=sigma_mm)  # fmt: skip
    from scipy.interpolate import griddata

    vals = np.asarray(values)
    keep = np.isfinite(vals)
    pos = np.asarray(positions, dtype=np.float64)[keep]
    centres = (np.arange(pixels) + 0.5) * pixel_mm
    y, x = np.meshgrid(centres, centres, indexing="ij")
    out = griddata(pos, vals[keep].real, (x, y), method="linear")
    if np.iscomplexobj(vals):
        out = out + 1j * griddata(pos, vals[keep].imag, (x, y), method="linear")
    return out


def radial_power(power: np.ndarray, pixel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rings of a 2-D power spectrum ``[rows, cols]`` (FFT order) of a map with pixels
    ``pixel_mm`` wide: each frequency's ring ``int64 [rows, cols]``, rings
    ``1 / (min(rows, cols)·pixel_mm)`` cycles/mm wide, and the mean power of each ring ``[R]``."""
    rows, cols = power.shape
    k = np.hypot(
        *np.meshgrid(np.fft.fftfreq(rows, pixel_mm), np.fft.fftfreq(cols, pixel_mm), indexing="ij")
    )
    ring = np.rint(k / (1.0 / (min(rows, cols) * pixel_mm))).astype(np.int64)
    radial = np.bincount(ring.ravel(), weights=power.ravel())
    return ring, radial / np.maximum(np.bincount(ring.ravel()), 1)


def column_spacing(z_map: np.ndarray, pixel_mm: float) -> float:
    """Column spacing Λ (mm) of a (complex) map ``[rows, cols]`` with pixels ``pixel_mm`` wide.

    The mean-removed, Hann-windowed map's power spectrum is averaged in rings of width
    ``1 / (min(rows, cols)·pixel_mm)`` cycles/mm; the peak ring away from k = 0 is refined by a
    parabola through the log-power of it and its two neighbours. ``Λ = 1 / k_peak``. NaN pixels
    count as the mean.
    """
    z = np.asarray(z_map)
    z = np.where(np.isfinite(z), z, np.nanmean(z))
    rows, cols = z.shape
    window = np.outer(np.hanning(rows), np.hanning(cols))
    z = (z - (z * window).sum() / window.sum()) * window
    _, radial = radial_power(np.abs(np.fft.fft2(z)) ** 2, pixel_mm)
    dk = 1.0 / (min(rows, cols) * pixel_mm)
    nring = min(rows, cols) // 2 + 1
    radial = radial[:nring]
    peak = 1 + int(np.argmax(radial[1:]))
    shift = 0.0
    if peak + 1 < nring and np.all(radial[peak - 1 : peak + 2] > 0):
        lm, l0, lp = np.log(radial[peak - 1 : peak + 2])
        curve = lm - 2 * l0 + lp
        shift = 0.5 * (lm - lp) / curve if curve < 0 else 0.0
    return 1.0 / ((peak + shift) * dk)


def pinwheels(z_map: np.ndarray) -> np.ndarray:
    """Pinwheels of a complex orientation map (orientation = arg(z)/2): ``[P, 3]`` float.

    Around each 2×2 plaquette the wrapped differences of arg(z) are summed (corners in the order
    (r, c), (r, c+1), (r+1, c+1), (r+1, c): counter-clockwise for x = col, y = row); a total of
    ±2π marks a pinwheel at the plaquette centre. Rows are ``(row, col, sign)`` with row, col in
    pixels (``r + 0.5``, ``c + 0.5``) and sign ±1. Plaquettes touching NaN are skipped.
    """
    phase = np.angle(np.asarray(z_map))
    phase[~np.isfinite(np.asarray(z_map))] = np.nan
    corners = [phase[:-1, :-1], phase[:-1, 1:], phase[1:, 1:], phase[1:, :-1]]
    total = np.zeros_like(corners[0])
    for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
        total += np.mod(b - a + np.pi, 2 * np.pi) - np.pi
    winding = np.rint(np.nan_to_num(total) / (2 * np.pi))
    r, c = np.nonzero(winding)
    return np.column_stack([r + 0.5, c + 0.5, np.sign(winding[r, c])]).astype(np.float64)


def pinwheel_density(z_map: np.ndarray, pixel_mm: float, spacing_mm: float | None = None) -> dict:
    """Pinwheels per column area Λ² of a complex orientation map ``[rows, cols]``.

    All pinwheels are counted, over the area the plaquette centres cover,
    ``(rows − 1)·(cols − 1)·pixel_mm²`` (no border is excluded). Λ is :func:`column_spacing`
    unless ``spacing_mm`` is given. Returns ``count``, ``density`` (per Λ²), ``spacing_mm`` and
    ``area_mm2``. Random maps with a ring spectrum have density π.
    """
    z = np.asarray(z_map)
    spacing = column_spacing(z, pixel_mm) if spacing_mm is None else float(spacing_mm)
    count = len(pinwheels(z))
    area = (z.shape[0] - 1) * (z.shape[1] - 1) * pixel_mm**2
    return {
        "count": count,
        "density": count * spacing**2 / area,
        "spacing_mm": spacing,
        "area_mm2": area,
    }


def category_selectivity(responses: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Welch t and d′ of each unit for each category against all other stimuli.

    ``responses [S, N]``, integer ``labels [S]`` in ``[0, num_classes)``. With sample variances
    (ddof 1), ``t = (μ_in − μ_out) / sqrt(σ²_in/n_in + σ²_out/n_out)`` and
    ``d′ = (μ_in − μ_out) / sqrt((σ²_in + σ²_out)/2)``; ``{"t", "dprime"}`` are ``[K, N]``. Zero
    when both groups have zero variance (a variance below 1e-12 of its group's mean square, after
    the unit's mean is removed, counts as zero); NaN for a category with < 2 stimuli in a group.
    """
    r = np.asarray(responses, dtype=np.float64)
    r = r - r.mean(axis=0)
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {lab.min()}…{lab.max()}")
    onehot = np.zeros((num_classes, lab.size))
    onehot[lab, np.arange(lab.size)] = 1.0
    n_in = onehot.sum(axis=1)[:, None]
    n_out = lab.size - n_in
    s_in = onehot @ r
    q_in = onehot @ np.square(r, out=r)  # r is a private copy; every stimulus is in one class
    s_out, q_out = s_in.sum(axis=0) - s_in, q_in.sum(axis=0) - q_in
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in, mu_out = s_in / n_in, s_out / n_out
        v_in = _variance(q_in, s_in, n_in)
        v_out = _variance(q_out, s_out, n_out)
        delta = mu_in - mu_out
        t = delta / np.sqrt(v_in / n_in + v_out / n_out)
        dprime = delta / np.sqrt((v_in + v_out) / 2)
    flat = (v_in == 0) & (v_out == 0)
    return {"t": np.where(flat, 0.0, t), "dprime": np.where(flat, 0.0, dprime)}


def _variance(sq: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sample variance from sums; tiny round-off remainders of constant groups become 0."""
    var = (sq - s * s / n) / (n - 1)
    var[var <= 1e-12 * (sq / n)] = 0.0
    var[np.broadcast_to(n < 2, var.shape)] = np.nan
    return var


def patches(values_map: np.ndarray, threshold: float, pixel_mm: float, min_pixels: int = 2) -> dict:
    """Connected regions (4-connectivity) of ``values_map > threshold`` in a 2-D map.

    Regions under ``min_pixels`` pixels are dropped. Returns ``count``, ``areas_mm2 [P]`` and
    ``labels`` (int, shaped like the map: 0 outside, 1…P the kept regions). NaN is below.
    """
    above = np.nan_to_num(np.asarray(values_map, dtype=np.float64), nan=-np.inf) > threshold
    raw, _ = ndimage.label(above)
    sizes = np.bincount(raw.ravel())
    kept = np.flatnonzero(sizes >= min_pixels)
    kept = kept[kept > 0]
    relabel = np.zeros(sizes.size, dtype=np.int64)
    relabel[kept] = np.arange(1, kept.size + 1)
    return {"count": int(kept.size), "areas_mm2": sizes[kept] * pixel_mm**2, "labels": relabel[raw]}


def map_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A∩B| / (|A| + |B|)`` of two boolean maps; 0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum() + b.sum())
    return 0.0 if total == 0 else 2.0 * int((a & b).sum()) / total
