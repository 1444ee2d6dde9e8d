"""Aggregation: bootstrap CIs, provenance in Parquet metadata, bad input recorded not raised, figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vislib import models
from vislib.aggregate import bootstrap_ci, summarize, write_tables
from vislib.data.dataset import CocoFormatDataset
from vislib.io import HeatmapShard, provenance, read_metadata, write_parquet
from vislib.jobs.aggregate import aggregate
from vislib.jobs.figures import metric_bars, sanity_figure
from vislib.metrics import METRICS
from vislib.pipeline import evaluate_shard, rows_to_table

# Every registered metric, with settings that keep it quick where its cost grows with them.
QUICK = {"maxboxacc": {"thresholds": 10}, "deletion_auc": {"step": 0.25}, "insertion_auc": {"step": 0.25}}
ALL_METRICS = {name: QUICK.get(name, {}) for name in METRICS.names()}
PROVENANCE_KEYS = ["vislib_version", "git_commit", "config_hash", "torch_version", "torchvision_version",
                   "python_version", "device"]


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        values = rng.normal(0.3, 1.0, n)
        low, high = bootstrap_ci(values)
        assert low < values.mean() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # Width ~ 2 x 1.96 / sqrt(n) for unit variance.
    assert widths[1] == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.2)
    assert np.isnan(bootstrap_ci(np.array([1.0, np.nan]))[0])


def _shard_with_bad_maps(dataset: CocoFormatDataset) -> HeatmapShard:
    ids = np.array(dataset.image_ids()[:4], np.int64)
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8)).astype(np.float16)
    maps[1, 2, 2] = np.nan
    targets = np.array([dataset.record(int(i)).label for i in ids], np.int64)
    # A valid class without any box in the image.
    targets[2] = min(set(range(6)) - set(dataset.record(int(ids[2])).box_labels.tolist()))
    # The model's top-5 classes (top-5 localization): the explained class first, the others in order.
    topk = np.array([[t, *[c for c in range(6) if c != t][:4]] for t in targets], np.int64)
    return HeatmapShard(maps=maps, image_ids=ids, targets=targets, predicted=targets.copy(), seconds=0.4,
                        failed_ids=np.array([10_000], np.int64), failed_reasons=["image failed to decode"],
                        extras={"topk": topk})


def test_bad_input_becomes_nan_rows_with_reasons_and_aggregation_goes_on(shapes_root, tmp_path):
    dataset = CocoFormatDataset("shapes", shapes_root, "val")
    net = models.load("demonet", "random", num_classes=6)
    labels = {"experiment": "t", "dataset": "shapes", "model": "demonet", "layer": "features.11",
              "method": "gradcam", "target_mode": "label"}
    table = evaluate_shard(_shard_with_bad_maps(dataset), dataset, net, ALL_METRICS, labels).to_pandas()
    assert set(table["metric"]) == set(ALL_METRICS)
    by_image = table.set_index(["image_id", "metric"])
    ids = dataset.image_ids()[:4]
    assert by_image.loc[ids[0]]["value"].notna().all()
    assert by_image.loc[ids[1]]["value"].isna().all()
    assert (by_image.loc[ids[1]]["reason"] == "map contains NaN or inf").all()
    box_metrics = ["pointing_game", "loc_error_gt_known", "loc_error_gt_known_cam_code", "maxboxacc"]
    assert by_image.loc[ids[2]].loc[box_metrics, "reason"].str.contains("no ground-truth box").all()
    # Top-1 localization counts a predicted class that is not the label as an error, box or no box.
    assert (by_image.loc[ids[2]].loc[["loc_error_top1", "loc_error_top1_cam_code"], "value"] == 1.0).all()
    assert by_image.loc[10_000]["value"].isna().all()
    shard_path = tmp_path / "shard.parquet"
    write_parquet(shard_path, rows_to_table(table.to_dict("records")))
    meta = provenance({"x": 1})
    summary = write_tables([shard_path], tmp_path / "metrics.parquet", tmp_path / "summary.parquet",
                        tmp_path / "summary.md", meta, title="t")
    assert len(summary) == len(ALL_METRICS)
    assert (summary["n"] + summary["n_undefined"] >= 4).all()
    for name in ("metrics.parquet", "summary.parquet"):
        stored = pq.read_schema(tmp_path / name).metadata
        assert all(f"vislib.{key}".encode() in stored for key in PROVENANCE_KEYS)
    metric_bars(summary=tmp_path / "summary.parquet", out=tmp_path / "bars.png", title="t")
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_the_aggregate_job_records_the_devices_its_shards_ran_on_and_claims_no_gpu(tmp_path):
    """With `device: cuda` the aggregate job runs on a CPU (its rule asks for no GPU): it neither resolves nor
    claims a GPU, which failed on a node without one (as here), and its tables name the evaluate jobs' GPUs."""
    rows = [{"experiment": "t", "dataset": "d", "model": "m", "layer": "l", "method": "x", "metric": "y",
             "target_mode": "label", "image_id": i, "target": 0, "value": float(i), "reason": "",
             "seconds_per_image": 0.1} for i in range(6)]
    shards = []
    for k, device in enumerate(("cuda:1", "cuda:0", "cuda:1")):
        shards.append(str(tmp_path / f"shard_{k}.parquet"))
        write_parquet(shards[-1], rows_to_table(rows[2 * k:2 * k + 2]), provenance(None, device))
    outputs = {name: str(tmp_path / f"{name}.out") for name in
               ("metrics", "summary", "summary_md", "summary_html", "comparisons")}
    aggregate(metric_shards=shards, **outputs, experiment="t", experiment_config={"device": "cuda"}, device="cuda")
    for name in ("metrics", "summary"):
        assert read_metadata(outputs[name])["device"] == "cuda:0, cuda:1"
    assert pq.read_table(outputs["metrics"]).num_rows == 6


def test_summary_of_an_all_nan_group_is_nan_not_an_error():
    frame = pd.DataFrame({"dataset": "d", "model": "m", "layer": "l", "method": "x", "metric": "y",
                          "value": [np.nan, np.nan], "seconds_per_image": [0.1, 0.1]})
    row = summarize(frame).iloc[0]
    assert np.isnan(row["mean"]) and row["n"] == 0 and row["n_undefined"] == 2


def test_sanity_figure_draws_and_returns_step_means(tmp_path):
    rows = [{"model": "m", "layer": "l", "method": method, "statistic": statistic, "step": step,
             "randomized_to": f"layer{step}" if step else "", "image_id": i, "value": 1.0 - step * slope}
            for method, slope in (("gradcam", 0.3), ("guided_backprop", 0.02))
            for statistic in ("spearman", "spearman_abs") for step in range(4) for i in range(3)]
    path = tmp_path / "s.parquet"
    pd.DataFrame(rows).to_parquet(path)
    means = sanity_figure(tables=[path], out=tmp_path / "sanity.png", title="t")
    last = means[(means.step == 3) & (means.statistic == "spearman")].set_index("method")["value"]
    assert last["gradcam"] == pytest.approx(0.1) and last["guided_backprop"] == pytest.approx(0.94)
    assert (tmp_path / "sanity.png").stat().st_size > 1000
