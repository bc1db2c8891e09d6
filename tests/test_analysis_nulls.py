"""Map metrics against their nulls (:mod:`tdsnn.analysis.nulls`, :mod:`tdsnn.analysis.chance`):
planted maps lie far outside them, random maps inside, and the random field keeps Λ."""

import numpy as np
import pytest
from test_analysis_maps import _channel_map

from tdsnn.analysis import maps, nulls
from tdsnn.errors import ConfigError


def _places(positions, theta, count, seed, pairs=20_000):
    metric = nulls.smoothness_null(positions, theta, period=180.0, max_distance=3.0,
                                   max_pairs=pairs)  # fmt: skip
    surrogates = nulls.surrogate_orders(positions, 1.0, count, seed)
    values, draws = nulls.position_nulls([lambda order: {"s": metric(order)}], surrogates)
    return {kind: nulls.compare(values["s"], d) for kind, d in draws["s"].items()}


def test_within_hypercolumn_permutations_keep_each_unit_in_its_cell():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 6.0, size=(600, 2))
    cells = nulls.hypercolumn_cells(positions, 1.5)
    assert len(np.unique(cells)) == 16
    order = nulls.permutation("within", cells, rng)
    np.testing.assert_array_equal(cells[order], cells)  # every value stays in its cell
    assert (order != np.arange(600)).mean() > 0.9  # the order inside is destroyed
    np.testing.assert_array_equal(np.sort(order), np.arange(600))
    spread = nulls.permutation("sheet", cells, rng)
    assert (cells[spread] != cells).mean() > 0.8
    with pytest.raises(ValueError, match="unknown null"):
        nulls.permutation("rows", cells, rng)


def test_the_fixed_sample_metrics_equal_the_maps_functions_on_the_map_itself():
    positions, theta, _ = _channel_map(16, 10, 4.0, seed=2)
    identity = np.arange(len(theta))
    direct = maps.smoothness(positions, theta, period=180.0, max_distance=3.0, seed=5)
    fixed = nulls.smoothness_null(positions, theta, period=180.0, max_distance=3.0, seed=5)
    assert fixed(identity) == direct["smoothness"]
    values = np.cos(np.deg2rad(2 * theta))
    morans = nulls.morans_null(positions, values, 1.6, identity)
    assert morans(identity) == pytest.approx(maps.morans_i(values, positions, radius=1.6))
    order = np.random.default_rng(0).permutation(len(theta))
    assert morans(order) == pytest.approx(maps.morans_i(values[order], positions, radius=1.6))
    responses = np.random.default_rng(1).random((30, len(theta)))
    decay = nulls.decay_null(responses, positions, bins=12, max_distance=4.0, quantile=0.95)
    curve = maps.correlation_vs_distance(responses, positions, max_distance=4.0, boots=0)
    finite = curve["mean"][np.isfinite(curve["mean"])]
    assert decay(identity) == pytest.approx(finite[0] - finite[-1])


def test_a_planted_map_lies_far_outside_every_null():
    positions, theta, _ = _channel_map(16, 12, 4.0, seed=0)
    for kind, place in _places(positions, theta, 20, seed=1).items():
        assert place["z"] > 5, (kind, place)
        assert place["percentile"] == 100.0 and place["chance"] is False


@pytest.mark.slow
def test_a_map_of_random_preferences_sits_inside_its_nulls():
    inside = {kind: 0 for kind in nulls.POSITION_NULLS}
    for seed in range(50):
        positions, theta, _ = _channel_map(16, 8, 4.0, seed=seed, planted=False)
        for kind, place in _places(positions, theta, 20, seed + 100).items():
            inside[kind] += abs(place["z"]) < 2
    assert min(inside.values()) >= 45, inside  # >= 90 % of 50 seeds


