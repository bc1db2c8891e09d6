"""Statistics of an experiment: per-arm bootstrap confidence intervals and paired differences.

Rows are plain dicts ``{"arm": str, "seed": int, "measure": str, "level": float | None,
"value": float}``: ``level`` is ``None`` for scalar measures and a number for points of a
curve. Seed ``k`` of every arm shares its initial weights and data order, so differences
between arms are paired by seed. Confidence intervals of means are BCa bootstrap intervals
from :func:`scipy.stats.bootstrap`; paired tests are :func:`scipy.stats.ttest_rel` and a
TOST equivalence test built from two one-sided :func:`scipy.stats.ttest_1samp`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "describe",
    "measure_key",
    "paired_difference",
    "pair_rows",
    "summarize",
    "table",
]

# scipy >= 1.15 takes ``rng``; older releases only ``random_state``.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
BOOTSTRAP = "BCa (scipy.stats.bootstrap)"
NAN = float("nan")


def measure_key(measure: str, level: float | None) -> str:
    """Summary key of a measure: ``measure`` for scalars, ``f"{measure}@{level:g}"`` for curves."""
    return measure if level is None else f"{measure}@{float(level):g}"


def _bootstrap_ci(
    x: np.ndarray, method: str, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, bool]:
    """``(low, high, clean)``: the interval and whether it came without NaN or warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = stats.bootstrap(
            (x,),
            np.mean,
            n_resamples=n_resamples,
            vectorized=True,
            axis=0,
            confidence_level=confidence,
            method=method,
            **{_RNG_KEYWORD: np.random.default_rng(seed)},
        )
    low = float(result.confidence_interval.low)
    high = float(result.confidence_interval.high)
    return low, high, not caught and math.isfinite(low) and math.isfinite(high)


