"""bfloat16 forward passes (`precision: bfloat16`) for the forward-only work: Score-CAM's masked passes and the
perturbation metrics. The results must move (autocast ran), but no more than the bounds docs/methods.md states,
on the trained demo net and on an ImageNet-trained net with real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import methods, metrics, models
from vislib.data.dataset import CocoFormatDataset
from vislib.data.photos import write_photos
from vislib.errors import ConfigError
from vislib.methods import to_image_maps
from vislib.methods.base import forward_precision
from vislib.metrics.base import MetricInput

PRECISION_METRICS = {"deletion_auc": {"step": 0.1}, "insertion_auc": {"step": 0.1}, "average_drop": {}}
# The ImageNet net's curves at fewer points: each point is a forward pass of every image in both precisions.
COARSE = {"step": 0.25}


def _both_precisions(net, images, targets, samples, image_maps, name, params) -> tuple[np.ndarray, np.ndarray]:
    values = []
    for precision in ("float32", "bfloat16"):
        batch = MetricInput(image_maps, images, targets, samples, net, targets)
        values.append(metrics.get(name, precision=precision, **params)(batch).values)
    return values[0], values[1]


@pytest.fixture(scope="module")
def trained_batch(trained_demonet):
    net = models.load("demonet", str(trained_demonet.checkpoint))
    val = CocoFormatDataset("shapes", trained_demonet.shapes_root, "val")
    return net, val.load_batch(val.image_ids()[:8], models.preprocessing_of(net))


@pytest.mark.parametrize("method,params", [("scorecam", {}), ("sscam", {"samples": 2}), ("iscam", {"steps": 2})])
def test_score_cams_in_bfloat16_stay_within_their_bound(trained_batch, method, params):
    net, batch = trained_batch
    images, labels = batch.images[:4], batch.labels[:4]  # every channel of every image is a masked pass
    full, half = (methods.get(method, precision=precision, **params).explain(
        net, "features.14", images, labels).maps for precision in ("float32", "bfloat16"))
    assert not torch.equal(full, half)
    # Measured: the largest difference 0.05% (Score-CAM), 0.7% (SS-CAM), 0.08% (IS-CAM) of the largest map value,
    # correlation above 0.9999 on every image.
    assert (full - half).abs().max() <= 0.02 * full.abs().max()
    for a, b in zip(full.numpy(), half.numpy(), strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name", sorted(PRECISION_METRICS))
def test_perturbation_metrics_in_bfloat16_stay_within_their_bound_on_the_demo_net(trained_batch, name):
    net, batch = trained_batch
    maps = methods.get("gradcam").explain(net, "features.14", batch.images, batch.labels).maps
    image_maps = to_image_maps(maps, batch.images.shape[-2:])
    full, half = _both_precisions(net, batch.images, batch.labels, batch.samples, image_maps, name,
                                  PRECISION_METRICS[name])
    assert not np.array_equal(full, half)
    assert np.abs(full - half).max() <= 0.02  # measured: 0.007


@pytest.mark.parametrize("name", sorted(PRECISION_METRICS))
def test_perturbation_metrics_in_bfloat16_stay_within_their_bound_on_an_imagenet_net(tmp_path, name):
    write_photos(tmp_path)
    photos = CocoFormatDataset("photos", tmp_path, "val")
    net = models.load("efficientnet_lite0", "IMAGENET")
    batch = photos.load_batch(photos.image_ids()[:4], models.preprocessing_of(net))
    explained = methods.get("gradcam").explain(net, None, batch.images)
    image_maps = to_image_maps(explained.maps, batch.images.shape[-2:])
    full, half = _both_precisions(net, batch.images, explained.targets, batch.samples, image_maps, name,
                                  COARSE if "step" in PRECISION_METRICS[name] else {})
    assert not np.array_equal(full, half)
    # Measured on these photos: at most 0.010 (deletion), 0.025 (insertion) at step 0.1, 0.059 (average drop) for one
    # image.
    assert np.abs(full - half).max() <= 0.1


def test_a_metric_row_names_its_precision(trained_batch):
    net, batch = trained_batch
    metric = metrics.get("average_drop", precision="bfloat16")
    assert metric.settings(64) == {"forward_precision": "bfloat16"}
    assert metrics.get("deletion_auc").settings(64)["forward_precision"] == "float32"


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="precision 'float16' is not one of float32, bfloat16"):
        forward_precision(torch.device("cpu"), "float16")
