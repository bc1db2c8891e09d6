"""Statistics and report of ``tdsnn experiment``: bootstrap CIs, paired tests, summary, report."""

from __future__ import annotations

import json
import math
import re
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from tdsnn.experiment import stats as xstats
from tdsnn.experiment.report import slug, write_report
from tdsnn.experiment.stats import (
    describe,
    measure_key,
    pair_rows,
    paired_difference,
    summarize,
    verdict,
)


def _rows(arm, values, measure="test_acc", level=None, seeds=None):
    seeds = range(len(values)) if seeds is None else seeds
    return [
        {"arm": arm, "seed": s, "measure": measure, "level": level, "value": float(v)}
        for s, v in zip(seeds, values, strict=True)
    ]


def _plain(value) -> bool:
    """True when ``value`` holds only dict, list, str, int, float, bool and None (no numpy)."""
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


# ---------------------------------------------------------------- describe


def test_bca_interval_covers_the_true_mean_at_about_the_nominal_rate():
    true_mean, sd, n, trials = 3.0, 2.0, 20, 200
    covered, widths = 0, []
    start = time.perf_counter()
    for k in range(trials):
        x = np.random.default_rng(1000 + k).normal(true_mean, sd, n)
        d = describe(x, n_resamples=2000, seed=k)
        assert d["method"] == "BCa"
        assert d["n"] == n and d["mean"] == pytest.approx(x.mean())
        assert d["sd"] == pytest.approx(x.std(ddof=1))
        assert d["ci_low"] < d["mean"] < d["ci_high"]
        covered += d["ci_low"] <= true_mean <= d["ci_high"]
        widths.append(d["ci_high"] - d["ci_low"])
    elapsed = time.perf_counter() - start
    coverage = covered / trials
    assert 0.90 <= coverage <= 0.995, coverage
    t_width = 2 * stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # expected t-interval width
    assert 0.6 * t_width < np.mean(widths) < 1.5 * t_width
    assert elapsed < 10, f"200 bootstraps took {elapsed:.1f} s"


def test_describe_is_reproducible_and_confidence_matters():
    x = np.random.default_rng(0).normal(0, 1, 15)
    assert describe(x, seed=3, n_resamples=999) == describe(x, seed=3, n_resamples=999)
    narrow = describe(x, confidence=0.5, n_resamples=999)
    wide = describe(x, confidence=0.99, n_resamples=999)
    assert wide["ci_high"] - wide["ci_low"] > 2 * (narrow["ci_high"] - narrow["ci_low"])


