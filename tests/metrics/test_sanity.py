"""Cascading model randomization: the curve starts at 1 and Grad-CAM decorrelates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import models
from vislib.errors import ConfigError
from vislib.metrics.sanity import cascade_steps, randomization_curve, spearman_rows, weight_layers


def test_spearman_known_answers():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = np.array([[10.0, 20.0, 30.0, 400.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    values = spearman_rows(a, b)
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(-1.0) and np.isnan(values[2])


def test_cascade_runs_from_the_output_and_ends_with_every_layer():
    net = models.load("demonet", "random", num_classes=6)
    order = weight_layers(net)
    assert order[0] == "fc" and order[-1] == "features.0"
    steps = cascade_steps(len(order), 3)
    assert steps[0] == 0 and steps[-1] == len(order) and steps == sorted(steps)
    with pytest.raises(ConfigError):
        cascade_steps(5, 0)


def test_gradcam_decorrelates_and_the_model_is_untouched():
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(4, 3, 64, 64)
    curve = randomization_curve(net, "features.11", "gradcam", {}, images, torch.tensor([0, 1, 2, 3]),
                                [10, 11, 12, 13], n_steps=3)
    assert set(curve["statistic"]) == {"spearman", "spearman_abs"}
    means = curve[curve.statistic == "spearman_abs"].groupby("step")["value"].mean()
    assert means.iloc[0] == pytest.approx(1.0)
    assert means.iloc[-1] < 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