def describe(
    values: Iterable[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """Mean of ``values`` (shape ``(n,)``, NaNs dropped) with a bootstrap CI of the mean.

    Returns ``{"mean", "sd" (ddof=1), "n", "ci_low", "ci_high", "method"}`` in the units of
    ``values``. ``method`` is ``"BCa"``; ``"percentile"`` when BCa gives NaN or warns;
    ``"degenerate"`` when all values are equal (CI = (mean, mean)); ``"none"`` when
    ``n < 2`` (CI NaN; ``sd`` NaN, ``mean`` NaN for ``n == 0``). Emits no warnings.
    """
    x = np.asarray(values if isinstance(values, np.ndarray) else list(values), float).reshape(-1)
    x = x[~np.isnan(x)]
    n = int(x.size)
    out = {"mean": NAN, "sd": NAN, "n": n, "ci_low": NAN, "ci_high": NAN, "method": "none"}
    if n == 0:
        return out
    out["mean"] = float(np.mean(x))
    if n == 1:
        return out
    out["sd"] = float(np.std(x, ddof=1))
    if np.all(x == x[0]):
        out.update(mean=float(x[0]), sd=0.0, ci_low=float(x[0]), ci_high=float(x[0]))
        out["method"] = "degenerate"
        return out
    low, high, clean = _bootstrap_ci(x, "BCa", confidence, n_resamples, seed)
    method = "BCa"
    if not clean:
        low, high, _ = _bootstrap_ci(x, "percentile", confidence, n_resamples, seed)
        method = "percentile"
    out.update(ci_low=low, ci_high=high, method=method)
    return out


def _direction(low: float, high: float) -> str:
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no difference shown"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    equivalence: float | None = None,
) -> dict:
    """Paired comparison of ``b`` against ``a`` (shape ``(n,)`` each; ``a[i]``, ``b[i]`` share
    seed ``i``) on the differences ``d = b - a`` (second minus first).

    Pairs with a NaN on either side are dropped. Returns ``{"mean_diff", "sd", "n",
    "ci_low", "ci_high", "method", "t", "p", "direction", "verdict"}``: the mean of ``d``
    with its bootstrap CI (see :func:`describe`), ``t``/``p`` of ``scipy.stats.ttest_rel(b,
    a)`` (two-sided), ``direction`` from the CI ("higher" if ``ci_low > 0``, "lower" if
    ``ci_high < 0``, else "no difference shown"). With ``equivalence = δ > 0`` also a TOST
    test ``"tost": {"delta", "p", "equivalent"}`` (``p`` the larger of the one-sided p values
    of ``mean(d) > -δ`` and ``mean(d) < +δ``; equivalent when ``p < 1 - confidence``), and
    ``verdict`` starts with "equivalent within ±δ" or "not shown equivalent".
    """
    a = np.asarray(a, float).reshape(-1)
    b = np.asarray(b, float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if equivalence is not None and not (math.isfinite(equivalence) and equivalence > 0):
        raise ValueError(f"equivalence margin must be a positive number, got {equivalence}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = b - a
    base = describe(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    out = {
        "mean_diff": base["mean"],
        "sd": base["sd"],
        "n": base["n"],
        "ci_low": base["ci_low"],
        "ci_high": base["ci_high"],
        "method": base["method"],
        "t": NAN,
        "p": NAN,
    }
    if d.size >= 2:
        test = _quiet(stats.ttest_rel, b, a)
        out["t"], out["p"] = float(test.statistic), float(test.pvalue)
    direction = _direction(out["ci_low"], out["ci_high"])
    out["direction"] = direction
    verdict = direction
    if equivalence is not None:
        delta = float(equivalence)
        p = NAN
        if d.size >= 2:
            lower = _quiet(stats.ttest_1samp, d, -delta, alternative="greater")
            upper = _quiet(stats.ttest_1samp, d, delta, alternative="less")
            p = float(max(lower.pvalue, upper.pvalue))
        equivalent = bool(p < 1 - confidence)  # False for NaN
        out["tost"] = {"delta": delta, "p": p, "equivalent": equivalent}
        verdict = (
            f"equivalent within ±{delta:g}" if equivalent else "not shown equivalent"
        ) + f"; {direction}"
    out["verdict"] = verdict
    return out


def verdict(result: Mapping, expect: str) -> str:
    """A published direction judged from a :func:`paired_difference` (treatment − control):
    ``reproduces`` when the CI lies on the ``expect`` side of 0 (``higher`` | ``lower``),
    ``reverses`` when it lies on the other side, ``equivalent within ±δ`` when the TOST holds,
    else ``inconclusive``."""
    if result["direction"] == expect:
        return "reproduces"
    if result["direction"] in ("higher", "lower"):
        return "reverses"
    tost = result.get("tost")
    if tost and tost["equivalent"]:
        return f"equivalent within ±{tost['delta']:g}"
    return "inconclusive"


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


def _margin(equivalence, key: str) -> float | None:
    if equivalence is None or isinstance(equivalence, numbers.Real):
        return equivalence
    if key in equivalence:
        return equivalence[key]
    return equivalence.get(key.rsplit("@", 1)[0])


def summarize(
    rows: Iterable[Mapping],
    *,
    comparisons: Sequence[tuple[str, str]] | None = None,
    equivalence: float | Mapping[str, float] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """JSON-ready summary of an experiment's rows.

    ``{"confidence", "n_resamples", "seed", "bootstrap", "arms": {arm: {key: describe}},
    "differences": {"b - a": {key: paired_difference + "pairs"}}, "dropped_nan": {arm:
    {key: count}}}``; keys from :func:`measure_key`. ``comparisons``: ``(a, b)`` arm pairs,
    differences are ``b - a``; ``None`` = every pair in first-appearance order (``a`` first).
    ``equivalence``: one TOST margin δ (units of the values) for every key, or a mapping
    from key or measure name to δ (keys without one get no TOST). Values are plain Python
    floats, ints, strings and bools; NaN marks what is undefined.
    """
    rows = list(rows)
    values, dropped = table(rows)
    arms = list(values)
    if comparisons is None:
        comparisons = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1 :]]
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    summary: dict = {
        "confidence": float(confidence),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "bootstrap": BOOTSTRAP,
        "arms": {
            arm: {key: describe(list(by_seed.values()), **options) for key, by_seed in by.items()}
            for arm, by in values.items()
        },
        "differences": {},
        "dropped_nan": dropped,
    }
    for a, b in comparisons:
        entry = summary["differences"][f"{b} - {a}"] = {}
        for key, (seeds, va, vb) in _pairs(values, a, b).items():
            result = paired_difference(va, vb, equivalence=_margin(equivalence, key), **options)
            result["pairs"] = len(seeds)
            entry[key] = result
    return summary
