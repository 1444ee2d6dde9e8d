"""Intervals and paired tests of the summary: Wilson score intervals for 0/1 metrics, BCa bootstrap intervals
(percentile where BCa is undefined) for continuous ones, exact McNemar and Wilcoxon signed-rank tests of pairs
of methods on the same images, Holm's correction, and the ranking of methods per family.

Imports numpy, scipy and pandas only, so the summary stays computable without torch.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

LEVEL = 0.95
N_RESAMPLES = 2000
# Values resampled at once (batch x n): bootstrap resamples of 2M values keep one group of any size near 65 MB
# (tests/core/test_stats.py measures 50,000 values).
BATCH_VALUES = 2_000_000
ALPHA = 0.05

FAMILY_COLUMNS = ["dataset", "model", "layer", "metric"]
COMPARISON_COLUMNS = [*FAMILY_COLUMNS, "method_a", "method_b", "higher_is_better", "n", "mean_a", "mean_b",
                      "mean_difference", "ci_low", "ci_high", "interval", "test", "p_value", "p_holm",
                      "significant", "better"]
RANKING_COLUMNS = [*FAMILY_COLUMNS, "higher_is_better", "rank", "method", "mean", "better_than"]


class Interval(NamedTuple):
    """A confidence interval of a mean and how it was computed: wilson, bca, percentile or none (NaN bounds)."""

    low: float
    high: float
    method: str


NO_INTERVAL = Interval(float("nan"), float("nan"), "none")


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion `successes`/`n` (none when n is 0)."""
    from scipy.stats import norm

    if n <= 0:
        return NO_INTERVAL
    z = float(norm.ppf(0.5 + level / 2))
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0/n and n/n one bound is exactly 0 or 1 (the formula gives it up to rounding).
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == n else min(1.0, float(centre + half))
    return Interval(low, high, "wilson")


def _rng_argument(seed: int) -> dict[str, Any]:
    """The seeded generator under the name this SciPy takes (`rng` since 1.15, `random_state` before)."""
    from scipy.stats import bootstrap

    name = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def bootstrap_interval(values: np.ndarray, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                       seed: int = 0) -> Interval:
    """Bootstrap interval of the mean: BCa, or percentile where BCa is undefined (all values equal, or NaN).

    NaNs are dropped; none with fewer than 2 values. Resamples are drawn `batch` at a time so that at most
    `BATCH_VALUES` values are held at once; the same seed gives the same interval. SciPy's `bootstrap` draws the
    resampled means; BCa's terms are then computed here, as SciPy computes them, except that the jackknife of the
    mean takes its closed form: SciPy's generic jackknife recomputes n means of n - 1 values, 10 of the 11 seconds a
    group of 50,000 values took.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return NO_INTERVAL
    result = bootstrap((values,), np.mean, confidence_level=level, n_resamples=n_resamples,
                       batch=max(1, BATCH_VALUES // len(values)), method="percentile", vectorized=True,
                       **_rng_argument(seed))
    if np.ptp(values) > 0:
        levels = _bca_levels(values, result.bootstrap_distribution, level)
        if np.isfinite(levels).all():
            low, high = np.quantile(result.bootstrap_distribution, levels)
            return Interval(float(low), float(high), "bca")
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
        return Interval(low, high, "percentile")
    return NO_INTERVAL


def _bca_levels(values: np.ndarray, means: np.ndarray, level: float) -> tuple[float, float]:
    """The bootstrap distribution's quantiles that bound the BCa interval of the mean (Efron and Tibshirani 1993,
    14.3), given the resampled means. The jackknife means are (sum - x_i) / (n - 1), so their deviations from their
    own mean are the values' deviations from theirs, and the acceleration needs no n x n work."""
    from scipy.special import ndtr, ndtri

    mean = values.mean()
    # The mean of the fractions below and at-or-below the estimate, as SciPy counts it.
    below = (np.count_nonzero(means < mean) + np.count_nonzero(means <= mean)) / (2 * len(means))
    bias = ndtri(below)
    # The acceleration does not change with the values' scale; scaled to at most 1, their powers cannot overflow.
    deviations = values - mean
    deviations = deviations / np.abs(deviations).max()
    acceleration = (deviations**3).sum() / (6 * ((deviations**2).sum()) ** 1.5)
    z = ndtri((1 - level) / 2)
    levels = []
    for side in (z, -z):
        shifted = bias + side
        levels.append(float(ndtr(bias + shifted / (1 - acceleration * shifted))))
    return levels[0], levels[1]


def check_binary(values: np.ndarray, what: str) -> None:
    """Raise ValueError unless every finite value is 0 or 1."""
    finite = values[np.isfinite(values)]
    if not np.isin(finite, (0.0, 1.0)).all():
        raise ValueError(f"{what} is declared a 0/1 metric but has values other than 0 and 1 "
                         f"(e.g. {finite[~np.isin(finite, (0.0, 1.0))][0]!r})")


