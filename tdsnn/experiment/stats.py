"""Statistics of an experiment: intervals of arm means, paired differences, corrected verdicts.

Rows are plain dicts ``{"arm": str, "seed": int, "measure": str, "level": float | None,
"value": float}``: ``level`` is ``None`` for scalar measures and a number for points of a
curve. Seed ``k`` of every arm shares its initial weights and data order, so differences
between arms are paired by seed.

Intervals of means are Student t intervals by default (``interval="t"``), which cover at the
nominal rate for normal data at any n >= 2; the BCa bootstrap (:func:`scipy.stats.bootstrap`)
is an option refused below n = 10, where it undercovers (with n = 3 it cannot leave the
sample's range). Paired tests are the t-test on the differences, with an exact sign-flip
permutation p-value beside it for n <= 12 (all 2^n sign vectors), a TOST equivalence test
against a margin in the measure's units, and the minimum detectable effect at 80 % power.
Published directions are judged on p-values corrected across the spec's primary directions
(Holm or Benjamini-Hochberg).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "CORRECTIONS",
    "INTERVALS",
    "MIN_BOOTSTRAP_N",
    "adjust_p",
    "describe",
    "judge",
    "margin_for",
    "measure_key",
    "min_detectable_effect",
    "paired_difference",
    "pair_rows",
    "power",
    "seeds_needed",
    "sign_flip_p",
    "summarize",
    "table",
]

INTERVALS = ("t", "bca")  # Student t | BCa bootstrap
CORRECTIONS = ("holm", "bh", "none")
MIN_BOOTSTRAP_N = 10  # below this a bootstrap interval undercovers: refused
MAX_SIGN_FLIP_N = 12  # exact sign-flip p-values enumerate all 2^n sign vectors up to here
POWER = 0.8
METHOD_NAMES = {"t": "Student t", "bca": "BCa bootstrap (scipy.stats.bootstrap)"}
NAN = float("nan")


def measure_key(measure: str, level: float | None) -> str:
    """Summary key of a measure: ``measure`` for scalars, ``f"{measure}@{level:g}"`` for curves."""
    return measure if level is None else f"{measure}@{float(level):g}"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def check_bootstrap(n: int, where: str = "") -> None:
    """Raise ``ValueError`` when a bootstrap interval is asked for at ``n < 10``."""
    if n < MIN_BOOTSTRAP_N:
        at = f" for {where}" if where else ""
        raise ValueError(
            f"a bootstrap interval needs n >= {MIN_BOOTSTRAP_N} (got n = {n}{at}): below that "
            "it undercovers; use the t interval (interval: t)"
        )


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * np.std(x, ddof=1) / math.sqrt(x.size)
    mean = float(np.mean(x))
    return mean - float(half), mean + float(half)


def _bootstrap_interval(
    x: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, str]:
    """BCa interval of the mean, the percentile interval where BCa gives NaN or warns."""
    from scipy import stats

    # scipy >= 1.15 takes ``rng``; older releases only ``random_state``.
    parameters = inspect.signature(stats.bootstrap).parameters
    rng_keyword = "rng" if "rng" in parameters else "random_state"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = stats.bootstrap(
                (x,), np.mean, n_resamples=n_resamples, vectorized=True, axis=0,
                confidence_level=confidence, method=method,
                **{rng_keyword: np.random.default_rng(seed)},
            )  # fmt: skip
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not caught and math.isfinite(low) and math.isfinite(high):
            break
    return low, high, method


def describe(
    values: Iterable[float],
    *,
    confidence: float = 0.95,
    interval: str = "t",
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """Mean of ``values`` (shape ``(n,)``, NaNs dropped) with a confidence interval of the mean.

    Returns ``{"mean", "sd" (ddof=1), "n", "ci_low", "ci_high", "method"}`` in the units of
    ``values``. ``method`` is ``"t"`` (Student t, the default), ``"BCa"`` or ``"percentile"``
    (``interval="bca"``; percentile where BCa fails; refused with ``ValueError`` below n = 10),
    ``"degenerate"`` when all values are equal (CI = (mean, mean)), ``"none"`` when ``n < 2``.
    Emits no warnings.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {list(INTERVALS)}, got {interval!r}")
    x = np.asarray(values if isinstance(values, np.ndarray) else list(values), float).reshape(-1)
    x = x[~np.isnan(x)]
    n = int(x.size)
    out = {"mean": NAN, "sd": NAN, "n": n, "ci_low": NAN, "ci_high": NAN, "method": "none"}
    if n == 0:
        return out
    out["mean"] = float(np.mean(x))
    if n == 1:
        return out
    if interval == "bca":
        check_bootstrap(n)
    out["sd"] = float(np.std(x, ddof=1))
    if np.all(x == x[0]):
        out.update(mean=float(x[0]), sd=0.0, ci_low=float(x[0]), ci_high=float(x[0]))
        out["method"] = "degenerate"
        return out
    if interval == "t":
        (low, high), method = _t_interval(x, confidence), "t"
    else:
        low, high, method = _bootstrap_interval(x, confidence, n_resamples, seed)
    out.update(ci_low=low, ci_high=high, method=method)
    return out


