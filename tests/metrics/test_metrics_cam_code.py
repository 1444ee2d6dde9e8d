"""CAM's released box generator (`dt_box`) and its original-resolution protocol on hand-made maps whose boxes were
worked out by hand, checked against OpenCV's contours where OpenCV is installed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from vislib import metrics
from vislib.data.cocoformat import CocoWriter
from vislib.data.dataset import (
    CocoFormatDataset,
    OriginalFrame,
    Sample,
    input_geometry,
    maps_to_original,
    place_boxes,
    to_input,
)
from vislib.errors import ConfigError
from vislib.metrics.cam_code import cam_code_boxes, dt_box, eroded_masks, heatmap_levels
from vislib.preprocessing import Preprocessing


def _bridged_blocks() -> np.ndarray:
    """100 x 120 levels: a 60 x 60 block and a 20 x 30 block joined by a 1-pixel bridge, all at level 200."""
    levels = np.zeros((100, 120), np.uint8)
    levels[20:80, 4:64] = 200
    levels[40:60, 80:110] = 200
    levels[50, 64:80] = 200
    return levels


def test_the_distance_transform_cuts_a_thin_bridge_and_the_merge_keeps_duplicates():
    # All three thresholds (20, 100, 110) see the same binary map. Its largest inscribed distance is 30 (the big
    # block's centre), so a pixel stays if round(255 d / 30) > 10, i.e. d >= 1.24: the bridge (d = 1) and each
    # block's outer ring go, except the ring pixel where the bridge met it (its nearest background is diagonal,
    # d = 1.41). Big block: x 5..63, y 21..78 -> (x, y, w, h) = (5, 21, 59, 58); small: x 80..108, y 41..58.
    # The merge erases the second copy of each box but, erasing inside its loop, skips the third.
    boxes = dt_box(_bridged_blocks())
    np.testing.assert_array_equal(boxes, [[5, 21, 64, 79], [5, 21, 64, 79], [80, 41, 109, 59], [80, 41, 109, 59]])
    np.testing.assert_array_equal(cam_code_boxes(_bridged_blocks()[None]), [[5, 21, 64, 79]])
    # The paper's rule (largest component above 20% of the maximum) boxes both blocks with their bridge.
    paper = metrics.localization.largest_component_boxes(_bridged_blocks()[None].astype(float), 0.2)
    np.testing.assert_array_equal(paper, [[4, 20, 110, 80]])


def test_the_largest_box_over_all_thresholds_is_scored():
    # Level 60 on 40 x 60 pixels, level 150 on a 10 x 20 core: threshold 20 boxes the block (area 2400), 100 and
    # 110 the core (200 each, the second erased as a copy). Nothing is eroded (inscribed radius 20: d >= 0.82).
    levels = np.zeros((60, 80), np.uint8)
    levels[10:50, 10:70] = 60
    levels[25:35, 30:50] = 150
    np.testing.assert_array_equal(dt_box(levels), [[10, 10, 70, 50], [30, 25, 50, 35]])
    np.testing.assert_array_equal(cam_code_boxes(levels[None]), [[10, 10, 70, 50]])
    np.testing.assert_array_equal(cam_code_boxes(levels[None], (100, 110, 120)), [[30, 25, 50, 35]])


def test_holes_get_boxes_and_the_frame_and_edges_are_left_out():
    # A ring 30 px wide with a 10 x 10 hole: OpenCV traces the hole on the ring pixels around it (one pixel out).
    ring = np.zeros((40, 40), np.uint8)
    ring[5:35, 5:35] = 200
    ring[15:25, 15:25] = 0
    np.testing.assert_array_equal(dt_box(ring), [[5, 5, 35, 35], [5, 5, 35, 35], [14, 14, 26, 26], [14, 14, 26, 26]])
    # A map at one level everywhere: the distance transform leaves it as it is, OpenCV 2.4 zeroes the 1-pixel
    # frame (x, y from 1) and dt_box keeps boxes 5 px inside the right and bottom edges (w <= 40 - 1 - 5).
    uniform = np.full((30, 40), 200, np.uint8)
    np.testing.assert_array_equal(cam_code_boxes(uniform[None]), [[1, 1, 35, 25]])
    # Nothing above the lowest threshold: no box.
    np.testing.assert_array_equal(cam_code_boxes(np.full((1, 30, 40), 20, np.uint8)), [[0, 0, 0, 0]])


def test_heatmaps_are_8_bit_fractions_of_the_maximum():
    levels = heatmap_levels(np.array([[[-1.0, 0.0, 1.0, 2.0]], [[0.0, 0.0, 0.0, 0.0]]]))
    np.testing.assert_array_equal(levels, [[[0, 0, 128, 255]], [[0, 0, 0, 0]]])


def test_maps_of_one_size_are_boxed_together_as_they_are_alone():
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.random((6, 1, 5, 6))).float() ** 3
    maps = torch.nn.functional.interpolate(low, size=(47, 61), mode="bilinear", align_corners=False)[:, 0].numpy()
    levels = heatmap_levels(maps)
    together = cam_code_boxes(levels)
    np.testing.assert_array_equal(together, np.concatenate([cam_code_boxes(level[None]) for level in levels]))
    np.testing.assert_array_equal(together, np.stack([dt_box(level)[0] for level in levels]))


def _reference_boxes(levels: np.ndarray, thresholds=(20, 100, 110)) -> list[tuple[int, ...]]:
    """dt_box.cpp's rects before ranking, with OpenCV doing the contours (its distance transform too)."""
    cv2 = pytest.importorskip("cv2")
    height, width = levels.shape
    rects = []
    for threshold in thresholds:
        binary = np.where(levels > threshold, 255, 0).astype(np.uint8)
        if 0 < binary.sum() < 255 * binary.size:
            distance = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
            binary = np.where(np.floor(distance * (255.0 / distance.max()) + 0.5) > 10, 255, 0).astype(np.uint8)
        binary[0], binary[-1], binary[:, 0], binary[:, -1] = 0, 0, 0, 0  # OpenCV 2.4 zeroed the frame itself
        contours, _ = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            limit = lambda v, low, high: low if v < low else (high if v > high else v)  # noqa: E731
            rects.append((limit(x, 0, width - 5), limit(y, 0, height - 5), limit(w, 0, width - x - 5),
                          limit(h, 0, height - y - 5)))
    return rects