def test_the_random_field_null_keeps_the_column_spacing_of_a_planted_map():
    anchors, sigma = 40, 0.75
    positions, theta, _ = _channel_map(16, anchors, 4.0, seed=0)
    pixel = sigma / 3
    z = maps.unit_map(positions, np.exp(2j * np.deg2rad(theta)), side_mm=anchors,
                      sigma_mm=sigma, pixel_mm=pixel)  # fmt: skip
    spacing = maps.column_spacing(z, pixel)
    rng = np.random.default_rng(3)
    for _ in range(5):
        field = nulls.random_field(z, rng)
        assert np.isnan(field).sum() == np.isnan(z).sum()
        assert maps.column_spacing(field, pixel) == pytest.approx(spacing, rel=0.1)
        assert np.nanmean(np.abs(field) ** 2) == pytest.approx(np.nanmean(np.abs(z) ** 2), rel=0.01)
    # a random field's pinwheels: about π per Λ², as Kaschube et al.'s maps
    density = np.mean([maps.pinwheel_density(nulls.random_field(z, rng), pixel)["density"]
                       for _ in range(5)])  # fmt: skip
    assert density == pytest.approx(np.pi, rel=0.25)


def test_the_population_vector_floor_of_few_kernels():
    floor = nulls.preference_floor(np.linspace(0, 180, 64, endpoint=False), 16, 4_000, seed=0)
    # 16 random angles: |mean exp(2iθ)| has mean sqrt(pi/4/16) = 0.22 (Rayleigh)
    assert floor["random"]["mean"] == pytest.approx(np.sqrt(np.pi / 64), rel=0.05)
    assert floor["random"]["low"] < 0.22 < floor["random"]["high"]
    assert floor["own"]["kernels"] == 16 and 0 < floor["own"]["mean"] < floor["random"]["mean"]


def test_compare_places_a_value_among_its_draws():
    draws = np.arange(100.0)
    assert nulls.compare(49.5, draws)["percentile"] == 50.0
    assert nulls.compare(49.5, draws)["chance"] is True
    far = nulls.compare(500.0, draws)
    assert far["chance"] is False and far["z"] > 10 and far["percentile"] == 100.0
    assert nulls.compare(1.0, np.full(5, np.nan))["z"] is None
    assert nulls.compare(1.0, np.ones(5))["z"] is None  # no spread, no z


@pytest.mark.parametrize("count", [0, -3, 2.5, True])
def test_a_null_count_must_be_a_positive_integer(count):
    with pytest.raises(ConfigError, match="--nulls must be a positive number"):
        nulls.check_nulls(count)


def test_the_scorecard_sets_measured_values_beside_their_nulls_and_animal_values():
    from tdsnn.analysis.references import REFERENCES, scorecard, scorecard_line

    place = nulls.compare(2.0, np.linspace(0.5, 1.5, 20))
    metrics = {"pinwheels": {"density": 2.0}, "nulls": {"pinwheel_density": {"within": place}}}
    rows = scorecard("V1", metrics)
    reference = next(r for r in REFERENCES if r.metric == "pinwheels.density")
    assert [r["metric"] for r in rows] == ["pinwheels.density"]
    assert rows[0]["measured"] == 2.0 and rows[0]["reference"] == reference.value
    line = scorecard_line("stc", "V1", rows[0])
    assert line.startswith("stc, V1: pinwheels.density 2 (nulls: within 1 ± 0.31)")
    assert reference.source in line
    assert scorecard("IT", metrics) == []  # no reference for IT's pinwheels
    assert scorecard("V1", {}) == []  # nothing measured, nothing compared
    for ref in REFERENCES:  # every reference names its source
        assert ref.source and ref.species and np.isfinite(ref.value)


def test_the_value_beside_the_nulls_is_the_headline_metric():
    """The identity order gives each area's headline value exactly (silent units' NaN
    preferences included), so the Against chance table and the headline agree."""
    positions, theta, _ = _channel_map(16, 10, 4.0, seed=4)
    theta = theta.copy()
    theta[::7] = np.nan  # silent units have no preference
    identity = np.arange(len(theta))
    fixed = nulls.smoothness_null(positions, theta, period=180.0, max_distance=3.0, seed=2)
    direct = maps.smoothness(positions, theta, period=180.0, max_distance=3.0, seed=2)
    assert fixed(identity) == direct["smoothness"]
    responses = np.random.default_rng(5).random((40, len(theta)))
    responses[:, ::5] = 1.0  # constant units are left out of the correlations
    decay = nulls.decay_null(responses, positions, bins=12, max_distance=4.0, quantile=0.95)
    curve = maps.correlation_vs_distance(responses, positions, max_distance=4.0, boots=0)
    finite = curve["mean"][np.isfinite(curve["mean"])]
    assert decay(identity) == pytest.approx(finite[0] - finite[-1], abs=1e-12)
