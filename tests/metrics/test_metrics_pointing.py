"""Pointing games on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import metrics
from vislib.data.dataset import Sample


def _sample(boxes, labels) -> Sample:
    return Sample(1, labels[0], np.array(boxes, np.float32), np.array(labels), None, [[] for _ in labels])


def _input(maps, samples, targets):
    n, h, w = maps.shape
    return metrics.MetricInput(maps, torch.zeros(n, 3, h, w), torch.tensor(targets), samples)


def _peak(y, x, size=64):
    m = torch.zeros(1, size, size)
    m[0, y, x] = 1.0
    return m


def test_peak_inside_box_hits_and_outside_misses():
    sample = _sample([[10, 10, 30, 30]], [2])
    game = metrics.get("pointing_game", tolerance=0.0)
    assert game(_input(_peak(20, 20), [sample], [2])).values[0] == 1.0
    assert game(_input(_peak(50, 50), [sample], [2])).values[0] == 0.0


def test_only_boxes_of_the_target_class_count():
    sample = _sample([[10, 10, 30, 30], [40, 40, 60, 60]], [2, 4])
    game = metrics.get("pointing_game", tolerance=0.0)
    assert game(_input(_peak(50, 50), [sample], [2])).values[0] == 0.0
    assert game(_input(_peak(50, 50), [sample], [4])).values[0] == 1.0


def test_tolerance_is_15_px_at_224_and_scales_with_image_size():
    game = metrics.get("pointing_game")
    assert game.tolerance_px(224) == pytest.approx(15.0)
    assert game.tolerance_px(64) == pytest.approx(15.0 * 64 / 224)
    sample = _sample([[10, 10, 30, 30]], [0])
    # 3 px right of the box edge: within 4.29 px at 64 px, outside with zero tolerance.
    assert game(_input(_peak(20, 32), [sample], [0])).values[0] == 1.0
    assert metrics.get("pointing_game", tolerance=0.0)(_input(_peak(20, 32), [sample], [0])).values[0] == 0.0


def test_energy_game_uniform_map_gives_box_area_fraction_and_peak_gives_one():
    sample = _sample([[0, 0, 32, 64]], [1])
    energy = metrics.get("energy_pointing_game")
    assert energy(_input(torch.ones(1, 64, 64), [sample], [1])).values[0] == pytest.approx(0.5)
    assert energy(_input(_peak(5, 5), [sample], [1])).values[0] == pytest.approx(1.0)


def test_no_box_nan_map_and_wrong_shape_give_nan_with_reason():
    game = metrics.get("pointing_game")
    result = game(_input(_peak(5, 5), [_sample([[0, 0, 5, 5]], [1])], [3]))
    assert np.isnan(result.values[0]) and "no ground-truth box" in result.reasons[0]
    nan_map = _peak(5, 5)
    nan_map[0, 0, 0] = float("nan")
    result = game(_input(nan_map, [_sample([[0, 0, 9, 9]], [1])], [1]))
    assert np.isnan(result.values[0]) and "NaN" in result.reasons[0]
    bad = metrics.MetricInput(torch.zeros(1, 8, 8), torch.zeros(1, 3, 64, 64), torch.tensor([1]),
                              [_sample([[0, 0, 9, 9]], [1])])
    result = game(bad)
    assert np.isnan(result.values[0]) and "does not fit" in result.reasons[0]