def test_boxes_match_opencvs_contours_on_random_maps():
    from vislib.metrics import cam_code

    rng = np.random.default_rng(1)
    for trial in range(60):
        height, width = rng.integers(12, 70, 2)
        low = torch.from_numpy(rng.random((1, 1, *rng.integers(2, 8, 2)))).float() ** 3
        maps = torch.nn.functional.interpolate(low, size=(int(height), int(width)), mode="bilinear",
                                               align_corners=False)[0].numpy()
        if trial % 2:
            maps = maps + 0.3 * rng.random(maps.shape)  # specks, holes and thin bridges
        levels = heatmap_levels(maps)[0]
        reference = _reference_boxes(levels)
        masks = eroded_masks(levels[None])[0]
        ours = np.concatenate([cam_code._region_boxes(masks)[1], cam_code._hole_boxes(masks)[1]])
        assert Counter(map(tuple, cam_code._clip(ours, width, height).tolist())) == Counter(reference), trial
        if reference:
            first = dt_box(levels)[0]
            assert (first[2] - first[0]) * (first[3] - first[1]) == max(w * h for _, _, w, h in reference)


def test_reference_agrees_on_the_hand_made_maps():
    for levels in (_bridged_blocks(),):
        assert Counter(_reference_boxes(levels)) == Counter([(5, 21, 59, 58)] * 3 + [(80, 41, 29, 18)] * 3)


@pytest.mark.parametrize("resize,size", [("stretch", 50), ("crop", 112), ("squash_crop", 112)])
def test_a_point_of_the_map_lands_where_the_transform_took_it_from(resize, size):
    width, height = 300, 200
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[90:100, 200:210] = 255  # centre (204.5, 94.5) in pixel indices
    geometry = input_geometry(width, height, size, resize)
    moved = to_input(pixels, size, resize)[0]
    back = maps_to_original(moved[None], OriginalFrame(width, height, np.zeros((0, 4)), np.zeros(0), geometry))[0]
    assert back.shape == (height, width)
    ys, xs = np.mgrid[:height, :width]
    weights = back.numpy() / back.sum().item()
    assert (weights * xs).sum() == pytest.approx(204.5, abs=1.0)
    assert (weights * ys).sum() == pytest.approx(94.5, abs=1.0)
    # A map over the whole input covers the crop and nothing else: outside it the map is 0.
    ones = maps_to_original(torch.ones(1, size, size), OriginalFrame(width, height, np.zeros((0, 4)), np.zeros(0),
                                                                      geometry))[0].numpy()
    x0 = geometry.left * width / geometry.width
    x1 = (geometry.left + size) * width / geometry.width
    y0 = geometry.top * height / geometry.height
    y1 = (geometry.top + size) * height / geometry.height
    assert (ones[:, :max(0, int(x0) - 1)] == 0).all() and (ones[:, int(np.ceil(x1)) + 1:] == 0).all()
    assert (ones[:max(0, int(y0) - 1)] == 0).all() and (ones[int(np.ceil(y1)) + 1:] == 0).all()
    inside = ones[int(y0) + 3:int(y1) - 3, int(x0) + 3:int(x1) - 3]
    np.testing.assert_allclose(inside, 1.0, atol=1e-5)


