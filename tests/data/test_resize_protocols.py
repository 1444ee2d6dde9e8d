"""Resize protocols: images, boxes and masks go where torchvision's Resize + CenterCrop put their pixels; objects
the crop cuts off are dropped and counted; the metrics table says which protocol ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vislib.data.cocoformat import CocoWriter
from vislib.data.dataset import CocoFormatDataset, input_geometry, place_boxes, to_input
from vislib.errors import DataError
from vislib.preprocessing import Preprocessing

WIDTH, HEIGHT = 300, 200

PROTOCOLS = {
    "crop": v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)]),
    "squash_crop": v2.Compose([v2.Resize((256, 256), antialias=True), v2.CenterCrop(224)]),
    "stretch": v2.Resize((224, 224), antialias=True),
}


@pytest.mark.parametrize("resize", list(PROTOCOLS))
@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (WIDTH, HEIGHT), (231, 231)])
def test_boxes_land_where_torchvision_puts_their_pixels(resize, shape):
    height, width = shape
    boxes = np.array([[10, 20, 120, 90], [0, 0, width, height], [width - 30, height - 25, width - 1, height - 2]],
                     np.float32)
    geometry = input_geometry(width, height, 224, resize)
    placed, kept = place_boxes(boxes, width, height, geometry, 224)
    image = tv_tensors.Image(torch.zeros(3, height, width))
    reference = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width))
    _, moved = PROTOCOLS[resize](image, reference)
    expected = moved.numpy()
    expected_kept = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert np.array_equal(kept, expected_kept)
    np.testing.assert_allclose(placed[kept], expected[kept], atol=0.02)


@pytest.mark.parametrize("resize", list(PROTOCOLS))
def test_pixels_match_torchvisions_transform_of_the_decoded_image(resize):
    # Like torchvision's transforms on a decoded image, to_input resizes the uint8 pixels, then converts to float.
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    ours = to_input(pixels, 224, resize)
    theirs = v2.functional.to_dtype(PROTOCOLS[resize](torch.from_numpy(pixels).permute(2, 0, 1)), torch.float32,
                                    scale=True)
    assert ours.shape == theirs.shape == (3, 224, 224)
    # The same levels; only dividing by 255 and multiplying by 1/255 round apart.
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# How far resizing the uint8 image (to_input) lands from resizing it in float, in [0,1] units (docs/datasets.md):
# the uint8 resize rounds each pixel to a whole level, and its fixed-point weights add a little (measured: at most
# 1.006 levels, mean 0.25-0.31, benchmarks/results/pipeline.md).
FLOAT_RESIZE_MAX = 1.1 / 255
FLOAT_RESIZE_MEAN = 0.35 / 255


@pytest.mark.parametrize("resize", list(PROTOCOLS))
@pytest.mark.parametrize("image", ["chelsea", "coffee", "astronaut", "noise"])
def test_pixels_stay_within_a_level_of_resizing_in_float(resize, image):
    import skimage.data

    pixels = (np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) if image == "noise"
              else getattr(skimage.data, image)())
    ours = to_input(pixels, 224, resize)
    in_float = PROTOCOLS[resize](torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0).clamp(0, 1)
    difference = (ours - in_float).abs()
    assert difference.max().item() <= FLOAT_RESIZE_MAX
    assert difference.mean().item() <= FLOAT_RESIZE_MEAN


def test_the_protocol_scales_with_the_input_size():
    # A 64 px model gets the same framing as a 224 px one: the crop keeps 224/256 of the shorter side.
    geometry = input_geometry(WIDTH, HEIGHT, 64, "crop")
    assert (geometry.height, geometry.width) == (73, 109) and (geometry.top, geometry.left) == (4, 22)


@pytest.fixture()
def cropped_dataset(tmp_path):
    """One 300x200 image: an object in the centre and one in the left margin that a centre crop cuts off."""
    from PIL import Image

    (tmp_path / "images" / "val").mkdir(parents=True)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(tmp_path / "images" / "val" / "a.png")
    writer = CocoWriter(tmp_path, "val", ["thing", "other"])
    # file_name is relative to images/{split}/ as the dataset writers store it.
    mask_centre = np.zeros((HEIGHT, WIDTH), bool)
    mask_centre[80:120, 130:170] = True
    mask_margin = np.zeros((HEIGHT, WIDTH), bool)
    mask_margin[90:110, 2:20] = True
    writer.add_image(1, "a.png", WIDTH, HEIGHT, label=0,
                     objects=[{"category": "thing", "bbox": [130, 80, 40, 40], "mask": mask_centre},
                              {"category": "other", "bbox": [2, 90, 18, 20], "mask": mask_margin}])
    writer.write(["thing", "other"])
    return tmp_path


def test_objects_the_crop_cuts_off_are_dropped_and_counted(cropped_dataset):
    preprocessing = Preprocessing((0.5,) * 3, (0.5,) * 3, 224)
    stretched = CocoFormatDataset("t", cropped_dataset, "val").load_batch([1], preprocessing).samples[0]
    assert len(stretched.boxes) == 2 and stretched.outside_crop == 0
    cropped = CocoFormatDataset("t", cropped_dataset, "val", resize="crop").load_batch([1], preprocessing).samples[0]
    assert cropped.outside_crop == 1 and cropped.box_labels.tolist() == [0]
    assert cropped.masks.shape == (1, 224, 224)
    ys, xs = np.nonzero(cropped.masks[0])
    x0, y0, x1, y1 = cropped.boxes[0]
    # The mask moved with its box (nearest resize: within a pixel of the box edges).
    assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
    assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5


def test_unknown_protocol_is_refused(tmp_path, cropped_dataset):
    with pytest.raises(DataError, match="resize protocol 'center' is not one of stretch, crop, squash_crop"):
        CocoFormatDataset("t", cropped_dataset, "val", resize="center")


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_the_metrics_table_says_which_protocol_ran(cropped_dataset, resize):
    from vislib import models
    from vislib.io import HeatmapShard
    from vislib.pipeline import evaluate_shard

    net = models.load("demonet", "random", num_classes=2)
    shard = HeatmapShard(maps=np.random.default_rng(0).random((1, 8, 8)).astype(np.float16),
                         image_ids=np.array([1]), targets=np.array([0]), predicted=np.array([0]), seconds=0.1,
                         failed_ids=np.zeros(0, np.int64), failed_reasons=[])
    dataset = CocoFormatDataset("t", cropped_dataset, "val", resize=resize)
    table = evaluate_shard(shard, dataset, net, {"pointing_game": {}}, {"experiment": "e"}).to_pandas()
    assert table["resize"].tolist() == [resize]
    if resize == "crop":
        assert table["boxes_outside_crop"].tolist() == [1]
    else:
        assert "boxes_outside_crop" not in table


def test_an_animated_gif_reads_its_first_frame_as_pil_does(tmp_path):
    from PIL import Image

    from vislib.data.dataset import read_image

    frames = [Image.new("RGB", (20, 10), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pixels = read_image(path)
    with Image.open(path) as first:
        expected = np.array(first.convert("RGB"))
    assert pixels.shape == (10, 20, 3) and np.array_equal(pixels, expected)
