"""Statistics and report of ``tdsnn experiment``: intervals that cover, paired tests, sign-flip
p-values, power, corrections, summary, report."""

from __future__ import annotations

import json
import math
import re
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


# ---------------------------------------------------------------- coverage

DISTRIBUTIONS = {  # paired differences: (draw(rng, n), true mean)
    "normal": (lambda rng, n: rng.normal(0.3, 1.0, n), 0.3),
    "skewed": (lambda rng, n: rng.gamma(4.0, 1.0, n), 4.0),  # gamma(4): skewness 1
}


def _coverage(interval, draw, true_mean: float, n: int, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    covered = 0
    for k in range(trials):
        low, high = interval(draw(rng, n), k)
        covered += low <= true_mean <= high
    return covered / trials


def _t(x, k):
    d = describe(x)
    assert d["method"] == "t"
    return d["ci_low"], d["ci_high"]


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("shape", sorted(DISTRIBUTIONS))
def test_t_interval_covers_at_small_n(shape, n):
    """2 000 simulated experiments per case: the default 95 % interval covers the true mean
    difference 93-97 % of the time for normal and for skewed (skewness 1) differences."""
    draw, true_mean = DISTRIBUTIONS[shape]
    coverage = _coverage(_t, draw, true_mean, n, 2000, seed=100 + n)
    assert 0.93 <= coverage <= 0.97, coverage


def test_t_interval_undercovers_only_under_strong_skew():
    """What the t interval does not promise: exponential differences (skewness 2) at n = 5
    are covered about 88 % of the time (documented, not hidden)."""
    coverage = _coverage(_t, lambda rng, n: rng.exponential(1.0, n), 1.0, 5, 2000, seed=9)
    assert 0.85 <= coverage < 0.92, coverage


def test_bootstrap_undercovers_at_small_n_and_is_refused_there():
    """BCa (999 resamples, 500 experiments per case) covers about 70 % at n = 3, 81-86 % at
    n = 5 and 89-91 % at n = 10: below n = 10 it is refused, and even at 10 it is short."""
    found = {}
    for shape, (draw, true_mean) in DISTRIBUTIONS.items():
        for n in (3, 5, 10):

            def bca(x, k):
                low, high, _ = xstats._bootstrap_interval(x, 0.95, 999, k)
                return low, high

            found[shape, n] = _coverage(bca, draw, true_mean, n, 500, seed=5)
    for shape in DISTRIBUTIONS:
        assert found[shape, 3] < 0.8 and found[shape, 5] < 0.9, found
        assert found[shape, 3] < found[shape, 5] < found[shape, 10] < 0.94, found
    with pytest.raises(ValueError, match=r"needs n >= 10 \(got n = 9\)"):
        describe(np.arange(9.0), interval="bca")
    assert describe(np.arange(10.0), interval="bca", n_resamples=999)["method"] == "BCa"


def test_t_interval_is_the_textbook_one():
    x = np.array([0.81, 0.79, 0.86, 0.83])
    d = describe(x, confidence=0.9)
    half = stats.t.ppf(0.95, 3) * x.std(ddof=1) / 2
    assert d["ci_low"] == pytest.approx(x.mean() - half)
    assert d["ci_high"] == pytest.approx(x.mean() + half)
    assert d["method"] == "t"
    assert describe(x) == describe(x)
    with pytest.raises(ValueError, match="interval must be one of"):
        describe(x, interval="normal")


def test_describe_edge_cases_and_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = describe([])
        one = describe([0.7])
        flat = describe([0.25] * 6)
        nans = describe([1.0, np.nan, 3.0, np.nan])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "sd", "ci_low"))
    assert one["n"] == 1 and one["mean"] == 0.7
    assert math.isnan(one["sd"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert flat == {
        "mean": 0.25, "sd": 0.0, "n": 6, "ci_low": 0.25, "ci_high": 0.25, "method": "degenerate"
    }  # fmt: skip
    assert nans["n"] == 2 and nans["mean"] == 2.0 and nans["method"] == "t"


def test_bootstrap_falls_back_to_percentile_when_bca_fails(monkeypatch):
    real = stats.bootstrap

    def warning_bootstrap(*args, **kwargs):
        if kwargs.get("method") == "BCa":
            warnings.warn(stats.DegenerateDataWarning("planted"), stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(stats, "bootstrap", warning_bootstrap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = describe(np.arange(10.0), interval="bca", n_resamples=999)
    assert d["method"] == "percentile" and d["ci_low"] < 4.5 < d["ci_high"]


# ------------------------------------------------------ sign flips, power, corrections


def test_sign_flip_p_matches_brute_force_enumeration():
    import itertools

    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 5, 8, 12):
        d = rng.normal(0.4, 1.0, n)
        observed = abs(d.mean())
        flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product((1, -1), repeat=n)]
        brute = np.mean([f >= observed - 1e-12 for f in flips])
        assert xstats.sign_flip_p(d) == pytest.approx(brute, abs=1e-15), n
    assert xstats.sign_flip_p([1.0, 2.0, 3.0]) == 0.25  # the smallest p at n = 3: 2 / 8
    assert xstats.sign_flip_p([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="n = 13"):
        xstats.sign_flip_p(np.ones(13))


def test_power_and_minimum_detectable_effect():
    sd, n, alpha = 0.02, 5, 0.05
    mde = xstats.min_detectable_effect(sd, n, alpha)
    assert xstats.power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-9)
    # the normal approximation (z_{1-α/2} + z_{0.8}) sd/√n underestimates it at small n
    assert mde > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)
    rng = np.random.default_rng(4)  # simulated t-tests at that effect reject ~80 % of the time
    d = rng.normal(mde, sd, (4000, n))
    rejected = np.mean(stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha)
    assert 0.77 < rejected < 0.83, rejected
    assert xstats.min_detectable_effect(sd, 20, alpha) < mde / 2
    assert xstats.min_detectable_effect(sd, n, alpha / 10) > mde
    assert xstats.min_detectable_effect(0.0, n, alpha) == 0.0
    assert math.isnan(xstats.min_detectable_effect(sd, 1, alpha))

    needed = xstats.seeds_needed(mde, sd, alpha)
    assert needed == n
    assert xstats.seeds_needed(mde / 2, sd, alpha) > 2 * n
    assert xstats.power(mde / 2, sd, xstats.seeds_needed(mde / 2, sd, alpha), alpha) >= 0.8
    assert xstats.power(mde / 2, sd, xstats.seeds_needed(mde / 2, sd, alpha) - 1, alpha) < 0.8
    assert xstats.seeds_needed(0.0, sd, alpha) is None
    assert xstats.seeds_needed(1e-9, sd, alpha) is None  # over 100 000 seeds


@pytest.mark.parametrize("method, theirs", [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_match_statsmodels(method, theirs):
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(8)
    for m in (1, 2, 5, 22, 60):
        p = rng.uniform(0, 1, m) ** 3  # many small p-values
        p[rng.integers(m)] = p[0]  # a tie
        expected = multitest.multipletests(p, alpha=0.05, method=theirs)[1]
        np.testing.assert_allclose(xstats.adjust_p(p, method), expected, rtol=1e-12)
    p = np.array([0.01, np.nan, 0.04, 0.03])
    got = xstats.adjust_p(p, method)
    assert math.isnan(got[1])
    expected = multitest.multipletests(p[[0, 2, 3]], method=theirs)[1]
    np.testing.assert_allclose(got[[0, 2, 3]], expected)
    assert xstats.adjust_p(p, "none")[0] == 0.01
    with pytest.raises(ValueError, match="correction must be one of"):
        xstats.adjust_p(p, "bonferonni")


# ------------------------------------------------------- paired_difference


def test_equal_arms_are_equivalent_and_unequal_arms_are_not():
    rng = np.random.default_rng(7)
    a = rng.normal(0.8, 0.05, 10)
    same = paired_difference(a, a + rng.normal(0, 0.002, 10), equivalence=0.05)
    assert same["tost"]["equivalent"] is True and same["tost"]["p"] < 0.05
    assert same["tost"]["delta"] == 0.05
    assert same["ci_low"] < 0.01 and same["ci_high"] > -0.01

    b = a + 0.2 + rng.normal(0, 0.002, 10)
    apart = paired_difference(a, b, equivalence=0.05)
    assert apart["tost"]["equivalent"] is False
    assert apart["direction"] == "higher" and apart["ci_low"] > 0
    assert apart["mean_diff"] == pytest.approx(np.mean(b - a))  # second minus first
    expected = stats.ttest_rel(b, a)
    assert apart["t"] == pytest.approx(expected.statistic) and apart["t"] > 0
    assert apart["p"] == pytest.approx(expected.pvalue)
    assert apart["p_sign_flip"] == pytest.approx(2 / 2**10)
    assert apart["method"] == "t" and apart["mde"] > 0

    reverse = paired_difference(b, a)
    assert reverse["direction"] == "lower" and "tost" not in reverse


def test_interval_and_t_test_agree():
    """The t interval excludes 0 exactly when the t-test's p < 1 - confidence."""
    rng = np.random.default_rng(12)
    for k in range(200):
        n = int(rng.integers(3, 11))
        d = paired_difference(np.zeros(n), rng.normal(0.5, 1.0, n))
        assert (d["p"] < 0.05) == (d["ci_low"] > 0 or d["ci_high"] < 0), (k, d)


def test_tost_p_is_the_larger_one_sided_p():
    rng = np.random.default_rng(11)
    a = rng.normal(0, 1, 12)
    b = a + rng.normal(0.02, 0.05, 12)
    d = b - a
    got = paired_difference(a, b, equivalence=0.03)["tost"]
    lower = stats.ttest_1samp(d, -0.03, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.03, alternative="less").pvalue
    assert got["p"] == pytest.approx(max(lower, upper))
    assert got["equivalent"] is bool(max(lower, upper) < 0.05)


def test_pairing_separates_a_shift_hidden_by_seed_variance():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 10, 8)  # large between-seed spread
    b = a + 0.5 + rng.normal(0, 0.05, 8)  # small constant shift within each pair
    unpaired = stats.ttest_ind(b, a)
    assert unpaired.pvalue > 0.5
    paired = paired_difference(a, b)
    assert paired["ci_low"] > 0.4 and paired["ci_high"] < 0.6
    assert paired["direction"] == "higher" and paired["p"] < 1e-6


def test_paired_difference_drops_incomplete_pairs_and_checks_input():
    a = [1.0, 2.0, np.nan, 4.0, 5.0]
    b = [1.5, np.nan, 3.5, 4.5, 5.5]
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["mean_diff"] == pytest.approx(0.5)
    assert d["method"] == "degenerate" and d["ci_low"] == d["ci_high"] == pytest.approx(0.5)
    assert d["p"] == 0.0 and d["mde"] == 0.0
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_difference([1.0, 2.0], [1.0, 3.0], equivalence=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = paired_difference([1.0], [2.0], equivalence=0.1)
    assert single["n"] == 1 and math.isnan(single["p"]) and math.isnan(single["ci_low"])
    assert single["tost"]["equivalent"] is False and math.isnan(single["mde"])


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
    summary = summarize(rows, equivalence={"weight-noise": 0.5})
    assert summary["confidence"] == 0.95 and summary["n_resamples"] is None
    assert summary["interval"] == "Student t"
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
    direct = paired_difference(none[1:], stc[1:])
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
    summary = summarize(rows, comparisons=[("b", "a")], equivalence={"test_acc": 0.1})
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
        summarize(rows, comparisons=[("a", "c")])
    with pytest.raises(ValueError, match="two rows"):
        summarize(rows + _rows("a", [3.0]))
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
    summary = summarize(rows, equivalence={"test_acc": 0.01})
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
    assert f"{diff['p']:.4g}" in text and "higher" in text and "±0.01, p = " in text
    assert f"{diff['p_sign_flip']:.4g}" in text and f"{diff['mde']:.4g}" in text
    assert "Student t" in text and "exploratory, uncorrected" in text
    assert "none / topography_score/V1: 1" in text

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == [
        "curve_weight-noise.png", "measure_test-acc.png", "measure_topography-score-v1.png"
    ]  # fmt: skip
    for link in links:
        image = path.parent / link
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_bootstrap_summaries_fall_back_to_t_where_n_is_below_ten():
    rows = _rows("a", np.arange(12.0), seeds=range(12)) + _rows("b", np.arange(12.0) ** 1.1)
    rows += _rows("a", [1.0, 2.0, 4.0], "few") + _rows("b", [1.5, 2.5, 3.0], "few")
    summary = summarize(rows, interval="bca", n_resamples=999)
    assert summary["interval"].startswith("BCa") and summary["n_resamples"] == 999
    assert summary["arms"]["a"]["test_acc"]["method"] == "BCa"
    assert summary["arms"]["a"]["few"]["method"] == "t"
    assert summary["differences"]["b - a"]["few"]["method"] == "t"


def test_margins_are_looked_up_per_measure():
    margins = {"test_acc": 0.01, "weight-noise/auc": 0.02, "morans_i": 0.05, "noise@0.2": 0.3}
    assert xstats.margin_for(margins, "test_acc") == 0.01
    assert xstats.margin_for(margins, "weight-noise/auc") == 0.02
    assert xstats.margin_for(margins, "representation/IT/morans_i") == 0.05
    assert xstats.margin_for(margins, "noise@0.2") == 0.3
    assert xstats.margin_for(margins, "noise@0.1") is None
    assert xstats.margin_for(margins, "input-noise/white-noise/auc") is None
    assert xstats.margin_for({}, "test_acc") is None


def test_verdicts_of_a_published_direction():
    judge = xstats.judge
    higher = paired_difference([0.1, 0.2, 0.3, 0.2], [0.5, 0.7, 0.6, 0.65], equivalence=0.01)
    assert judge(higher, "higher", higher["p"], 0.05) == "reproduces"
    assert judge(higher, "lower", higher["p"], 0.05) == "opposite to published"
    assert judge(higher, "higher", 0.2, 0.05) == "not shown"  # after correction
    same = paired_difference([0.5, 0.6, 0.7, 0.55], [0.5001, 0.5999, 0.7002, 0.5501],
                             equivalence=0.05)  # fmt: skip
    assert judge(same, "higher", same["p"], 0.05) == "equivalent within ±0.05"
    noisy = paired_difference([0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.7, 0.3], equivalence=0.01)
    assert judge(noisy, "higher", noisy["p"], 0.05) == "not shown"
    # significant and inside the margin: the direction wins, never both words
    small = paired_difference(np.zeros(8), 0.01 + np.linspace(-1e-3, 1e-3, 8), equivalence=0.05)
    assert small["tost"]["equivalent"] and small["p"] < 0.05
    assert judge(small, "lower", small["p"], 0.05) == "opposite to published"