@pytest.fixture()
def wide_image(tmp_path):
    """One 300 x 200 image: a 'thing' in the centre and an 'other' in the left margin, which a centre crop cuts off."""
    from PIL import Image

    (tmp_path / "images" / "val").mkdir(parents=True)
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / "images" / "val" / "a.png")
    writer = CocoWriter(tmp_path, "val", ["thing", "other"])
    writer.add_image(1, "a.png", 300, 200, label=0,
                     objects=[{"category": "thing", "bbox": [130, 80, 40, 40]},
                              {"category": "other", "bbox": [2, 90, 18, 20]}])
    writer.write(["thing", "other"])
    return tmp_path


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_the_map_of_the_object_finds_its_original_box(wide_image, resize):
    dataset = CocoFormatDataset("t", wide_image, "val", resize=resize)
    batch = dataset.load_batch([1], Preprocessing((0.5,) * 3, (0.5,) * 3, 224))
    sample = batch.samples[0]
    assert sample.original.width == 300 and sample.original.height == 200
    np.testing.assert_array_equal(sample.original.boxes, [[130, 80, 170, 120], [2, 90, 20, 110]])
    placed, _ = place_boxes(np.array([[130, 80, 170, 120]], np.float32), 300, 200, sample.original.geometry, 224)
    x0, y0, x1, y1 = placed[0]
    maps = torch.zeros(1, 224, 224)
    maps[0, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1.0
    box = metrics.localization.original_boxes(maps, [sample.original])[0]
    np.testing.assert_allclose(box, [130, 80, 170, 120], atol=2)

    def score(name, target):
        given = metrics.MetricInput(maps, batch.images, torch.tensor([target]), batch.samples,
                                    predicted=torch.tensor([target]))
        return metrics.get(name)(given)

    assert score("loc_error_gt_known_cam_code", 0).values[0] == 0.0
    assert score("loc_error_top1_cam_code", 0).values[0] == 0.0
    # The crop cut 'other' off: the paper's protocol at input resolution has no box to score it against, the
    # original resolution still has it, and the map (which shows the thing) misses it.
    other = score("loc_error_gt_known_cam_code", 1)
    assert other.values[0] == 1.0
    paper = score("loc_error_gt_known", 1)
    if resize == "crop":
        assert np.isnan(paper.values[0]) and "no ground-truth box" in paper.reasons[0]
    else:
        assert paper.values[0] == 1.0


def test_a_sample_without_its_original_frame_is_scored_at_input_resolution():
    sample = Sample(1, 2, np.array([[8, 8, 40, 40]], np.float32), np.array([2]), None, [[]])
    maps = torch.zeros(1, 64, 64)
    maps[0, 8:40, 8:40] = 1.0
    given = metrics.MetricInput(maps, torch.zeros(1, 3, 64, 64), torch.tensor([2]), [sample])
    result = metrics.get("loc_error_gt_known_cam_code")(given)
    assert result.values[0] == 0.0
    assert metrics.get("loc_error_gt_known_cam_code").settings(64) == {
        "loc_protocol": "cam_code", "cam_box_thresholds": "20,100,110", "loc_iou": 0.5}


def test_thresholds_are_checked():
    for bad in ([], [100, 20], [0, 20], [20, 255], [20, 20]):
        with pytest.raises(ConfigError, match="thresholds"):
            metrics.get("loc_error_top1_cam_code", thresholds=bad)
    assert metrics.get("loc_error_top1_cam_code", thresholds=[50]).params["thresholds"] == [50]