def test_describe_edge_cases_and_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = describe([])
        one = describe([0.7])
        flat = describe([0.25] * 6)
        nans = describe([1.0, np.nan, 3.0, np.nan], n_resamples=999)
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "sd", "ci_low"))
    assert one["n"] == 1 and one["mean"] == 0.7
    assert math.isnan(one["sd"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert flat == {
        "mean": 0.25, "sd": 0.0, "n": 6, "ci_low": 0.25, "ci_high": 0.25, "method": "degenerate"
    }  # fmt: skip
    assert nans["n"] == 2 and nans["mean"] == 2.0 and nans["method"] in ("BCa", "percentile")


def test_describe_falls_back_to_percentile_when_bca_fails():
    # one bootstrap resample: the BCa bias correction is undefined (scipy warns, returns NaN)
    x = [0.1, 0.4, 0.2, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = describe(x, n_resamples=1)
    assert d["method"] == "percentile"
    assert math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])


def test_describe_falls_back_when_bca_only_warns(monkeypatch):
    real = stats.bootstrap

    def warning_bootstrap(*args, **kwargs):
        if kwargs.get("method") == "BCa":
            warnings.warn(stats.DegenerateDataWarning("planted"), stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(xstats.stats, "bootstrap", warning_bootstrap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = describe(np.arange(10.0), n_resamples=999)
    assert d["method"] == "percentile" and d["ci_low"] < 4.5 < d["ci_high"]


# ------------------------------------------------------- paired_difference


def test_equal_arms_are_equivalent_and_unequal_arms_are_not():
    rng = np.random.default_rng(7)
    a = rng.normal(0.8, 0.05, 10)
    same = paired_difference(a, a + rng.normal(0, 0.002, 10), equivalence=0.05, n_resamples=999)
    assert same["tost"]["equivalent"] is True and same["tost"]["p"] < 0.05
    assert same["tost"]["delta"] == 0.05
    assert same["verdict"].startswith("equivalent within ±0.05")
    assert same["ci_low"] < 0.01 and same["ci_high"] > -0.01

    b = a + 0.2 + rng.normal(0, 0.002, 10)
    apart = paired_difference(a, b, equivalence=0.05, n_resamples=999)
    assert apart["tost"]["equivalent"] is False
    assert apart["direction"] == "higher" and apart["ci_low"] > 0
    assert apart["verdict"] == "not shown equivalent; higher"
    assert apart["mean_diff"] == pytest.approx(np.mean(b - a))  # second minus first
    expected = stats.ttest_rel(b, a)
    assert apart["t"] == pytest.approx(expected.statistic) and apart["t"] > 0
    assert apart["p"] == pytest.approx(expected.pvalue)

    reverse = paired_difference(b, a, n_resamples=999)
    assert reverse["direction"] == "lower" and reverse["verdict"] == "lower"
    assert "tost" not in reverse


def test_tost_p_is_the_larger_one_sided_p():
    rng = np.random.default_rng(11)
    a = rng.normal(0, 1, 12)
    b = a + rng.normal(0.02, 0.05, 12)
    d = b - a
    got = paired_difference(a, b, equivalence=0.03, n_resamples=999)["tost"]
    lower = stats.ttest_1samp(d, -0.03, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.03, alternative="less").pvalue
    assert got["p"] == pytest.approx(max(lower, upper))
    assert got["equivalent"] is bool(max(lower, upper) < 0.05)


def test_pairing_separates_a_shift_hidden_by_seed_variance():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 10, 8)  # large between-seed spread
    b = a + 0.5 + rng.normal(0, 0.05, 8)  # small constant shift within each pair
    unpaired = stats.bootstrap(
        (b, a),
        lambda y, x, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        n_resamples=999,
        vectorized=True,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert unpaired.low < 0 < unpaired.high
    paired = paired_difference(a, b, n_resamples=999)
    assert paired["ci_low"] > 0.4 and paired["ci_high"] < 0.6
    assert paired["direction"] == "higher" and paired["p"] < 1e-6


def test_paired_difference_drops_incomplete_pairs_and_checks_input():
    a = [1.0, 2.0, np.nan, 4.0, 5.0]
    b = [1.5, np.nan, 3.5, 4.5, 5.5]
    d = paired_difference(a, b, n_resamples=999)
    assert d["n"] == 3 and d["mean_diff"] == pytest.approx(0.5)
    assert d["method"] == "degenerate" and d["ci_low"] == d["ci_high"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_difference([1.0, 2.0], [1.0, 3.0], equivalence=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = paired_difference([1.0], [2.0], equivalence=0.1)
    assert single["n"] == 1 and math.isnan(single["p"]) and math.isnan(single["ci_low"])
    assert single["tost"]["equivalent"] is False
    assert single["verdict"] == "not shown equivalent; no difference shown"


# ---------------------------------------------------------------- summarize


def test_measure_key_names_scalars_and_curve_points():
    assert measure_key("test_acc", None) == "test_acc"
    assert measure_key("weight-noise", 0.1) == "weight-noise@0.1"
    assert measure_key("input-noise/white", 0) == "input-noise/white@0"
    assert measure_key("pruning", 0.50) == "pruning@0.5"


def _experiment(seeds=5):
    rng = np.random.default_rng(0)
    base = rng.normal(0.8, 0.03, seeds)
    arms = {"none": base, "stc": base + 0.05, "relu-none": base - 0.1}
    rows = []
    for arm, acc in arms.items():
        rows += _rows(arm, acc + rng.normal(0, 0.002, seeds))
        for level in (0.0, 0.1, 0.2):
            rows += _rows(arm, acc - level + rng.normal(0, 0.01, seeds), "weight-noise", level)
    return rows


def test_summarize_structure_order_and_json():
    rows = _experiment()
    rows[0]["value"] = math.nan  # arm "none", seed 0, test_acc
    summary = summarize(rows, equivalence={"weight-noise": 0.5}, n_resamples=999)
    assert summary["confidence"] == 0.95 and summary["n_resamples"] == 999
    assert summary["bootstrap"] == "BCa (scipy.stats.bootstrap)"
    assert list(summary["arms"]) == ["none", "stc", "relu-none"]
    assert list(summary["arms"]["stc"]) == [
        "test_acc", "weight-noise@0", "weight-noise@0.1", "weight-noise@0.2"
    ]  # fmt: skip
    assert list(summary["differences"]) == ["stc - none", "relu-none - none", "relu-none - stc"]
    assert summary["dropped_nan"] == {"none": {"test_acc": 1}, "stc": {}, "relu-none": {}}
    assert summary["arms"]["none"]["test_acc"]["n"] == 4
    assert summary["arms"]["stc"]["test_acc"]["n"] == 5

    diff = summary["differences"]["stc - none"]
    assert diff["test_acc"]["pairs"] == 4 and diff["test_acc"]["n"] == 4  # seed 0 unpaired
    assert diff["test_acc"]["direction"] == "higher"
    assert "tost" not in diff["test_acc"]  # margin given only for weight-noise
    assert diff["weight-noise@0.1"]["tost"]["delta"] == 0.5
    assert diff["weight-noise@0.1"]["tost"]["equivalent"] is True
    assert summary["differences"]["relu-none - stc"]["test_acc"]["direction"] == "lower"

    none = [r["value"] for r in rows if r["arm"] == "none" and r["measure"] == "test_acc"]
    stc = [r["value"] for r in rows if r["arm"] == "stc" and r["measure"] == "test_acc"]
    direct = paired_difference(none[1:], stc[1:], n_resamples=999)
    assert diff["test_acc"]["ci_low"] == direct["ci_low"]
    assert diff["test_acc"]["p"] == direct["p"]

    assert _plain(summary)
    again = json.loads(json.dumps(summary, allow_nan=True))
    assert again["arms"]["stc"]["weight-noise@0.2"]["mean"] == pytest.approx(
        summary["arms"]["stc"]["weight-noise@0.2"]["mean"]
    )


def test_summarize_pairs_only_shared_seeds_and_counts_nan():
    rows = _rows("a", [1.0, 2.0, 3.0, math.nan], seeds=[0, 1, 2, 3])
    rows += _rows("b", [1.5, math.nan, 3.5, 4.5, 5.5], seeds=[0, 1, 2, 3, 4])
    rows += _rows("a", [math.nan, math.nan], "broken", seeds=[0, 1])
    rows += _rows("b", [0.3, 0.4], "broken", seeds=[0, 1])
    paired = pair_rows(rows, "a", "b")
    seeds, va, vb = paired["test_acc"]
    assert seeds == [0, 2] and va.tolist() == [1.0, 3.0] and vb.tolist() == [1.5, 3.5]
    assert paired["broken"][0] == []
    summary = summarize(rows, comparisons=[("b", "a")], equivalence=0.1, n_resamples=999)
    assert list(summary["differences"]) == ["a - b"]
    assert summary["differences"]["a - b"]["test_acc"]["mean_diff"] == pytest.approx(-0.5)
    assert summary["differences"]["a - b"]["test_acc"]["pairs"] == 2
    assert summary["dropped_nan"] == {"a": {"test_acc": 1, "broken": 2}, "b": {"test_acc": 1}}
    broken = summary["arms"]["a"]["broken"]
    assert broken["n"] == 0 and math.isnan(broken["mean"])
    assert summary["differences"]["a - b"]["broken"]["pairs"] == 0
    assert _plain(summary)
    json.dumps(summary, allow_nan=True)


def test_summarize_rejects_duplicates_and_unknown_arms():
    rows = _rows("a", [1.0, 2.0]) + _rows("b", [1.0, 2.0])
    with pytest.raises(ValueError, match="unknown arm"):
        summarize(rows, comparisons=[("a", "c")], n_resamples=99)
    with pytest.raises(ValueError, match="two rows"):
        summarize(rows + _rows("a", [3.0]), n_resamples=99)
    with pytest.raises(ValueError, match="two rows"):  # 0.1 and 0.10 are one level
        summarize(_rows("a", [1.0], "noise", 0.1) + _rows("a", [1.0], "noise", 0.10))


# ------------------------------------------------------------------- report


def test_slug():
    assert slug("topography_score/V1") == "topography-score-v1"
    assert slug("input-noise/white") == "input-noise-white"
    assert slug("//") == "measure"


def test_write_report(tmp_path):
    rows = _rows("none", [0.81, 0.79, 0.80]) + _rows("stc", [0.84, 0.83, 0.86])
    for level in (0.0, 0.1, 0.2):
        rows += _rows("none", [0.8 - level, 0.79 - level, 0.81 - level], "weight-noise", level)
        rows += _rows("stc", [0.85 - level / 2, 0.84 - level / 2, 0.86], "weight-noise", level)
    rows += _rows("none", [math.nan, 0.2, 0.3], "topography_score/V1")
    rows += _rows("stc", [0.5, 0.6, 0.7], "topography_score/V1")
    summary = summarize(rows, equivalence=0.01, n_resamples=999)
    path = write_report(rows, summary, tmp_path / "out", title="STC test", notes=["toy data"])

    assert path == tmp_path / "out" / "report.md" and path.is_file()
    text = path.read_text()
    assert text.startswith("# STC test") and "- toy data" in text
    assert "| none | 3 |" in text and "| stc | 3 |" in text
    assert "| none | 2 |" in text  # the NaN seed is left out of topography_score/V1
    assert "95 % CI" in text and "stc - none" in text
    for key in ("test_acc", "weight-noise@0.1"):
        for arm in ("none", "stc"):
            entry = summary["arms"][arm][key]
            assert f"{entry['ci_low']:.4g}" in text and f"{entry['ci_high']:.4g}" in text
    diff = summary["differences"]["stc - none"]["test_acc"]
    assert f"[{diff['ci_low']:.4g}, {diff['ci_high']:.4g}]" in text
    assert f"{diff['p']:.4g}" in text and "higher" in text and "not shown equivalent" in text
    assert "none / topography_score/V1: 1" in text

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == [
        "curve_weight-noise.png", "measure_test-acc.png", "measure_topography-score-v1.png"
    ]  # fmt: skip
    for link in links:
        image = path.parent / link
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_verdict_of_a_published_direction():
    higher = paired_difference([0.1, 0.2, 0.3, 0.2], [0.5, 0.7, 0.6, 0.65], equivalence=0.01)
    assert verdict(higher, "higher") == "reproduces"
    assert verdict(higher, "lower") == "reverses"
    same = paired_difference([0.5, 0.6, 0.7, 0.55], [0.5001, 0.5999, 0.7002, 0.5501],
                             equivalence=0.05)  # fmt: skip
    assert verdict(same, "higher") == "equivalent within ±0.05"
    noisy = paired_difference([0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.7, 0.3], equivalence=0.01)
    assert verdict(noisy, "higher") == "inconclusive"