def sign_flip_p(d: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p-value of ``mean(d) = 0`` (shape ``(n,)``, n <= 12).

    Every one of the 2^n sign vectors is applied to ``d``; p is the fraction whose mean is at
    least as far from 0 as the observed one (the observed vector included, so p >= 2^-n).
    """
    d = np.asarray(d, float).reshape(-1)
    n = d.size
    if n == 0:
        return NAN
    if n > MAX_SIGN_FLIP_N:
        raise ValueError(f"exact sign-flip p-values enumerate 2^n flips; n = {n} > 12")
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    means = np.abs((1 - 2 * bits) @ d) / n
    observed = abs(float(d.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs whose
    differences have mean ``effect`` and standard deviation ``sd`` (noncentral t)."""
    from scipy import stats

    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return NAN
    df, shift = n - 1, abs(effect) * math.sqrt(n) / sd
    critical = stats.t.ppf(1 - alpha / 2, df)
    upper = float(stats.nct.sf(critical, df, shift))
    lower = float(stats.nct.cdf(-critical, df, shift))  # the wrong tail: tiny, NaN in some
    return upper + (lower if math.isfinite(lower) else 0.0)  # corners of scipy's nct


def min_detectable_effect(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """The smallest mean paired difference (units of the measure) the two-sided paired t-test
    at level ``alpha`` detects with probability ``target`` from ``n`` pairs of spread ``sd``.
    ``0`` when ``sd == 0``; NaN when ``n < 2`` or ``sd`` is undefined."""
    from scipy import optimize

    if n < 2 or not math.isfinite(sd):
        return NAN
    if sd == 0:
        return 0.0
    high = sd
    while power(high, sd, n, alpha) < target:
        high *= 2
    gap = lambda e: power(e, sd, n, alpha) - target  # noqa: E731
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-12 * high))


