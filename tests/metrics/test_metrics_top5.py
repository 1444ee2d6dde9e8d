"""Top-5 localization error: hand-made cases with known answers, the explain job's top-k record, and the config
check that asks for it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vislib import metrics, models
from vislib.config import check_config
from vislib.data.dataset import CocoFormatDataset, Sample
from vislib.errors import ConfigError
from vislib.pipeline import LABEL_MAPS_EXTRA, TOPK_EXTRA, evaluate_shard, explain_shard

TOP5 = ("loc_error_top5", "loc_error_top5_cam_code")


def _sample(label: int, box) -> Sample:
    return Sample(1, label, np.array([box], np.float32), np.array([label]), None, [[]])


def _blob(box, size=64) -> torch.Tensor:
    x0, y0, x1, y1 = box
    m = torch.zeros(size, size)
    m[y0:y1, x0:x1] = 1.0
    return m


ON, OFF = (10, 10, 40, 40), (44, 44, 62, 62)


@pytest.mark.parametrize("name", TOP5)
def test_hand_made_top5_cases(name):
    # Every image's label is 3 with its box at ON. Explained target: the top-1 class (target: predicted).
    topk = torch.tensor([[3, 1, 2, 4, 5],    # label first: its own map (on the box) decides -> 0
                         [1, 3, 2, 4, 5],    # label second: the recorded label map is on the box -> 0
                         [1, 3, 2, 4, 5],    # label second, label map off the box -> 1
                         [1, 2, 4, 5, 6],    # label not among the 5: an error whatever the maps -> 1
                         [1, 2, 4, 5, 3]])   # label fifth, on the box, but its map was not recorded -> NaN
    targets = topk[:, 0]
    # The explained (top-1) maps all lie on the label's box: only the label's own map may count.
    maps = torch.stack([_blob(ON)] * 5)
    label_maps = torch.stack([torch.full((64, 64), float("nan")), _blob(ON), _blob(OFF), _blob(ON),
                              torch.full((64, 64), float("nan"))])
    samples = [_sample(3, ON) for _ in range(5)]
    given = metrics.MetricInput(maps, torch.zeros(5, 3, 64, 64), targets, samples, predicted=targets, topk=topk,
                                label_maps=label_maps)
    result = metrics.get(name)(given)
    np.testing.assert_array_equal(result.values[:4], [0.0, 0.0, 1.0, 1.0])
    assert np.isnan(result.values[4]) and "label was not recorded" in result.reasons[4]
    # Top-1 on the same images: only the first has the label on top.
    top1 = metrics.get(name.replace("top5", "top1"))(given)
    np.testing.assert_array_equal(top1.values, [0.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", TOP5)
def test_with_the_label_as_target_its_maps_are_the_label_maps(name):
    topk = torch.tensor([[1, 3, 2, 4, 5], [1, 2, 4, 5, 6]])
    samples = [_sample(3, ON), _sample(3, ON)]
    given = metrics.MetricInput(torch.stack([_blob(ON), _blob(ON)]), torch.zeros(2, 3, 64, 64), torch.tensor([3, 3]),
                                samples, predicted=torch.tensor([1, 1]), topk=topk)
    np.testing.assert_array_equal(metrics.get(name)(given).values, [0.0, 1.0])


def test_without_the_top_classes_top5_is_undefined_with_the_fix():
    given = metrics.MetricInput(_blob(ON)[None], torch.zeros(1, 3, 64, 64), torch.tensor([3]), [_sample(3, ON)],
                                predicted=torch.tensor([3]))
    result = metrics.get("loc_error_top5")(given)
    assert np.isnan(result.values[0]) and "top_k: 5" in result.reasons[0]


def test_top1_counts_a_wrong_class_as_an_error_even_when_that_class_has_no_box():
    # target: predicted, predicted class 1 has no box in the image: still a plain error, not undefined.
    sample = _sample(3, ON)
    for name in ("loc_error_top1", "loc_error_top1_cam_code"):
        given = metrics.MetricInput(_blob(ON)[None], torch.zeros(1, 3, 64, 64), torch.tensor([1]), [sample],
                                    predicted=torch.tensor([1]))
        result = metrics.get(name)(given)
        assert result.values[0] == 1.0 and result.reasons[0] == ""


@pytest.fixture(scope="module")
def top_k_shard(shapes_root):
    dataset = CocoFormatDataset("shapes", shapes_root, "val")
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=len(dataset.label_names))
    ids = dataset.image_ids()[:10]
    shard = explain_shard(net, "features.14", "gradcam", {}, dataset, ids, "predicted", batch_size=4, top_k=5)
    return dataset, net, ids, shard


def test_the_explain_job_records_the_top_classes_and_the_label_maps_it_needs(top_k_shard):
    dataset, net, ids, shard = top_k_shard
    top, label_maps = shard.extras[TOPK_EXTRA], shard.extras[LABEL_MAPS_EXTRA]
    batch = dataset.load_batch(ids, models.preprocessing_of(net))
    with torch.no_grad():
        logits = net(batch.images)
    np.testing.assert_array_equal(top, logits.topk(5, 1).indices.numpy())
    labels = batch.labels.numpy()
    needed = (shard.targets != labels) & (top == labels[:, None]).any(1)
    assert needed.any() and (~needed).any()
    recorded = np.isfinite(label_maps.astype(np.float32)).reshape(len(ids), -1).all(1)
    np.testing.assert_array_equal(recorded, needed)
    rows = np.nonzero(needed)[0]
    from vislib import methods

    expected = methods.get("gradcam").explain(net, "features.14", batch.images[rows], batch.labels[rows]).maps
    np.testing.assert_allclose(label_maps[rows].astype(np.float32), expected.numpy(), rtol=1e-2, atol=1e-3)


def test_the_evaluate_job_scores_top5_from_the_shard(top_k_shard):
    dataset, net, ids, shard = top_k_shard
    specs = {"loc_error_top1": {}, "loc_error_top5": {}, "loc_error_top5_cam_code": {},
             "loc_error_top1_cam_code": {}}
    table = evaluate_shard(shard, dataset, net, specs, {"experiment": "e"}).to_pandas()
    values = table.pivot(index="image_id", columns="metric", values="value")
    assert values.notna().all().all()
    labels = np.array([dataset.record(int(i)).label for i in ids])
    outside = ~(shard.extras[TOPK_EXTRA] == labels[:, None]).any(1)
    # Top-5 error never exceeds top-1; a label outside the 5 is an error.
    for protocol in ("", "_cam_code"):
        top1, top5 = values[f"loc_error_top1{protocol}"], values[f"loc_error_top5{protocol}"]
        assert (top5 <= top1).all()
        assert (top5.to_numpy()[outside] == 1.0).all()
    assert set(table.loc[table.metric.str.endswith("cam_code"), "loc_protocol"]) == {"cam_code"}


def _small_config() -> dict:
    return {"datasets": {"shapes": {"kind": "shapes"}}, "models": {"net": {"arch": "demonet", "num_classes": 6}},
            "methods": {"gradcam": {}}, "metrics": {"loc_error_top1": {}, "loc_error_top5_cam_code": {}},
            "experiments": {"e": {"dataset": "shapes", "models": {"net": ["features.14"]}, "methods": ["gradcam"],
                                  "metrics": ["loc_error_top1", "loc_error_top5_cam_code"]}}}


def test_the_config_check_asks_for_top_k_and_rejects_two_labels_of_one_metric():
    config = _small_config()
    with pytest.raises(ConfigError, match=r"'loc_error_top5_cam_code' \(loc_error_top5_cam_code\) needs the "
                                          r"model's 5 top classes .* add `top_k: 5` to experiments.e"):
        check_config(config)
    config["experiments"]["e"]["top_k"] = 5
    check_config(config)
    too_many = copy.deepcopy(config)
    too_many["experiments"]["e"]["top_k"] = 7
    with pytest.raises(ConfigError, match="top_k: 7 is more than the 6 classes of model 'net'"):
        check_config(too_many)
    twice = copy.deepcopy(config)
    twice["metrics"]["strict_top1"] = {"metric": "loc_error_top1", "iou": 0.7}
    twice["experiments"]["e"]["metrics"].append("strict_top1")
    with pytest.raises(ConfigError, match="'loc_error_top1' and 'strict_top1' are both metric 'loc_error_top1'"):
        check_config(twice)
