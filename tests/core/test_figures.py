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


def test_the_sanity_job_keeps_one_images_maps_along_the_cascade_and_the_strip_is_drawn(shapes_root, tmp_path):
    from vislib.data import DatasetRef
    from vislib.io import load_sanity_maps
    from vislib.jobs.figures import sanity_figure
    from vislib.jobs.sanity import sanity

    (tmp_path / "list.txt").write_text("".join(f"{i}\n" for i in CocoFormatDataset("s", shapes_root, "val")
                                               .image_ids()[:3]))
    labels = {"experiment": "e", "dataset": "shapes", "model": "demonet", "layer": "features.14",
              "method": "gradient_x_input"}
    sanity(image_list=str(tmp_path / "list.txt"), n_images=3, method=("gradient_x_input", {}),
           model={"arch": "demonet", "weights": "random", "num_classes": 6}, layer="features.14",
           dataset=DatasetRef("shapes", "shapes", str(shapes_root), "val"), target="label", steps=3, device="cpu",
           labels=labels, out=str(tmp_path / "t.parquet"), maps_out=str(tmp_path / "m.npz"))
    cascade = load_sanity_maps(tmp_path / "m.npz")
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert len(cascade.maps) == table["step"].nunique() == 4 and cascade.steps[0] == ""
    assert cascade.signed and cascade.image.shape == (64, 64, 3) and cascade.maps.shape[1:] == (64, 64)
    # Step 0 recomputes the trained model's maps; the fully randomized model's differ.
    assert not np.allclose(cascade.maps[0], cascade.maps[-1])
    sanity_figure(tables=[tmp_path / "t.parquet"], maps=[tmp_path / "m.npz"], out=tmp_path / "curves.png",
                  strip_out=tmp_path / "strip.png", title="t")
    assert (tmp_path / "strip.png").stat().st_size > 5000
