"""``tdsnn analyze``: metrics of recordings, figures and report (the maths on plain arrays is
tested in test_analysis_maps.py)."""

import json

import numpy as np
import pytest
import torch

import tdsnn.record
from tdsnn.analysis.topography import analyze_area, stimulus_responses, synchrony_vs_distance
from tdsnn.cli import main
from tdsnn.data.probes import default_frequencies, grating_probes
from tdsnn.record import AreaNodes, RecordingMeta, RecordingWriter, TrialBatch, area_batch
from tdsnn.topo.similarity import ccg_pairs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recordings(spiking_run, tmp_path_factory):
    """Gratings and category recordings of the session's tiny trained run."""
    root = tmp_path_factory.mktemp("analysis")
    paths = {}
    for kind, extra in (("gratings", []), ("categories", ["--per-class", "3"])):
        paths[kind] = root / f"{kind}.h5"
        argv = ["record", str(spiking_run), "--stimuli", kind, *extra, "--quiet",
                "--out", str(paths[kind])]  # fmt: skip
        assert main(argv) == 0
    return paths


@pytest.mark.slow
def test_analyze_writes_metrics_figures_and_report_side_by_side(recordings, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["analyze", str(recordings["gratings"]), str(recordings["categories"]),
            "--labels", "grat,cats", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed
    assert "grat, V1: orientation_selectivity_median" in printed  # the scorecard, printed
    metrics = json.loads((out / "metrics.json").read_text())
    grat, cats = metrics["recordings"]
    assert (grat["label"], cats["label"]) == ("grat", "cats")
    v1 = grat["areas"]["V1"]
    keys = ("orientation_smoothness", "frequency_smoothness", "correlation_decay",
            "orientation_selectivity_mean", "morans_i_response", "synchrony_decay",
            "population_vector_length", "orientation_histogram", "selectivity_per_frequency",
            "map_smoothing_mm", "synchrony_window")  # fmt: skip
    for key in keys:
        assert key in v1, key
    assert 0 <= v1["orientation_selectivity_mean"] <= 1
    assert 0 <= v1["population_vector_length"] <= 1
    assert v1["receptive_field_px"] == 7.0  # stem + one block of two 3x3 convolutions
    assert sum(v1["orientation_histogram"]["counts"]) > 0
    assert len(v1["orientation_histogram"]["counts"]) == 12
    # the recorder's gratings start at one cycle per IT's field (the 16 px image): V1's
    # 7 px field leaves out the coarsest, and the report says which
    rows = v1["selectivity_per_frequency"]
    assert [r["resolvable"] for r in rows] == [r["cycles_per_image"] >= 16 / 7 for r in rows]
    assert v1["tuning_frequencies"] == [r["cycles_per_image"] for r in rows if r["resolvable"]]
    assert any("left out of the best-frequency choice" in n for n in grat["notes"]["V1"])
    curve = v1["correlation_vs_distance"]
    assert len(curve["mean"]) == len(curve["chance"]) == len(curve["bin_centers"])
    assert "expert_fraction" not in v1 and "expert_fraction" in cats["areas"]["IT"]
    assert "orientation_smoothness" not in cats["areas"]["V1"]
    assert len(cats["areas"]["IT"]["patches_per_category"]) == 10
    assert any("no grating trials" in n for n in cats["notes"]["V1"])
    for name in ("orientation_maps", "orientation_tuning", "correlation_vs_distance",
                 "smoothness", "category_maps", "synchrony_vs_distance"):  # fmt: skip
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "| grat | V1 |" in report and "| cats | IT |" in report
    assert "![Orientation preference maps](orientation_maps.png)" in report
    assert "no labelled trials: category selectivity skipped" in report
    assert "## Orientation tuning" in report and "| grat | V1 | 7 |" in report
    assert "r_CCG as the loss trains it" in report
    # every map metric beside its nulls; border units left out, and the notes say how many
    nulls = v1["nulls"]
    for key in ("correlation_decay", "morans_i_response", "orientation_smoothness"):
        assert set(nulls[key]) == {"within", "sheet"} and nulls[key]["sheet"]["draws"] == 20
    assert set(nulls["population_vector_length"]) == {"floor"}
    with tdsnn.record.open(recordings["gratings"]) as rec:
        channels = rec.area("V1").shape[0]  # the floor's N: V1's kernels per hypercolumn
    assert v1["population_vector_floor"]["random"]["kernels"] == channels
    assert v1["border_units_left_out"] > 0 and v1["map_units"] < v1["units"]
    assert any("overlaps the image border" in n for n in grat["notes"]["V1"])
    assert "## Against chance" in report and "not distinguishable from chance" in report
    assert "## Against animals" in report and "Ringach, Shapley & Hawken 2002" in report
    assert 0 <= v1["orientation_selectivity_median"] <= 1


def test_analyze_nulls_and_border_options(recordings, tmp_path, capsys):
    out = tmp_path / "kept"
    argv = ["analyze", str(recordings["gratings"]), "--nulls", "3", "--keep-border",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    v1 = json.loads((out / "metrics.json").read_text())["recordings"][0]["areas"]["V1"]
    assert v1["border_units_left_out"] == 0 and v1["map_units"] == v1["units"]
    assert v1["null_draws"] == 3 and v1["nulls"]["correlation_decay"]["within"]["draws"] == 3
    for bad in ("0", "-2"):
        argv = ["analyze", str(recordings["gratings"]), "--nulls", bad, "--out", str(tmp_path)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"--nulls must be a positive number of surrogate maps (e.g. 20), got {bad}" in err
        assert len(err.splitlines()) == 1
    for bad, message in (("0.5,-1", "must be positive hypercolumn widths"),
                         ("a,b", "must be comma-separated hypercolumn widths"),
                         ("0.5,400", "400 hypercolumns is σ =")):  # fmt: skip
        argv = ["analyze", str(recordings["gratings"]), "--pinwheel-kernels", bad, "--out",
                str(tmp_path / "k")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_analyze_rejects_a_file_that_is_not_a_recording(recordings, tmp_path, capsys):
    bad = tmp_path / "notes.h5"
    bad.write_text("hello")
    assert (
        main(["analyze", str(recordings["gratings"]), str(bad), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "not an HDF5 file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert (
        main(
            [
                "analyze",
                str(recordings["gratings"]),
                "--labels",
                "a,b",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--labels names 2 recordings, 1" in capsys.readouterr().err
    argv = ["analyze", str(recordings["gratings"]), "--smooth-mm", "-1", "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "--smooth-mm must be a number of mm >= 0 (0: none), got -1" in capsys.readouterr().err


def _write(path, positions, rasters, stimulus_index, timesteps=4, params=None, config=None):
    """A recording of one area from explicit rasters ``[T, B, N]`` (one batch)."""
    n = positions.shape[0]
    area = AreaNodes("V1", (n, 1, 1), positions.astype(np.float32), 10.0, 1.0, "grid")
    if params is None:
        params = grating_probes(8, orientations=4, cycles_per_image=(1.0,), phases=1).params
    meta = RecordingMeta((area,), timesteps, 1.0, "gratings", params, (), config or {}, {}, {})
    spikes = torch.as_tensor(rasters, dtype=torch.float32).reshape(timesteps, -1, n, 1, 1)
    with RecordingWriter(path, meta, spikes.shape[1]) as writer:
        writer.append(TrialBatch(0, np.asarray(stimulus_index), {"V1": area_batch(spikes, 0, 1.0)}))
    return tdsnn.record.open(path)


def test_stimulus_responses_average_the_repeats_of_a_stimulus(tmp_path):
    rasters = np.zeros((4, 3, 2))
    rasters[:, 0, 0] = 1  # trial 0 (stimulus 2): unit 0 spikes 4 times
    rasters[:2, 2, 0] = 1  # trial 2 (stimulus 2 again): 2 times
    rasters[0, 1, 1] = 1  # trial 1 (stimulus 0): unit 1 once
    with _write(tmp_path / "r.h5", np.array([[0, 0], [1, 0]]), rasters, [2, 0, 2]) as rec:
        responses, table = stimulus_responses(rec, "V1")
    np.testing.assert_array_equal(responses, [[0, 1], [3, 0]])  # stimuli 0 and 2, in order
    np.testing.assert_array_equal(table["orientation_deg"], [0.0, 90.0])


def test_synchrony_falls_with_distance_for_a_planted_travelling_bump(tmp_path):
    rng = np.random.default_rng(0)
    n, trials, t = 60, 200, 4
    x = np.linspace(0, 10, n)
    centre = rng.uniform(0, 10, size=(t, trials, 1))
    rasters = (np.abs(x - centre) < 1.0) & (rng.random((t, trials, n)) < 0.8)
    positions = np.stack([x, np.zeros(n)], axis=1)
    with _write(tmp_path / "s.h5", positions, rasters, np.zeros(trials, int)) as rec:
        sync = synchrony_vs_distance(rec, "V1", window=0, bins=5)
    mean = sync["mean"]
    assert mean[0] > 0.3 and mean[-1] < 0.05 and (np.diff(mean) < 0.02).all(), mean


def test_synchrony_is_the_losss_r_ccg_of_the_recorded_trains(tmp_path):
    rng = np.random.default_rng(3)
    t, trials = 6, 40
    rasters = (rng.random((t, trials, 3)) < 0.3).astype(np.float32)
    rasters[:, :, 1] = np.maximum(rasters[:, :, 1], np.roll(rasters[:, :, 0], 1, axis=0))
    positions = np.array([[0.0, 0.0], [0.5, 0.0], [3.5, 0.0]])  # one pair per bin below
    config = {"topo": {"ccg_window": None}}
    with _write(tmp_path / "c.h5", positions, rasters, np.zeros(trials, int), timesteps=t,
                config=config) as rec:  # fmt: skip
        sync = synchrony_vs_distance(rec, "V1", bins=10)
    assert sync["window"] == t // 2  # the loss's default W = floor(T/2)
    expected = ccg_pairs(torch.from_numpy(rasters), torch.tensor([[0, 1], [1, 2], [0, 2]]))
    # reach = 4 neighbourhoods = 4 mm: pair (0, 1) at 0.5 mm in bin 1, (1, 2) at 3 mm in
    # bin 7, (0, 2) at 3.5 mm in bin 8
    np.testing.assert_allclose(sync["mean"][[1, 7, 8]], expected.numpy(), rtol=1e-5)
    assert sync["count"].sum() == 3


def test_tuning_of_an_old_recording_leaves_out_what_the_field_cannot_resolve(tmp_path):
    # gratings of the old default set (1 to 6 cycles per 24 px image) shown to units of a
    # 7 px receptive field: every unit drives hardest on the coarse ramps, at 60 degrees,
    # and prefers its own orientation at the gratings its field resolves (>= 24/7 cycles)
    probes = grating_probes(24, orientations=8, cycles_per_image=default_frequencies(24),
                            phases=2)  # fmt: skip
    ori, sf = probes.params["orientation_deg"], probes.params["cycles_per_image"]
    n = 6
    planted = np.arange(n) * 30.0

    def tuned(pref):
        return np.exp(2 * np.cos(np.deg2rad(2 * (ori[:, None] - pref))))  # [S, n]

    rate = np.where(sf[:, None] < 24 / 7, 0.9 * tuned(np.full(n, 60.0)) / np.e**2,
                    0.5 * tuned(planted) / np.e**2)  # fmt: skip
    rng = np.random.default_rng(0)
    rasters = (rng.random((4, 8, len(ori), n)) < rate).astype(np.float32)  # 8 repeats
    rasters = rasters.reshape(4, -1, n)
    stimulus = np.repeat(np.arange(len(ori))[None], 8, axis=0).reshape(-1)
    config = {"model": {"area_stack": "v1", "blocks": 1}, "data": {"image_size": 24}}
    positions = rng.uniform(0, 10, size=(n, 2))
    with _write(tmp_path / "old.h5", positions, rasters, stimulus, params=probes.params,
                config=config) as rec:  # fmt: skip
        out = analyze_area(rec, "V1")
    gap = np.abs(out.arrays["preferred_orientation"] - planted)
    assert np.minimum(gap, 180 - gap).max() < 10, out.arrays["preferred_orientation"]
    assert out.metrics["receptive_field_px"] == 7.0
    coarse = [f for f in default_frequencies(24) if f < 24 / 7]
    assert any(f"{coarse[-1]:.3g} cycles" in note for note in out.notes), out.notes
    rows = out.metrics["selectivity_per_frequency"]
    assert [r["resolvable"] for r in rows] == [f >= 24 / 7 for f in default_frequencies(24)]
    assert out.metrics["tuning_frequencies"] == [f for f in default_frequencies(24) if f >= 24 / 7]
    best = [r["best_fraction"] for r in rows]
    assert sum(best) == pytest.approx(1.0) and sum(best[: len(coarse)]) == 0


def _plane_wave_map(pixels, side_mm, spacing_mm, seed=0):
    rng = np.random.default_rng(seed)
    coords = (np.arange(pixels) + 0.5) * side_mm / pixels
    y, x = np.meshgrid(coords, coords, indexing="ij")
    angles = rng.uniform(0, 2 * np.pi, 24)
    k = 2 * np.pi / spacing_mm
    phases = rng.uniform(0, 2 * np.pi, 24)
    waves = [
        np.exp(1j * (k * (np.cos(a) * x + np.sin(a) * y) + p))
        for a, p in zip(angles, phases, strict=True)
    ]
    return np.sum(waves, axis=0)


def test_pinwheels_are_measured_only_where_the_map_resolves_columns():
    from tdsnn.analysis.topography import pinwheel_measure

    z = _plane_wave_map(128, 36.75, 3.0)
    pixel = 36.75 / 128

    def area(units):
        return AreaNodes("V1", (units, 1, 1), np.zeros((units, 2), np.float32), 36.75, 1.6, "grid")

    dense, _ = pinwheel_measure(z, pixel, area(100_000))  # ~670 units per column spacing squared
    assert dense["density"] == pytest.approx(np.pi, rel=0.15)
    sparse, why = pinwheel_measure(z, pixel, area(1_000))  # ~7 units per column spacing squared
    assert sparse is None and "units per column" in why
    coarse, why = pinwheel_measure(_plane_wave_map(128, 36.75, 0.6), pixel, area(100_000))
    assert coarse is None and "not resolved" in why  # 2 px per Λ
