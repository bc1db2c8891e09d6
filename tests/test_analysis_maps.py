"""Map analyses against planted ground truth, hand-worked cases and dense references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, special, stats
from scipy.optimize import linear_sum_assignment

from tdsnn.analysis.maps import (
    category_selectivity,
    column_spacing,
    correlation_vs_distance,
    grid_map,
    map_overlap,
    morans_i,
    morans_i_pairs,
    orientation_histogram,
    orientation_tuning,
    patches,
    pinwheel_density,
    pinwheels,
    population_vector_length,
    preferred_value,
    sample_pairs,
    smoothness,
    tuning_at_best_frequency,
    unit_map,
)
from tdsnn.sheet import build_sheet
from tdsnn.spatial import pair_adjacency


def circular_gap(a, b, period=180.0):
    d = np.mod(np.abs(a - b), period)
    return np.minimum(d, period - d)


def random_orientation_map(pixels, wavelength_px, waves, seed):
    """Sum of ``waves`` plane waves with |k| = 2π/Λ, directions stratified over 180° with random
    sign, random phases: a random map whose pinwheel density is π per Λ²."""
    rng = np.random.default_rng(seed)
    angle = np.pi * (np.arange(waves) + rng.random(waves)) / waves
    k = 2 * np.pi / wavelength_px * rng.choice([-1.0, 1.0], waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    y, x = np.mgrid[0:pixels, 0:pixels].astype(np.float64)
    arg = np.multiply.outer(k * np.cos(angle), x) + np.multiply.outer(k * np.sin(angle), y)
    return np.exp(1j * (arg + phase[:, None, None])).sum(axis=0)


# ----------------------------------------------------------------------------- columns, pinwheels


@pytest.mark.parametrize(("wavelength_px", "seed"), [(17.3, 0), (21.7, 1), (25.0, 2)])
def test_spacing_and_pinwheel_density_of_random_maps(wavelength_px, seed):
    pixel_mm = 0.02
    z = random_orientation_map(256, wavelength_px, waves=24, seed=seed)  # 10 to 15 Λ across
    spacing = column_spacing(z, pixel_mm)
    assert spacing == pytest.approx(wavelength_px * pixel_mm, rel=0.10)
    out = pinwheel_density(z, pixel_mm)
    assert out["spacing_mm"] == pytest.approx(spacing)
    assert out["area_mm2"] == pytest.approx((255 * pixel_mm) ** 2)
    assert out["density"] == pytest.approx(np.pi, rel=0.15)
    assert out["count"] == len(pinwheels(z))
    signs = pinwheels(z)[:, 2]
    assert abs(signs.sum()) < 0.1 * len(signs)  # charges come in ± pairs, nearly balanced


def test_column_spacing_refines_between_frequency_bins():
    # 10.5 cycles across the map: the nearest spectral ring is 5 % off, the fitted peak is not.
    z = random_orientation_map(256, 256 / 10.5, waves=24, seed=4)
    assert column_spacing(z, 1.0) == pytest.approx(256 / 10.5, rel=0.02)


def test_column_spacing_is_in_mm():
    z = random_orientation_map(128, 12.0, waves=16, seed=3)
    assert column_spacing(z, 0.5) == pytest.approx(2 * column_spacing(z, 0.25))
    assert column_spacing(z, 0.5) == pytest.approx(6.0, rel=0.10)


def test_single_pinwheel_position_and_sign():
    y, x = np.mgrid[0:9, 0:9].astype(np.float64)
    z = (x - 3.5) + 1j * (y - 5.5)  # zero at col 3.5, row 5.5; arg grows counter-clockwise
    np.testing.assert_array_equal(pinwheels(z), [[5.5, 3.5, 1.0]])
    np.testing.assert_array_equal(pinwheels(np.conj(z)), [[5.5, 3.5, -1.0]])
    assert len(pinwheels(np.exp(1j * 0.3 * x))) == 0  # a smooth gradient has none
    z[5, 3] = np.nan
    assert len(pinwheels(z)) == 0
    assert pinwheel_density(z, 1.0, spacing_mm=2.0)["density"] == 0.0


def _channel_map(channels, anchors, spacing_mm, seed, planted=True):
    """A V1-like sheet: ``channels`` discrete orientations (one per channel, the same at every
    anchor, as weight sharing makes them), each anchor's cell (1 mm) holding every channel at
    a random offset (the retinotopic layout). With ``planted``, the channels are assigned to
    each cell's positions to follow a random map of column spacing ``spacing_mm`` (as a
    position optimisation would); otherwise at random. Returns positions, unit orientations
    (degrees) and the planted complex map as a function of ``(x, y)``."""
    sheet = build_sheet("V1", (channels, anchors, anchors), float(anchors), 1.6, seed=seed)
    positions = sheet.positions.numpy().astype(np.float64)  # channel-major: [C·H·W, 2]
    rng = np.random.default_rng(seed)
    waves = 24
    angle = np.pi * (np.arange(waves) + rng.random(waves)) / waves
    k = 2 * np.pi / spacing_mm * rng.choice([-1.0, 1.0], waves)
    phase = rng.uniform(0, 2 * np.pi, waves)

    def field(x, y):
        arg = np.multiply.outer(x, k * np.cos(angle)) + np.multiply.outer(y, k * np.sin(angle))
        return np.exp(1j * (arg + phase)).sum(axis=-1)

    levels = np.arange(channels) * 180.0 / channels
    want = np.mod(np.rad2deg(np.angle(field(*positions.T))) / 2, 180).reshape(channels, -1)
    theta = np.empty_like(want)
    for cell in range(want.shape[1]):
        if planted:
            cost = circular_gap(want[:, cell][:, None], levels[None, :])
            rows, cols = linear_sum_assignment(cost)
        else:
            rows, cols = np.arange(channels), rng.permutation(channels)
        theta[rows, cell] = levels[cols]
    return positions, theta.reshape(-1), field


@pytest.mark.slow
@pytest.mark.parametrize(("spacing_mm", "seed"), [(4.0, 0), (6.0, 1)])
def test_planted_map_of_discrete_channels_in_hypercolumns(spacing_mm, seed):
    anchors, sigma = 40, 0.75  # 40 x 40 cells of 1 mm, 16 channels each; kernel 0.75 cells
    positions, theta, field = _channel_map(16, anchors, spacing_mm, seed)
    pixel = sigma / 3
    z = unit_map(positions, np.exp(2j * np.deg2rad(theta)), side_mm=anchors, sigma_mm=sigma,
                 pixel_mm=pixel)  # fmt: skip
    fine = 0.1
    centres = (np.arange(int(anchors / fine)) + 0.5) * fine
    truth = field(*np.meshgrid(centres, centres, indexing="xy"))  # the continuous planted map
    planted = pinwheel_density(truth, fine)
    assert planted["spacing_mm"] == pytest.approx(spacing_mm, rel=0.05)
    measured = pinwheel_density(z, pixel)
    assert measured["spacing_mm"] == pytest.approx(planted["spacing_mm"], rel=0.05)
    assert measured["density"] == pytest.approx(planted["density"], rel=0.2)
    # the same channels placed at random: no map of the planted spacing
    positions, theta, _ = _channel_map(16, anchors, spacing_mm, seed, planted=False)
    noise = unit_map(positions, np.exp(2j * np.deg2rad(theta)), side_mm=anchors,
                     sigma_mm=sigma, pixel_mm=pixel)  # fmt: skip
    assert np.nanmean(np.abs(noise)) < 0.5 * np.nanmean(np.abs(z))  # measured: 0.30


def test_unit_map_smooths_only_with_the_stated_kernel():
    rng = np.random.default_rng(12)
    positions = rng.uniform(0, 4.0, size=(8_000, 2))
    values = 2.0 * positions[:, 0] - positions[:, 1]
    raw = unit_map(positions, values, side_mm=4.0, sigma_mm=0.0, pixel_mm=0.1)
    assert raw.shape == (40, 40)
    centre = (np.arange(40) + 0.5) * 0.1
    truth = 2.0 * centre[None, :] - centre[:, None]
    inside = np.isfinite(raw)
    assert inside[2:-2, 2:-2].all()
    np.testing.assert_allclose(raw[inside], truth[inside], atol=1e-9)  # linear: exact
    smooth = unit_map(positions, values, side_mm=4.0, sigma_mm=0.2, pixel_mm=0.05)
    assert smooth.shape == (80, 80)
    fine = (np.arange(80) + 0.5) * 0.05
    np.testing.assert_allclose(smooth[10:-10, 10:-10],
                               (2.0 * fine[None, :] - fine[:, None])[10:-10, 10:-10],
                               atol=0.15)  # fmt: skip
    # a salt-and-pepper map: σ = 0 keeps it, a kernel averages it away
    signs = np.exp(2j * np.deg2rad(rng.choice([0.0, 90.0], 8_000)))
    assert np.nanmean(np.abs(unit_map(positions, signs, side_mm=4.0, sigma_mm=0.0,
                                      pixel_mm=0.1))) > 0.3  # fmt: skip
    assert np.nanmean(np.abs(unit_map(positions, signs, side_mm=4.0, sigma_mm=0.5,
                                      pixel_mm=0.1))) < 0.1  # fmt: skip
    with pytest.raises(ValueError, match="sigma_mm"):
        unit_map(positions, values, side_mm=4.0, sigma_mm=-1.0, pixel_mm=0.1)


# ----------------------------------------------------------------------------- tuning


def test_tuning_is_taken_at_each_units_best_frequency():
    rng = np.random.default_rng(5)
    theta = np.arange(8) * 22.5
    freqs = np.array([1.0, 2.0, 4.0, 8.0])
    phases = 4
    ori, sf = (g.reshape(-1) for g in np.meshgrid(theta, freqs, indexing="ij"))
    ori, sf = np.repeat(ori, phases), np.repeat(sf, phases)  # [S] = 8 x 4 x 4 phases
    n = 300
    planted = rng.uniform(0, 180, n)
    best = rng.choice(freqs[1:], n)
    kappa = 1.5

    def von_mises(pref):
        return np.exp(kappa * np.cos(np.deg2rad(2 * (ori[:, None] - pref[None, :]))))

    at_best = 30 * von_mises(planted) * (sf[:, None] == best[None, :])
    # a luminance-ramp response at 1 cycle per image: weaker, tuned to 60° for every unit
    ramp = 12 * von_mises(np.full(n, 60.0)) * (sf[:, None] == 1.0)
    other = 3.0 * ((sf[:, None] != best[None, :]) & (sf[:, None] != 1.0))
    responses = rng.poisson(at_best + ramp + other).astype(np.float64)
    responses = np.column_stack([responses, np.zeros(len(sf))])  # + a silent unit
    out = tuning_at_best_frequency(responses, ori, sf)
    np.testing.assert_array_equal(out["frequencies"], freqs)
    np.testing.assert_array_equal(out["best_frequency"][:n], best)
    assert np.max(circular_gap(out["preferred"][:n], planted)) < 6.0
    expected = special.i1(kappa) / special.i0(kappa)
    assert np.median(out["selectivity"][:n]) == pytest.approx(expected, abs=0.03)
    assert out["per_frequency_selectivity"].shape == (4, n + 1)
    assert np.isnan(out["preferred"][n]) and np.isnan(out["best_frequency"][n])
    assert out["selectivity"][n] == 0.0
    # one vector sum over all stimuli (the old protocol) is pulled towards the ramp's 60°
    pooled, _ = orientation_tuning(responses[:, :n], ori)
    assert np.median(circular_gap(pooled, planted)) > 3 * np.median(
        circular_gap(out["preferred"][:n], planted)
    )
    # restricted to the resolvable frequencies, a unit's choice never falls on the others
    only = tuning_at_best_frequency(responses, ori, sf, frequencies=[1.0, 8.0])
    assert set(np.unique(only["best_frequency"][:n])) <= {1.0, 8.0}
    with pytest.raises(ValueError, match="no grating of 3.0"):
        tuning_at_best_frequency(responses, ori, sf, frequencies=[3.0])


def test_population_vector_length_and_histogram():
    assert population_vector_length(np.array([30.0, 30.0, 30.0 + 180.0])) == pytest.approx(1.0)
    assert population_vector_length(np.array([0.0, 90.0])) == pytest.approx(0.0, abs=1e-12)
    assert population_vector_length(np.array([0.0, 45.0, 90.0, 135.0, np.nan])) == pytest.approx(
        0.0, abs=1e-12
    )
    assert np.isnan(population_vector_length(np.array([np.nan])))
    uniform = np.random.default_rng(0).uniform(0, 180, 20_000)
    assert population_vector_length(uniform) < 0.03
    counts, edges = orientation_histogram(np.array([0.0, 14.9, 15.0, 179.9, 180.0, np.nan]))
    assert counts.tolist() == [3, 1] + [0] * 9 + [1] and counts.sum() == 5
    np.testing.assert_allclose(edges, np.arange(13) * 15.0)


def test_orientation_tuning_recovers_planted_preferences():
    rng = np.random.default_rng(0)
    theta = np.arange(8) * 22.5
    planted = rng.uniform(0, 180, 200)
    kappa = 2.0
    rate = 40 * np.exp(kappa * np.cos(np.deg2rad(2 * (theta[:, None] - planted[None, :]))))
    counts = rng.poisson(rate).astype(np.float64)
    counts = np.column_stack([counts, np.full(8, 7.0), np.zeros(8)])  # + flat and silent units
    preferred, selectivity = orientation_tuning(counts, theta)
    assert np.all((preferred[:-1] >= 0) & (preferred[:-1] < 180))
    assert np.max(circular_gap(preferred[:200], planted)) < 3.0
    # A von Mises curve in 2θ has |z| = I1(κ)/I0(κ).
    expected = special.i1(kappa) / special.i0(kappa)
    assert np.median(selectivity[:200]) == pytest.approx(expected, abs=0.02)
    assert selectivity[200] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(preferred[201]) and selectivity[201] == 0.0
    ints = orientation_tuning(counts[:, :200].astype(np.int64), theta)
    np.testing.assert_allclose(ints[0], preferred[:200], atol=1e-4)


def test_preferred_value_hand_case():
    values = np.array([4.0, 1.0, 2.0, 1.0, 2.0, 1.0])  # 1 shown three times, 2 twice, 4 once
    responses = np.array(
        [  # unit 0 means: 4 -> 2, 1 -> 1 (sum 3), 2 -> 0.5; unit 1: 4 -> 0, 1 -> 1, 2 -> 1.25
            [2.0, 0.0, 0.0],
            [1.0, 3.0, 0.0],
            [0.0, 1.5, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0],
            [1.0, 0.0, 0.0],
        ]
    )
    out = preferred_value(responses, values)
    np.testing.assert_array_equal(out[:2], [4.0, 2.0])
    assert np.isnan(out[2])


def test_category_selectivity_hand_case():
    labels = np.array([0, 0, 0, 1, 1])
    responses = np.array(
        [[1.0, 2.0, 1.0], [2.0, 2.0, 1.0], [3.0, 2.0, 1.0], [5.0, 2.0, 3.0], [7.0, 2.0, 3.0]]
    )
    out = category_selectivity(responses, labels, num_classes=2)
    # Unit 0, class 0: in {1,2,3} mean 2 var 1; out {5,7} mean 6 var 2 (ddof 1).
    # d' = (2 - 6) / sqrt((1 + 2)/2) = -4/sqrt(1.5); t = -4 / sqrt(1/3 + 2/2) = -4/sqrt(4/3).
    assert out["dprime"][0, 0] == pytest.approx(-4 / np.sqrt(1.5))
    assert out["t"][0, 0] == pytest.approx(-4 / np.sqrt(4 / 3))
    assert out["dprime"][1, 0] == pytest.approx(4 / np.sqrt(1.5))
    # Units 1 (constant) and 2 (constant within each group) have zero variance in both groups.
    np.testing.assert_array_equal(out["t"][:, 1:], 0.0)
    np.testing.assert_array_equal(out["dprime"][:, 1:], 0.0)
    with pytest.raises(ValueError, match="labels"):
        category_selectivity(responses, labels, num_classes=1)


def test_category_selectivity_finds_planted_unit():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    responses = rng.poisson(5.0, size=(200, 30)).astype(np.float64)
    responses[labels == 2, 7] += 4.0
    out = category_selectivity(responses, labels, num_classes=4)
    assert out["t"].shape == out["dprime"].shape == (4, 30)
    assert int(np.argmax(out["t"][2])) == 7
    assert int(np.argmax(out["t"][:, 7])) == 2
    assert out["dprime"][2, 7] > 1.0
    ref = stats.ttest_ind(responses[labels == 2], responses[labels != 2], equal_var=False)
    np.testing.assert_allclose(out["t"][2], ref.statistic, rtol=1e-9)


# ----------------------------------------------------------------------------- pairs and distance


def test_smoothness_linear_versus_shuffled_orientation_map():
    rng = np.random.default_rng(2)
    positions = rng.uniform(0, 1, size=(4000, 2))
    orientation = np.mod(180.0 * positions[:, 0], 180.0)
    smooth = smoothness(positions, orientation, period=180.0, seed=0)
    assert smooth["smoothness"] > 0.8
    assert smooth["difference"][0] < smooth["difference"][-1]
    assert np.all(smooth["difference"] <= 90.0)
    shuffled = smoothness(positions, rng.permutation(orientation), period=180.0, seed=0)
    assert abs(shuffled["smoothness"]) < 0.1
    # Without the period, 179° and 1° look far apart: the linear map's near bin gets worse.
    wrapped = np.mod(orientation + 90.0, 180.0)
    assert (
        smoothness(positions, wrapped)["smoothness"]
        < smoothness(positions, wrapped, period=180.0)["smoothness"]
    )


def test_smoothness_ignores_nan_values():
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 1, size=(1000, 2))
    values = 10.0 * positions[:, 1]
    values[::3] = np.nan
    out = smoothness(positions, values, bins=8)
    assert np.all(np.isfinite(out["difference"])) and out["smoothness"] > 0.8
    assert out["bin_centers"].shape == (8,)
    assert np.isnan(smoothness(positions, np.full(1000, np.nan))["smoothness"])


def smooth_field_responses(positions, side, stimuli, seed):
    """Per stimulus a Gaussian-smoothed random field sampled at the units, plus private noise."""
    rng = np.random.default_rng(seed)
    pixels = 64
    fields = ndimage.gaussian_filter(rng.normal(size=(stimuli, pixels, pixels)), (0, 12, 12))
    fields /= fields.std()
    cell = np.clip((positions / side * pixels).astype(int), 0, pixels - 1)
    shared = fields[:, cell[:, 1], cell[:, 0]]
    return 10.0 + shared + 0.7 * rng.normal(size=shared.shape)


def test_correlation_decays_with_distance():
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 2.0, size=(2000, 2))
    responses = smooth_field_responses(positions, 2.0, stimuli=150, seed=5)
    responses[:, 0] = 0.0  # a silent unit must be left out, not give NaN
    out = correlation_vs_distance(responses, positions, max_pairs=60_000, boots=100, seed=0)
    mean, chance = out["mean"], out["chance"]
    assert out["bin_centers"].shape == mean.shape == (12,)
    assert np.all(np.isfinite(mean)) and np.all(out["count"] > 100)
    assert out["count"].sum() <= 60_000
    assert np.all(np.diff(mean[:8]) < 0)  # decays over the first bins
    assert mean[0] > 0.4 and mean[0] > chance[0] + 0.3
    assert np.ptp(chance) < 0.05  # chance is flat ...
    assert np.all(np.abs(chance - np.mean(chance)) < 0.03)
    assert mean[-1] < mean[0] - 0.3  # ... and the far pairs approach it
    assert np.all(out["low"] <= mean) and np.all(mean <= out["high"])
    assert np.all(out["high"] - out["low"] > 0)
    assert np.all(out["high"] - out["low"] < 0.1)


def test_correlation_explicit_bins_and_all_pairs():
    rng = np.random.default_rng(6)
    positions = rng.uniform(0, 1.0, size=(60, 2))
    responses = rng.poisson(3.0, size=(40, 60)).astype(np.float64)
    edges = np.array([0.0, 0.5, 1.5])
    out = correlation_vs_distance(responses, positions, bins=edges, boots=20)
    assert out["count"].sum() == 60 * 59 // 2  # every pair, each once, all within 1.5 mm
    np.testing.assert_allclose(out["bin_centers"], [0.25, 1.0])
    corr = np.corrcoef(responses.T)
    dist = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    near = np.triu(dist <= 0.5, k=1)
    assert out["mean"][0] == pytest.approx(corr[near].mean())
    silent = correlation_vs_distance(np.zeros((5, 3)), positions[:3], boots=5)
    assert np.all(silent["count"] == 0) and np.all(np.isnan(silent["mean"]))


def test_sample_pairs_and_their_distance_bins():
    rng = np.random.default_rng(7)
    positions = rng.uniform(0, 1.0, size=(500, 2))
    fixed = sample_pairs(positions, bins=4, max_distance=2.0)
    np.testing.assert_allclose(fixed["edges"], [0, 0.5, 1, 1.5, 2])
    gaps = positions[fixed["i"]] - positions[fixed["j"]]
    np.testing.assert_allclose(fixed["distance"], np.hypot(*gaps.T))
    np.testing.assert_array_equal(fixed["bin"], np.minimum(fixed["distance"] // 0.5, 3))
    sample = sample_pairs(positions, bins=10, quantile=0.95)
    edges = sample["edges"]
    assert edges.shape == (11,) and edges[0] == 0.0
    dist = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    assert edges[-1] == pytest.approx(np.quantile(dist[np.triu_indices(500, 1)], 0.95))
    assert len(sample["i"]) == 500 * 499 // 2  # every pair, under max_pairs


def dense_morans_i(values, positions, radius):
    dist = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    w = ((dist > 0) & (dist <= radius)).astype(np.float64)
    dev = values - values.mean()
    return len(values) / w.sum() * (dev @ w @ dev) / (dev @ dev)


def test_morans_i_hand_cases():
    line = np.column_stack([np.arange(4.0), np.zeros(4)])
    # Values 1..4: mean 2.5, dev = -1.5, -0.5, 0.5, 1.5, Σdev² = 5. Neighbours within 1 mm:
    # (0,1), (1,2), (2,3), W = 6 ordered pairs; Σ w dev dev = 2·(0.75 - 0.25 + 0.75) = 2.5.
    # I = (4 / 6) · 2.5 / 5 = 1/3.
    assert morans_i(np.array([1.0, 2.0, 3.0, 4.0]), line, radius=1.0) == pytest.approx(1 / 3)
    # Alternating 1, 0, 1, 0: dev = ±0.5, Σdev² = 1, every neighbour product -0.25:
    # I = (4 / 6) · 2·(-0.75) / 1 = -1.
    assert morans_i(np.array([1.0, 0.0, 1.0, 0.0]), line, radius=1.0) == pytest.approx(-1.0)


def test_morans_i_matches_dense_reference():
    rng = np.random.default_rng(8)
    positions = rng.uniform(0, 1.0, size=(50, 2))
    positions[1] = positions[0]  # coincident units are not neighbours (d = 0)
    values = rng.normal(size=50) + positions[:, 0]
    for radius in (0.1, 0.25, 0.6):
        ref = dense_morans_i(values, positions, radius)
        assert morans_i(values, positions, radius=radius) == pytest.approx(ref, rel=1e-12)


def test_morans_i_smooth_versus_shuffled():
    rng = np.random.default_rng(9)
    positions = rng.uniform(0, 1.0, size=(3000, 2))
    values = np.sin(2 * np.pi * positions[:, 0]) + positions[:, 1]
    assert morans_i(values, positions, radius=0.05) > 0.9
    shuffled = morans_i(rng.permutation(values), positions, radius=0.05)
    assert abs(shuffled - (-1 / 2999)) < 0.03


# ----------------------------------------------------------------------------- grids and patches


def test_grid_map_reproduces_linear_field():
    rng = np.random.default_rng(10)
    positions = rng.uniform(0, 2.0, size=(60_000, 2))
    values = 3.0 * positions[:, 0] - 2.0 * positions[:, 1] + 1.0
    grid = grid_map(positions, values, side_mm=2.0, pixels=32)
    centre = (np.arange(32) + 0.5) * 2.0 / 32
    truth = 3.0 * centre[None, :] - 2.0 * centre[:, None] + 1.0  # row = y, col = x
    np.testing.assert_allclose(grid[3:-3, 3:-3], truth[3:-3, 3:-3], atol=0.04)


def test_grid_map_complex_nan_and_empty_regions():
    rng = np.random.default_rng(11)
    positions = rng.uniform(0, 1.0, size=(5000, 2)) * [0.5, 1.0]  # units in the left half only
    values = np.full(5000, 0.6 * np.exp(2j * np.deg2rad(30.0)))
    values[::7] = np.nan
    grid = grid_map(positions, values, side_mm=1.0, pixels=20, sigma_mm=0.05)
    assert np.iscomplexobj(grid)
    np.testing.assert_allclose(grid[:, :9], values[1])
    assert np.all(np.isnan(grid[:, -5:]))


def test_patches_counts_regions_and_areas():
    m = np.zeros((20, 20))
    m[2:5, 2:6] = 2.0  # 12 pixels
    m[10, 9:12] = m[9:12, 10] = 1.5  # plus sign: 5 pixels
    m[15, 15:17] = m[16:18, 17] = 1.2  # two dominoes touching only at a corner
    m[0, 19] = 3.0  # a single pixel: under min_pixels
    m[8, 0] = np.nan
    out = patches(m, threshold=1.0, pixel_mm=0.1)
    assert out["count"] == 4
    np.testing.assert_allclose(np.sort(out["areas_mm2"]), [0.02, 0.02, 0.05, 0.12])
    labels = out["labels"]
    assert labels.shape == m.shape and labels[0, 19] == 0
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert labels[15, 16] != labels[16, 17]
    assert patches(m, threshold=1.0, pixel_mm=0.1, min_pixels=10)["count"] == 1


def test_map_overlap_hand_cases():
    a = np.array([[1, 1], [0, 0]], dtype=bool)
    b = np.array([[0, 1], [1, 0]], dtype=bool)
    assert map_overlap(a, b) == pytest.approx(0.5)  # 2·1 / (2 + 2)
    assert map_overlap(a, a) == 1.0
    assert map_overlap(a, ~a) == 0.0
    assert map_overlap(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    assert map_overlap(a, np.array([[1, 1], [1, 1]], dtype=bool)) == pytest.approx(4 / 6)


def test_pairs_within_reach_fill_the_near_bins_of_a_large_sheet():
    from tdsnn.analysis.maps import _pair_distances, _sample_pairs

    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, size=(20_000, 2))
    i, j = _sample_pairs(pos, 50_000, rng, reach=5.0)
    d = _pair_distances(pos, i, j)
    assert len(i) > 45_000 and (i != j).all() and d.max() <= 5.0
    # pairs about uniform over the disc: the fraction within r is about (r / reach)^2 (the
    # unit nearest a random point is a little more often a near one)
    assert np.mean(d <= 2.5) == pytest.approx(0.25, abs=0.04)
    uniform_i, uniform_j = _sample_pairs(pos, 50_000, rng)
    assert np.mean(_pair_distances(pos, uniform_i, uniform_j) <= 5.0) < 0.02


def test_morans_i_pairs_matches_the_radius_form_and_hand_cases():
    rng = np.random.default_rng(11)
    positions = rng.uniform(0, 1.0, size=(40, 2))
    values = rng.normal(size=(3, 40)) + positions[:, 0]
    dist = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    i, j = np.nonzero(np.triu((dist > 0) & (dist <= 0.3), 1))
    per_row = morans_i_pairs(values, np.column_stack([i, j]))
    for row, value in zip(values, per_row, strict=True):
        assert value == pytest.approx(dense_morans_i(row, positions, 0.3), rel=1e-12)
    # a 3 x 3 queen grid: a checkerboard is negatively, a ramp positively autocorrelated
    grid = np.array([(r, c) for r in range(3) for c in range(3)])
    queen = [(a, b) for a in range(9) for b in range(a + 1, 9)
             if max(abs(grid[a] - grid[b])) == 1]  # fmt: skip
    assert len(queen) == 20
    board = (grid.sum(1) % 2).astype(float)
    ramp = grid[:, 1].astype(float)
    i_board, i_ramp, i_flat = morans_i_pairs(np.stack([board, ramp, np.ones(9)]), queen)
    assert i_board < 0 < i_ramp and np.isnan(i_flat)
    assert np.isnan(morans_i_pairs(ramp, np.zeros((0, 2)))).all()
    # the adjacency built once gives the same values, to the bit
    adjacency = pair_adjacency(np.column_stack([i, j]), 40)
    assert np.array_equal(morans_i_pairs(values, adjacency), per_row)
    assert np.isnan(morans_i_pairs(ramp, pair_adjacency(np.zeros((0, 2)), 9))).all()
