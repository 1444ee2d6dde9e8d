"""Deletion/insertion AUC and confidence drop on a model whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vislib import metrics, models
from vislib.data.dataset import Sample
from vislib.errors import ConfigError

SIZE = 32


class RegionNet(nn.Module):
    """Class 0's logit is the summed brightness of a known square, so the oracle map is that square."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.zeros(1, 3, SIZE, SIZE)
        weight[..., 8:16, 8:16] = 1.0
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = (x * self.weight).sum((1, 2, 3)) / 64.0
        return torch.stack([2 * evidence - 3, torch.zeros_like(evidence)], 1)


def _batch(maps, model, n):
    images = torch.ones(n, 3, SIZE, SIZE)
    samples = [Sample(i, 0, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, []) for i in range(n)]
    return metrics.MetricInput(maps, images, torch.zeros(n, dtype=torch.long), samples, model)


def _oracle(n):
    maps = torch.zeros(n, SIZE, SIZE)
    maps[:, 8:16, 8:16] = 1.0
    return maps


def test_oracle_map_deletes_faster_and_inserts_faster_than_a_random_map():
    torch.manual_seed(0)
    model, n = RegionNet(), 4
    random_maps = torch.rand(n, SIZE, SIZE)
    deletion = metrics.get("deletion_auc", step=0.05)
    insertion = metrics.get("insertion_auc", step=0.05, baseline="zero")
    oracle_del = deletion(_batch(_oracle(n), model, n)).values
    random_del = deletion(_batch(random_maps, model, n)).values
    assert (oracle_del < random_del - 0.2).all()
    oracle_ins = insertion(_batch(_oracle(n), model, n)).values
    random_ins = insertion(_batch(random_maps, model, n)).values
    assert (oracle_ins > random_ins + 0.2).all()
    assert ((0 <= oracle_del) & (oracle_del <= 1)).all()


def test_chunking_does_not_change_the_values():
    torch.manual_seed(0)
    model, n = RegionNet(), 3
    maps = torch.rand(n, SIZE, SIZE)
    whole = metrics.get("deletion_auc", step=0.1, max_batch=1000)(_batch(maps, model, n)).values
    chunked = metrics.get("deletion_auc", step=0.1, max_batch=5)(_batch(maps, model, n)).values
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)


@pytest.mark.parametrize("baseline", ["zero", "blur", "mean"])
def test_every_baseline_runs_on_the_demo_net(baseline):
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=6)
    preprocessing = net.vislib_preprocessing
    images = preprocessing.normalize(torch.rand(2, 3, 64, 64))
    samples = [Sample(i, 0, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, []) for i in range(2)]
    batch = metrics.MetricInput(torch.rand(2, 64, 64), images, torch.tensor([0, 3]), samples, net)
    for name in ("deletion_auc", "insertion_auc"):
        values = metrics.get(name, step=0.25, baseline=baseline)(batch).values
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()


def test_average_drop_and_increase_in_confidence():
    model, n = RegionNet(), 2
    keep_evidence = _batch(_oracle(n), model, n)
    assert metrics.get("average_drop")(keep_evidence).values == pytest.approx([0.0, 0.0], abs=1e-6)
    hide_evidence = _batch(1 - _oracle(n), model, n)
    drop = metrics.get("average_drop")(hide_evidence).values
    # Evidence 3 (3 channels x 64 pixels / 64) gives Y = sigmoid(3); none gives O = sigmoid(-3).
    y, o = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(3.0))
    assert drop == pytest.approx([(y - o) / y] * n, rel=1e-5)
    assert metrics.get("increase_in_confidence")(hide_evidence).values.tolist() == [0.0, 0.0]


def test_no_model_nan_map_and_bad_parameters():
    n = 2
    result = metrics.get("deletion_auc")(_batch(_oracle(n), None, n))
    assert np.isnan(result.values).all() and "model" in result.reasons[0]
    maps = _oracle(n)
    maps[1, 0, 0] = float("nan")
    result = metrics.get("average_drop")(_batch(maps, RegionNet(), n))
    assert np.isfinite(result.values[0]) and np.isnan(result.values[1]) and "NaN" in result.reasons[1]
    with pytest.raises(ConfigError, match="baseline"):
        metrics.get("deletion_auc", baseline="noise")
    with pytest.raises(ConfigError, match="step"):
        metrics.get("insertion_auc", step=0.0)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_blur_baseline_equals_torchvision_gaussian_blur(size):
    import torchvision.transforms.functional as TF

    from vislib.metrics.perturbation import baseline_images, gaussian_blur

    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    sigma = 5.0 * size / 224
    kernel = 2 * int(np.ceil(2 * sigma)) + 1
    expected = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    assert torch.equal(gaussian_blur(images, kernel, sigma), expected)
    assert torch.equal(baseline_images(images, "blur"), expected)