def seeds_needed(
    effect: float, sd: float, alpha: float, target: float = POWER, most: int = 100_000
) -> int | None:
    """The fewest paired seeds (>= 2) at which the two-sided paired t-test at level ``alpha``
    detects a mean difference ``effect`` with probability ``target``, given the paired sd
    ``sd``; ``None`` when more than ``most`` would be needed or ``effect`` is 0."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd == 0:
        return 2
    low, high = 2, 2
    while power(effect, sd, high, alpha) < target:
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while low < high:  # power rises with n
        mid = (low + high) // 2
        if power(effect, sd, mid, alpha) >= target:
            high = mid
        else:
            low = mid + 1
    return high


def adjust_p(p: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """p-values adjusted for multiplicity (shape of ``p``): ``holm`` (family-wise error, Holm's
    step-down), ``bh`` (false discovery rate, Benjamini-Hochberg) or ``none``. NaNs stay NaN
    and are not counted in the family."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}, got {method!r}")
    p = np.asarray(p, float)
    out = np.full(p.shape, NAN)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if method == "none" or m == 0:
        out[ok] = q
        return out
    order = np.argsort(q, kind="stable")
    ranked = q[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    else:
        adjusted = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.minimum(adjusted, 1.0)
    out[ok] = result
    return out


def _direction(low: float, high: float) -> str:
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no difference shown"


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    interval: str = "t",
    n_resamples: int = 9999,
    seed: int = 0,
    equivalence: float | None = None,
) -> dict:
    """Paired comparison of ``b`` against ``a`` (shape ``(n,)`` each; ``a[i]``, ``b[i]`` share
    seed ``i``) on the differences ``d = b - a`` (second minus first).

    Pairs with a NaN on either side are dropped. Returns ``{"mean_diff", "sd", "n", "ci_low",
    "ci_high", "method", "t", "p", "p_sign_flip", "mde", "direction"}``: the mean of ``d``
    with its interval (see :func:`describe`), ``t``/``p`` of the two-sided paired t-test,
    the exact sign-flip p for ``n <= 12`` (else NaN), the minimum detectable effect at 80 %
    power and level ``1 - confidence`` (units of the values), and ``direction`` from the
    interval ("higher", "lower" or "no difference shown"; uncorrected). With ``equivalence =
    δ > 0`` also ``"tost": {"delta", "p", "equivalent"}``: ``p`` the larger one-sided p of
    ``mean(d) > -δ`` and ``mean(d) < +δ``, equivalent when ``p < 1 - confidence``.
    """
    from scipy import stats

    a = np.asarray(a, float).reshape(-1)
    b = np.asarray(b, float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if equivalence is not None and not (math.isfinite(equivalence) and equivalence > 0):
        raise ValueError(f"equivalence margin must be a positive number, got {equivalence}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    base = describe(d, confidence=confidence, interval=interval, n_resamples=n_resamples,
                    seed=seed)  # fmt: skip
    alpha = 1 - confidence
    out = {
        "mean_diff": base["mean"],
        "sd": base["sd"],
        "n": base["n"],
        "ci_low": base["ci_low"],
        "ci_high": base["ci_high"],
        "method": base["method"],
        "t": NAN,
        "p": NAN,
        "p_sign_flip": sign_flip_p(d) if 1 <= d.size <= MAX_SIGN_FLIP_N else NAN,
        "mde": min_detectable_effect(base["sd"], d.size, alpha),
    }
    if d.size >= 2:
        test = _quiet(stats.ttest_1samp, d, 0.0)
        out["t"], out["p"] = float(test.statistic), float(test.pvalue)
        if not math.isfinite(out["p"]) and base["method"] == "degenerate":
            out["p"] = 0.0 if out["mean_diff"] != 0 else 1.0  # every pair moved by the same amount
    out["direction"] = _direction(out["ci_low"], out["ci_high"])
    if equivalence is not None:
        delta = float(equivalence)
        p = NAN
        if d.size >= 2:
            lower = _quiet(stats.ttest_1samp, d, -delta, alternative="greater")
            upper = _quiet(stats.ttest_1samp, d, delta, alternative="less")
            p = float(max(lower.pvalue, upper.pvalue))
        out["tost"] = {"delta": delta, "p": p, "equivalent": bool(p < alpha)}  # False for NaN
    return out


def judge(result: Mapping, expect: str, p: float, alpha: float) -> str:
    """The verdict on a published direction from a :func:`paired_difference` (treatment −
    control) and its p-value ``p`` (corrected where the direction is primary).

    ``reproduces`` / ``opposite to published``: ``p < alpha`` and the interval excludes 0, on
    the ``expect`` side (``higher`` | ``lower``) or the other; else ``equivalent within ±δ``
    when the TOST holds at ``alpha``; else ``not shown``. A significant difference is never
    also called equivalent.
    """
    low, high = result.get("ci_low", NAN), result.get("ci_high", NAN)
    if math.isfinite(p) and p < alpha and (low > 0 or high < 0):
        return (
            "reproduces"
            if ("higher" if low > 0 else "lower") == expect
            else ("opposite to published")
        )
    tost = result.get("tost")
    if tost and tost["equivalent"]:
        return f"equivalent within ±{tost['delta']:g}"
    return "not shown"


def table(rows: Iterable[Mapping]) -> tuple[dict[str, dict[str, dict[int, float]]], dict]:
    """Group rows: ``({arm: {key: {seed: value}}}, {arm: {key: dropped NaN count}})``.

    Arms and keys keep their first-appearance order; NaN values are left out of the first
    mapping and counted in the second (zero counts omitted). Raises ``ValueError`` on two
    rows with the same arm, seed and key.
    """
    values: dict[str, dict[str, dict[int, float]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    seen: set[tuple[str, str, int]] = set()
    for row in rows:
        arm, seed = str(row["arm"]), int(row["seed"])
        key = measure_key(str(row["measure"]), row.get("level"))
        if (arm, key, seed) in seen:
            raise ValueError(f"two rows for arm {arm!r}, seed {seed}, {key!r}; average repeats")
        seen.add((arm, key, seed))
        by_key = values.setdefault(arm, {})
        by_seed = by_key.setdefault(key, {})
        dropped.setdefault(arm, {})
        value = float(row["value"])
        if math.isnan(value):
            dropped[arm][key] = dropped[arm].get(key, 0) + 1
        else:
            by_seed[seed] = value
    return values, dropped


def pair_rows(
    rows: Iterable[Mapping], a: str, b: str
) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """Values of arms ``a`` and ``b`` paired by seed: ``{key: (seeds, values_a, values_b)}``.

    Keys are those measured in both arms (order of first appearance in ``a``); only seeds
    with a non-NaN value in both arms are kept, sorted; arrays have shape ``(len(seeds),)``.
    """
    values, _ = table(rows)
    return _pairs(values, a, b)


def _pairs(values: dict, a: str, b: str) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    for arm in (a, b):
        if arm not in values:
            raise ValueError(f"unknown arm {arm!r}; arms: {list(values)}")
    out = {}
    for key, seeds_a in values[a].items():
        if key not in values[b]:
            continue
        seeds_b = values[b][key]
        seeds = sorted(set(seeds_a) & set(seeds_b))
        out[key] = (
            seeds,
            np.array([seeds_a[s] for s in seeds], float),
            np.array([seeds_b[s] for s in seeds], float),
        )
    return out


def margin_for(equivalence: Mapping[str, float] | None, key: str) -> float | None:
    """The TOST margin of a summary key from ``{measure: δ}`` (units of the measure): the key
    itself (``weight-noise@0.2``), else its measure (``weight-noise``), else the longest
    ``/``-separated tail of the measure named (``morans_i`` for
    ``representation/IT/morans_i``); ``None`` when no entry names it."""
    if not equivalence:
        return None
    if key in equivalence:
        return equivalence[key]
    measure = key.rsplit("@", 1)[0]
    parts = measure.split("/")
    for i in range(len(parts)):
        tail = "/".join(parts[i:])
        if tail in equivalence:
            return equivalence[tail]
    return None


def summarize(
    rows: Iterable[Mapping],
    *,
    comparisons: Sequence[tuple[str, str]] | None = None,
    equivalence: Mapping[str, float] | None = None,
    confidence: float = 0.95,
    interval: str = "t",
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """JSON-ready summary of an experiment's rows.

    ``{"confidence", "interval", "n_resamples", "seed", "arms": {arm: {key: describe}},
    "differences": {"b - a": {key: paired_difference + "pairs"}}, "dropped_nan": {arm: {key:
    count}}}``; keys from :func:`measure_key`; every interval names its ``method``.
    ``comparisons``: ``(a, b)`` arm pairs, differences are ``b - a``; ``None`` = every pair in
    first-appearance order. ``interval``: ``t`` or ``bca`` (keys with n < 10 get ``t``).
    ``equivalence``: ``{measure: TOST margin δ}`` in each measure's
    units (:func:`margin_for`; keys without one get no TOST). Values are plain Python floats,
    ints, strings and bools; NaN marks what is undefined.
    """
    rows = list(rows)
    values, dropped = table(rows)
    arms = list(values)
    if comparisons is None:
        comparisons = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1 :]]
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}

    def method(n: int) -> str:  # a bootstrap only where it covers; the t interval elsewhere
        return interval if n >= MIN_BOOTSTRAP_N else "t"

    summary: dict = {
        "confidence": float(confidence),
        "interval": METHOD_NAMES[interval],
        "n_resamples": int(n_resamples) if interval == "bca" else None,
        "seed": int(seed),
        "arms": {
            arm: {
                key: describe(list(by_seed.values()), interval=method(len(by_seed)), **options)
                for key, by_seed in by.items()
            }
            for arm, by in values.items()
        },
        "differences": {},
        "dropped_nan": dropped,
    }
    for a, b in comparisons:
        entry = summary["differences"][f"{b} - {a}"] = {}
        for key, (seeds, va, vb) in _pairs(values, a, b).items():
            margin = margin_for(equivalence, key)
            result = paired_difference(va, vb, interval=method(len(seeds)), equivalence=margin,
                                       **options)  # fmt: skip
            result["pairs"] = len(seeds)
            entry[key] = result
    return summary
