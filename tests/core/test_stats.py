"""Summary statistics: Wilson and BCa intervals, exact McNemar, Wilcoxon, Holm, paired comparisons and the ranking,
against hand computations; memory of a 50,000-value group; the tables and figure aggregation writes."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from vislib.aggregate import summarize, write_tables
from vislib.io import provenance, read_metadata
from vislib.jobs.figures import comparison_figure
from vislib.stats import (
    BATCH_VALUES,
    bootstrap_interval,
    compare_methods,
    compare_pair,
    holm,
    mcnemar_exact,
    mean_interval,
    rank_methods,
    wilson_interval,
)


def test_wilson_interval_known_answers():
    low, high, method = wilson_interval(4, 4)
    assert (round(low, 3), round(high, 3), method) == (0.510, 1.000, "wilson")
    low, high, _ = wilson_interval(98, 100)
    assert (round(low, 3), round(high, 3)) == (0.930, 0.994)
    assert wilson_interval(0, 0).method == "none"
    # The 0/1 path of the summary's interval: NaNs dropped, the same answer.
    interval = mean_interval(np.array([1.0, 1.0, np.nan, 1.0, 1.0]), binary=True)
    assert (round(interval.low, 3), interval.method) == (0.510, "wilson")
    with pytest.raises(ValueError, match="0/1"):
        mean_interval(np.array([0.0, 0.5]), binary=True)


def test_mcnemar_exact_against_a_hand_computation():
    # 2x2 table: both hit 10, only a 1, only b 6, neither 3. Under H0 the 7 discordant pairs split as
    # Binomial(7, 1/2): p = 2 * P(X <= 1) = 2 * (1 + 7) / 2**7 = 0.125.
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    a = np.array([1] * 10 + [1] * 1 + [0] * 6 + [0] * 3, float)
    b = np.array([1] * 10 + [0] * 1 + [1] * 6 + [0] * 3, float)
    result = compare_pair(a, b, binary=True)
    assert result["test"] == "mcnemar" and result["p_value"] == pytest.approx(0.125)
    assert result["n"] == 20 and result["mean_difference"] == pytest.approx(-5 / 20)
    assert mcnemar_exact(0, 0) == 1.0


def test_holm_against_a_hand_computation():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone).
    adjusted = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def _family_table() -> pd.DataFrame:
    """Three methods on 30 images: `good` clearly better than `bad`, `twin` identical to `bad`, for a
    continuous lower-is-better metric and a 0/1 higher-is-better one; one NaN for `good`."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.8, 30)
    hits_bad = (np.arange(30) % 6 == 0).astype(float)
    values = {("drop", "good"): base - 0.3 + rng.normal(0, 0.02, 30), ("drop", "bad"): base,
              ("drop", "twin"): base, ("hit", "good"): np.ones(30), ("hit", "bad"): hits_bad,
              ("hit", "twin"): hits_bad}
    values["drop", "good"][4] = np.nan
    rows = [{"dataset": "d", "model": "m", "layer": "l", "metric": metric, "method": method, "image_id": i,
             "value": v, "seconds_per_image": 0.1}
            for (metric, method), column in values.items() for i, v in enumerate(column)]
    return pd.DataFrame(rows)


def test_paired_comparison_finds_the_better_method_and_not_identical_ones():
    frame = _family_table()
    comparisons = compare_methods(frame, binary={"hit": True}, higher_is_better={"drop": False, "hit": True})
    assert len(comparisons) == 6
    pairs = comparisons.set_index(["metric", "method_a", "method_b"])
    drop = pairs.loc["drop", "bad", "good"]
    assert drop["n"] == 29 and drop["test"] == "wilcoxon"
    assert drop["mean_difference"] == pytest.approx(0.3, abs=0.02) and drop["ci_low"] > 0.25
    assert drop["significant"] and drop["p_holm"] < 0.05 and drop["better"] == "good"
    hit = pairs.loc["hit", "bad", "good"]
    assert hit["test"] == "mcnemar" and hit["mean_difference"] == pytest.approx(-25 / 30)
    assert hit["significant"] and hit["better"] == "good" and hit["interval"] in ("bca", "percentile")
    for metric in ("drop", "hit"):
        same = pairs.loc[metric, "bad", "twin"]
        assert same["p_value"] == 1.0 and same["p_holm"] == 1.0 and not same["significant"]
        assert same["mean_difference"] == 0 and pd.isna(same["better"])
    summary = summarize(frame, higher_is_better={"drop": False, "hit": True},
                        binary={"hit": True})
    ranking = rank_methods(summary, comparisons).set_index(["metric", "method"])
    assert ranking.loc[("drop", "good"), "rank"] == 1 and ranking.loc[("drop", "good"), "better_than"] == "bad, twin"
    assert ranking.loc[("hit", "good"), "rank"] == 1 and ranking.loc[("hit", "bad"), "rank"] == 2
    assert ranking.loc[("hit", "twin"), "rank"] == 2 and ranking.loc[("hit", "bad"), "better_than"] == ""


