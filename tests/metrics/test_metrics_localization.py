"""CAM-protocol localization and MaxBoxAcc on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from vislib import metrics
from vislib.data.dataset import Sample
from vislib.errors import ConfigError
from vislib.metrics.localization import (
    BOX_HITS_COLUMN,
    apply_dataset_max_box_acc,
    largest_component_boxes,
)


def _sample(boxes, labels, label=None) -> Sample:
    return Sample(1, labels[0] if label is None else label, np.array(boxes, np.float32).reshape(-1, 4),
                  np.array(labels, np.int64), None, [[] for _ in labels])


def _input(maps, samples, targets, predicted=None):
    n, h, w = maps.shape
    return metrics.MetricInput(maps, torch.zeros(n, 3, h, w), torch.tensor(targets), samples,
                               predicted=None if predicted is None else torch.tensor(predicted))


def _blob(x0, y0, x1, y1, size=64):
    m = torch.zeros(1, size, size)
    m[0, y0:y1, x0:x1] = 1.0
    return m


def test_largest_component_wins_and_images_stay_separate():
    maps = np.zeros((2, 32, 32))
    maps[0, 2:5, 2:5] = 1.0        # small, strongest
    maps[0, 10:20, 12:30] = 0.5    # large
    maps[1, 0:32, 0:1] = 1.0       # touches image 0's stack neighbour only through the batch axis
    boxes = largest_component_boxes(maps, 0.2)
    np.testing.assert_array_equal(boxes[0], [12, 10, 30, 20])
    np.testing.assert_array_equal(boxes[1], [0, 0, 1, 32])
    np.testing.assert_array_equal(largest_component_boxes(np.zeros((1, 8, 8)), 0.2)[0], [0, 0, 0, 0])


def test_map_on_the_box_localizes_and_map_elsewhere_does_not():
    sample = _sample([[10, 10, 30, 30]], [2])
    for name in ("loc_error_gt_known", "maxboxacc"):
        metric = metrics.get(name)
        assert metric(_input(_blob(10, 10, 30, 30), [sample], [2])).values[0] == pytest.approx(
            0.0 if name.startswith("loc") else 1.0)
        assert metric(_input(_blob(40, 40, 60, 60), [sample], [2])).values[0] == pytest.approx(
            1.0 if name.startswith("loc") else 0.0)


def test_threshold_decides_how_much_of_a_soft_map_counts():
    sample = _sample([[0, 0, 20, 20]], [0])
    maps = _blob(0, 0, 20, 20) * 0.3 + _blob(0, 0, 10, 10) * 0.7   # core 1.0 on a quarter of the box
    assert metrics.get("loc_error_gt_known", threshold=0.2)(_input(maps, [sample], [0])).values[0] == 0.0
    assert metrics.get("loc_error_gt_known", threshold=0.5)(_input(maps, [sample], [0])).values[0] == 1.0


def test_uniform_map_gives_the_whole_image_box_so_only_large_objects_are_found():
    uniform = torch.full((2, 64, 64), 0.5)
    big = _sample([[0, 0, 64, 40]], [1])     # IoU with the image = 0.625
    small = _sample([[0, 0, 32, 32]], [1])   # IoU = 0.25
    values = metrics.get("loc_error_gt_known")(_input(uniform, [big, small], [1, 1])).values
    np.testing.assert_array_equal(values, [0.0, 1.0])


def test_top1_error_counts_a_wrong_class_as_an_error():
    sample = _sample([[10, 10, 30, 30]], [2])
    metric = metrics.get("loc_error_top1")
    assert metric(_input(_blob(10, 10, 30, 30), [sample], [2], predicted=[2])).values[0] == 0.0
    assert metric(_input(_blob(10, 10, 30, 30), [sample], [2], predicted=[5])).values[0] == 1.0
    no_prediction = metric(_input(_blob(10, 10, 30, 30), [sample], [2]))
    assert np.isnan(no_prediction.values[0]) and "model" in no_prediction.reasons[0]


def test_maxboxacc_picks_the_threshold_best_for_the_batch():
    sample = _sample([[0, 0, 20, 20]], [0])
    maps = _blob(0, 0, 20, 20) * 0.3 + _blob(0, 0, 10, 10) * 0.7
    result = metrics.get("maxboxacc", thresholds=10)(_input(maps, [sample], [0]))
    assert result.values[0] == 1.0
    # Threshold 0 boxes the whole image; 0.1-0.3 find the 20x20 box; above 0.3 only the 10x10 core (IoU 0.25).
    np.testing.assert_array_equal(result.per_image[BOX_HITS_COLUMN][0], [0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_maxboxacc_threshold_is_chosen_over_the_whole_dataset_not_per_shard():
    # Shard 1's image is localized only at threshold 0.0, shard 2's two images only at 0.5: each shard alone
    # scores 1.0, but one threshold for the dataset localizes two of three images.
    curves = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
    table = pa.table({"dataset": ["d"] * 4, "model": ["m"] * 4, "layer": ["l"] * 4,
                      "method": ["a", "a", "a", "b"], "metric": ["maxboxacc"] * 4,
                      "value": [1.0, 1.0, 1.0, 1.0], BOX_HITS_COLUMN: curves})
    resolved = apply_dataset_max_box_acc(table, ["dataset", "model", "layer", "method"])
    assert BOX_HITS_COLUMN not in resolved.column_names
    np.testing.assert_array_equal(resolved.column("value").to_numpy(), [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(resolved.column("box_threshold").to_numpy(), [0.5, 0.5, 0.5, 0.0])


def test_bad_input_is_nan_with_a_reason():
    metric = metrics.get("loc_error_gt_known")
    no_box = metric(_input(_blob(0, 0, 8, 8), [_sample([[0, 0, 8, 8]], [3])], [1]))
    assert np.isnan(no_box.values[0]) and "no ground-truth box" in no_box.reasons[0]
    nan_map = _blob(0, 0, 8, 8)
    nan_map[0, 5, 5] = float("nan")
    result = metric(_input(nan_map, [_sample([[0, 0, 8, 8]], [1])], [1]))
    assert np.isnan(result.values[0]) and "NaN" in result.reasons[0]
    wrong = metrics.MetricInput(torch.zeros(1, 32, 32), torch.zeros(1, 3, 64, 64), torch.tensor([1]),
                                [_sample([[0, 0, 8, 8]], [1])])
    result = metrics.get("maxboxacc")(wrong)
    assert np.isnan(result.values[0]) and "map shape" in result.reasons[0]


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="threshold"):
        metrics.get("loc_error_gt_known", threshold=1.5)
    with pytest.raises(ConfigError, match="thresholds"):
        metrics.get("maxboxacc", thresholds=0)
