"""The CUDA paths of the input pipeline and the jobs: pinned batches copied without blocking, jobs on a GPU giving
the CPU's maps and metric rows, bfloat16 forward passes on a GPU within the CPU's bounds. Skipped without a GPU;
benchmarks/gpu_check.sh runs them (`pytest -m cuda`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import methods, metrics, models
from vislib.data.dataset import CocoFormatDataset
from vislib.methods import to_image_maps
from vislib.metrics.base import MetricInput
from vislib.pipeline import evaluate_shard, explain_shard

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def trained(trained_demonet):
    val = CocoFormatDataset("shapes", trained_demonet.shapes_root, "val")
    return str(trained_demonet.checkpoint), val


def test_batches_for_a_gpu_are_pinned_and_hold_the_same_images(trained):
    _, val = trained
    preprocessing = models.preprocessing_of(models.load("demonet", "random", num_classes=len(val.label_names)))
    ids = val.image_ids()[:20]
    pinned = list(val.batches(ids, 8, preprocessing, pin_memory=True, decode_threads=2))
    plain = list(val.batches(ids, 8, preprocessing))
    assert all(b.images.is_pinned() for b in pinned)
    for a, b in zip(pinned, plain, strict=True):
        assert torch.equal(a.images, b.images)


def test_explain_and_evaluate_on_a_gpu_give_the_cpu_results(trained):
    checkpoint, val = trained
    ids = val.image_ids()[:24]
    specs = {"pointing_game": {}, "deletion_auc": {"step": 0.25}, "average_drop": {}}
    results = {}
    for device in ("cpu", "cuda"):
        net = models.load("demonet", checkpoint, torch.device(device))
        shard = explain_shard(net, "features.14", "gradcam", {}, val, ids, batch_size=8, decode_threads=2)
        table = evaluate_shard(shard, val, net, specs, {"experiment": "e"}, batch_size=8).to_pandas()
        results[device] = shard, table
    (cpu_shard, cpu_table), (gpu_shard, gpu_table) = results["cpu"], results["cuda"]
    assert gpu_shard.image_ids.tolist() == cpu_shard.image_ids.tolist()
    # cuDNN may run convolutions in TF32: maps and probabilities agree to about 1e-3.
    np.testing.assert_allclose(gpu_shard.maps, cpu_shard.maps, rtol=1e-2, atol=1e-2 * np.abs(cpu_shard.maps).max())
    np.testing.assert_allclose(gpu_table["value"], cpu_table["value"], atol=2e-2)


@pytest.mark.parametrize("name", ["deletion_auc", "insertion_auc", "average_drop"])
def test_bfloat16_metrics_on_a_gpu_stay_within_the_cpu_bound(trained, name):
    checkpoint, val = trained
    net = models.load("demonet", checkpoint, torch.device("cuda"))
    batch = val.load_batch(val.image_ids()[:8], models.preprocessing_of(net))
    images, labels = batch.images.cuda(), batch.labels.cuda()
    maps = to_image_maps(methods.get("gradcam").explain(net, "features.14", images, labels).maps, images.shape[-2:])
    values = [metrics.get(name, precision=p, **({"step": 0.1} if "auc" in name else {}))(
        MetricInput(maps, images, labels, batch.samples, net, labels)).values for p in ("float32", "bfloat16")]
    assert not np.array_equal(*values)
    assert np.abs(values[0] - values[1]).max() <= 0.02