def test_bca_on_a_skewed_sample_brackets_the_mean_and_differs_from_percentile():
    values = np.random.default_rng(0).lognormal(0.0, 1.0, 200)
    interval = bootstrap_interval(values, seed=1)
    assert interval.method == "bca" and interval.low < values.mean() < interval.high
    percentile = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
                                       random_state=np.random.default_rng(1)).confidence_interval
    # BCa corrects for the right skew: both bounds move up from the percentile interval's.
    assert interval.low > percentile.low + 0.01 and interval.high > percentile.high + 0.01
    # Where BCa is undefined (every value equal) the percentile interval is used and says so.
    assert bootstrap_interval(np.full(10, 0.3)) == (pytest.approx(0.3), pytest.approx(0.3), "percentile")
    assert bootstrap_interval(np.array([0.3, np.nan])).method == "none"


@pytest.mark.parametrize(("n", "seed"), [(5, 4), (37, 2), (200, 1), (1000, 3)])
def test_bca_equals_scipys_with_its_generic_jackknife(n, seed):
    values = np.random.default_rng(seed).lognormal(0.0, 1.0, n)
    scipy_bca = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, method="BCa",
                                      batch=max(1, BATCH_VALUES // n), vectorized=True,
                                      random_state=np.random.default_rng(seed)).confidence_interval
    interval = bootstrap_interval(values, seed=seed)
    assert interval.method == "bca"
    assert (interval.low, interval.high) == (pytest.approx(scipy_bca.low, rel=1e-12),
                                             pytest.approx(scipy_bca.high, rel=1e-12))


@pytest.mark.parametrize("scale", [1e-110, 1e103])
def test_bca_scales_with_values_far_from_one(scale):
    values = np.random.default_rng(0).lognormal(0.0, 1.0, 200)
    unscaled = bootstrap_interval(values)
    interval = bootstrap_interval(values * scale)
    assert interval.method == "bca"
    assert (interval.low, interval.high) == (pytest.approx(unscaled.low * scale, rel=1e-9),
                                             pytest.approx(unscaled.high * scale, rel=1e-9))


def test_a_group_of_50000_values_stays_below_300_mb():
    values = np.random.default_rng(0).lognormal(0.0, 1.0, 50_000)
    tracemalloc.start()
    try:
        interval = bootstrap_interval(values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak traced memory for 50,000 values: {peak / 2**20:.1f} MiB")
    assert peak < 300 * 2**20
    assert interval.method == "bca" and interval.low < values.mean() < interval.high


def test_intervals_and_comparisons_are_the_same_every_run():
    values = np.random.default_rng(5).exponential(1.0, 300)
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)
    frame = _family_table()
    pd.testing.assert_frame_equal(compare_methods(frame, binary={"hit": True}),
                                  compare_methods(frame, binary={"hit": True}))


def test_summary_interval_column_and_no_torch_needed():
    frame = _family_table()
    summary = summarize(frame, binary={"hit": True}).set_index(["metric", "method"])
    assert summary.loc[("hit", "good"), "interval"] == "wilson"
    assert summary.loc[("hit", "good"), "ci_high"] == 1.0 and summary.loc[("hit", "good"), "ci_low"] < 1.0
    assert summary.loc[("drop", "bad"), "interval"] == "bca"
    code = ("import sys, pandas as pd; from vislib.aggregate import summarize; "
            "summarize(pd.DataFrame({'dataset': 'd', 'model': 'm', 'layer': 'l', 'method': 'x', 'metric': 'y', "
            "'value': [0.0, 1.0, 1.0], 'seconds_per_image': 0.1}), binary={'y': True}); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_write_tables_writes_comparisons_with_provenance_and_the_figure(tmp_path):
    frame = _family_table()
    frame = frame[frame["metric"] == "hit"].assign(metric="pointing_game", experiment="e", reason="")
    shards = []
    for method, part in frame.groupby("method"):
        shards.append(tmp_path / f"{method}.parquet")
        part.to_parquet(shards[-1], index=False)
    meta = provenance({"x": 1})
    summary = write_tables(shards, tmp_path / "metrics.parquet", tmp_path / "summary.parquet",
                           tmp_path / "summary.md", meta, title="e", comparisons_path=tmp_path / "comparisons.parquet")
    assert set(summary["interval"]) == {"wilson"}
    comparisons = pd.read_parquet(tmp_path / "comparisons.parquet")
    assert len(comparisons) == 3 and set(comparisons["test"]) == {"mcnemar"}
    assert read_metadata(tmp_path / "comparisons.parquet") == read_metadata(tmp_path / "summary.parquet")
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.index("| wilson |") < markdown.index("## Paired comparisons") < markdown.index("## Ranking")
    comparison_figure(comparisons=tmp_path / "comparisons.parquet", out=tmp_path / "c.png", title="e")
    assert (tmp_path / "c.png").stat().st_size > 1000
    comparisons.iloc[:0].to_parquet(tmp_path / "none.parquet")
    comparison_figure(comparisons=tmp_path / "none.parquet", out=tmp_path / "none.png", title="e")
    assert (tmp_path / "none.png").stat().st_size > 1000


def test_the_0_1_metrics_declare_it_on_their_class():
    from vislib.metrics import METRICS

    assert {name for name in METRICS.names() if METRICS[name].binary} == {
        "pointing_game", "loc_error_gt_known", "loc_error_top1", "loc_error_top5", "loc_error_gt_known_cam_code",
        "loc_error_top1_cam_code", "loc_error_top5_cam_code", "maxboxacc", "increase_in_confidence"}
