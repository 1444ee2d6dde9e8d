"""Figures people read: deletion/insertion curves kept per image and drawn as mean curves with bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vislib import metrics, models
from vislib.data.dataset import CocoFormatDataset
from vislib.errors import DataError
from vislib.jobs.figures import CURVE_COLUMN, perturbation_curves
from vislib.metrics.perturbation import CURVE_COLUMN as METRIC_CURVE_COLUMN


def test_the_chart_job_and_the_metric_name_the_same_column():
    assert CURVE_COLUMN == METRIC_CURVE_COLUMN


@pytest.mark.parametrize("name", ["deletion_auc", "insertion_auc"])
def test_the_curve_is_kept_and_its_area_is_the_value(name, shapes_root):
    dataset = CocoFormatDataset("shapes", shapes_root, "val")
    net = models.load("demonet", "random", num_classes=len(dataset.label_names))
    batch = dataset.load_batch(dataset.image_ids()[:3], models.preprocessing_of(net))
    maps = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    metric = metrics.get(name, step=0.25)
    result = metric(metrics.MetricInput(maps, batch.images, batch.labels, batch.samples, net))
    curve = result.per_image[CURVE_COLUMN]
    assert curve.shape == (3, 5)
    np.testing.assert_allclose(np.trapezoid(curve, [0, 0.25, 0.5, 0.75, 1.0], axis=1), result.values)
    assert metric.curve_column == CURVE_COLUMN


def test_perturbation_curves_are_drawn_from_a_metrics_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "model": "m", "layer": "l", "method": method, "metric": metric, "image_id": i,
             "value": 0.5, "perturbation_step": 0.25, CURVE_COLUMN: list(np.sort(rng.random(5))[::sign])}
            for method in ("gradcam", "scorecam") for metric, sign in (("deletion_auc", -1), ("insertion_auc", 1))
            for i in range(4)]
    rows += [{"dataset": "d", "model": "m", "layer": "l", "method": "gradcam", "metric": "pointing_game",
              "image_id": 0, "value": 1.0, "perturbation_step": None, CURVE_COLUMN: None}]
    table = tmp_path / "metrics.parquet"
    pd.DataFrame(rows).to_parquet(table)
    perturbation_curves(metrics=table, out=tmp_path / "curves.png", title="t")
    assert (tmp_path / "curves.png").stat().st_size > 5000
    pd.DataFrame(rows).drop(columns=[CURVE_COLUMN]).to_parquet(table)
    with pytest.raises(DataError, match="no 'perturbation_curve' column"):
        perturbation_curves(metrics=table, out=tmp_path / "none.png", title="t")
