"""Every registered metric through one contract: one value per image, NaN only with a reason, protocol settings
as plain columns, a declared direction, and on ground-truth masks it scores better than on their inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import metrics, models
from vislib.data.dataset import CocoFormatDataset

# Settings that keep the test quick where a metric's cost grows with them; the rest run at their defaults.
QUICK = {"maxboxacc": {"thresholds": 10}, "deletion_auc": {"step": 0.25}, "insertion_auc": {"step": 0.25}}


@pytest.fixture(scope="module")
def scored_batch(shapes_root):
    """Eight shapes val images, their labels as targets, and maps that are the targets' object masks."""
    dataset = CocoFormatDataset("shapes", shapes_root, "val")
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=len(dataset.label_names))
    batch = dataset.load_batch(dataset.image_ids()[:8], models.preprocessing_of(net))
    masks = []
    for sample in batch.samples:
        of_target = sample.masks[sample.box_labels == sample.label]
        masks.append(of_target.any(0) if len(of_target) else np.zeros(sample.masks.shape[1:], bool))
    return net, batch, torch.from_numpy(np.stack(masks).astype(np.float32))


def score(name, net, batch, maps, model=True):
    metric = metrics.get(name, **QUICK.get(name, {}))
    given = metrics.MetricInput(maps, batch.images, batch.labels, batch.samples, net if model else None,
                                batch.labels.clone())
    return metric, metric(given)


@pytest.mark.parametrize("name", metrics.METRICS.names())
def test_every_metric_meets_the_contract(name, scored_batch):
    net, batch, masks = scored_batch
    metric, result = score(name, net, batch, masks)
    n = len(batch.samples)
    assert result.values.shape == (n,) and result.values.dtype == np.float64
    assert len(result.reasons) == n
    assert all(reason for value, reason in zip(result.values, result.reasons, strict=True) if np.isnan(value))
    assert isinstance(metric.higher_is_better, bool)
    settings = metric.settings(masks.shape[-1])
    assert all(isinstance(v, int | float | str | bool) for v in settings.values())
    for key, column in result.per_image.items():
        assert len(column) == n, key


@pytest.mark.parametrize("name", metrics.METRICS.names())
def test_the_ground_truth_mask_scores_better_than_its_inverse(name, scored_batch):
    net, batch, masks = scored_batch
    metric, good = score(name, net, batch, masks, model=False)
    _, bad = score(name, net, batch, 1 - masks, model=False)
    if np.isnan(good.values).all():
        pytest.skip(f"{name} scores the model's outputs, which random weights give no direction")
    good_mean, bad_mean = np.nanmean(good.values), np.nanmean(bad.values)
    assert (good_mean > bad_mean) if metric.higher_is_better else (good_mean < bad_mean)