def mean_interval(values: np.ndarray, binary: bool = False, level: float = LEVEL, seed: int = 0,
                  what: str = "metric") -> Interval:
    """Interval of the mean of `values` (NaNs dropped): Wilson for a 0/1 metric, else `bootstrap_interval`."""
    values = np.asarray(values, dtype=float)
    if binary:
        check_binary(values, what)
        finite = values[np.isfinite(values)]
        return wilson_interval(int(finite.sum()), len(finite), level)
    return bootstrap_interval(values, level, seed=seed)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (1 when there are none)."""
    from scipy.stats import binomtest

    if a_only + b_only == 0:
        return 1.0
    return float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1 when all are 0)."""
    from scipy.stats import wilcoxon

    if not np.any(differences != 0):
        return 1.0
    with warnings.catch_warnings():
        # SciPy notes when it switches from the exact distribution to the normal approximation (ties, zeros).
        warnings.simplefilter("ignore")
        return float(wilcoxon(differences).pvalue)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaNs stay NaN and do not count towards the family size."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = len(order)
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def compare_pair(a: np.ndarray, b: np.ndarray, binary: bool = False, level: float = LEVEL,
                 seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two methods' values on the same images (pairs with a non-finite value dropped):
    n, both means, the mean difference a - b with a paired bootstrap interval, and the test's p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if binary:
        check_binary(a, "the first method's values")
        check_binary(b, "the second method's values")
    n = len(a)
    if n == 0:
        return {"n": 0, "mean_a": float("nan"), "mean_b": float("nan"), "mean_difference": float("nan"),
                "ci_low": float("nan"), "ci_high": float("nan"), "interval": "none", "test": "none",
                "p_value": float("nan")}
    differences = a - b
    # Resampling images resamples their pairs: the paired bootstrap of the mean difference.
    interval = bootstrap_interval(differences, level, seed=seed)
    if binary:
        test, p = "mcnemar", mcnemar_exact(int(np.sum(a > b)), int(np.sum(b > a)))
    else:
        test, p = "wilcoxon", wilcoxon_p(differences)
    return {"n": n, "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "mean_difference": float(differences.mean()), "ci_low": interval.low, "ci_high": interval.high,
            "interval": interval.method, "test": test, "p_value": p}


def compare_methods(frame: pd.DataFrame, binary: Mapping[str, bool] | None = None,
                    higher_is_better: Mapping[str, bool | None] | None = None, level: float = LEVEL,
                    alpha: float = ALPHA, seed: int = 0) -> pd.DataFrame:
    """Every pair of methods per family (dataset/model/layer/metric), matched on image_id.

    `frame` has the family columns, `method`, `image_id` and `value`. Holm's correction runs within each family;
    `significant` is p_holm < `alpha`; `better` is the method whose mean is better in the metric's direction
    (None where the means are equal or the direction is unknown).
    """
    binary, directions = binary or {}, higher_is_better or {}
    rows: list[dict[str, Any]] = []
    for key, group in frame.groupby(FAMILY_COLUMNS, sort=True):
        family = dict(zip(FAMILY_COLUMNS, key, strict=True))
        metric = family["metric"]
        if group.duplicated(["method", "image_id"]).any():
            raise ValueError(f"{family}: an image has more than one value for one method")
        wide = group.pivot(index="image_id", columns="method", values="value")
        methods = sorted(wide.columns)
        direction = directions.get(metric)
        start = len(rows)
        for i, method_a in enumerate(methods):
            for method_b in methods[i + 1:]:
                result = compare_pair(wide[method_a].to_numpy(float), wide[method_b].to_numpy(float),
                                      bool(binary.get(metric, False)), level, seed)
                difference = result["mean_difference"]
                better = None
                if direction is not None and np.isfinite(difference) and difference != 0:
                    better = method_a if (difference > 0) == bool(direction) else method_b
                rows.append({**family, "method_a": method_a, "method_b": method_b, "higher_is_better": direction,
                             **result, "better": better})
        adjusted = holm([row["p_value"] for row in rows[start:]])
        for row, p in zip(rows[start:], adjusted, strict=True):
            row["p_holm"] = float(p)
            row["significant"] = bool(np.isfinite(p) and p < alpha)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def rank_methods(summary: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per family with at least one compared pair: methods best first by mean (in the metric's direction;
    highest first where it is unknown), each with the methods it is significantly better than."""
    rows = []
    for key, pairs in comparisons.groupby(FAMILY_COLUMNS, sort=True):
        family = dict(zip(FAMILY_COLUMNS, key, strict=True))
        part = summary.loc[(summary[FAMILY_COLUMNS] == pd.Series(family)).all(axis=1)]
        direction = pairs["higher_is_better"].iloc[0]
        lower_first = direction is not None and not pd.isna(direction) and not bool(direction)
        part = part.sort_values(["mean", "method"], ascending=[lower_first, True], na_position="last")
        ranks = part["mean"].rank(method="min", ascending=lower_first, na_option="bottom").astype(int)
        wins = pairs[pairs["significant"]]
        for row, rank in zip(part.itertuples(index=False), ranks, strict=True):
            beaten = wins[wins["better"] == row.method]
            others = [b if a == row.method else a for a, b in zip(beaten["method_a"], beaten["method_b"], strict=True)]
            rows.append({**family, "higher_is_better": None if pd.isna(direction) else bool(direction),
                         "rank": int(rank), "method": row.method, "mean": float(row.mean),
                         "better_than": ", ".join(sorted(others))})
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)
