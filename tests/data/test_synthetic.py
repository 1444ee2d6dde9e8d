"""The shapes generator: deterministic, boxes inside images, masks agree with boxes, reader contract."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from vislib.data import CocoFormatDataset, decode_mask, open_dataset
from vislib.data.synthetic import CATEGORIES, ShapesConfig, generate_shapes
from vislib.errors import ConfigError, DataError
from vislib.models.demonet import DEMO_PREPROCESSING


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    cfg = ShapesConfig(n_train=6, n_val=4, image_size=48, seed=7)
    generate_shapes(tmp_path / "a", cfg)
    generate_shapes(tmp_path / "b", cfg)
    generate_shapes(tmp_path / "c", ShapesConfig(n_train=6, n_val=4, image_size=48, seed=8))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_boxes_inside_and_masks_agree_with_boxes(shapes_root):
    doc = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())
    assert {c["name"] for c in doc["categories"]} == set(CATEGORIES)
    sizes = {img["id"]: (img["width"], img["height"]) for img in doc["images"]}
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 0 and h > 0
        mask = decode_mask(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
        assert len(ann["attributes"]) == 3


def test_label_is_category_of_largest_object(shapes_root):
    doc = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    per_image: dict[int, list] = {}
    for ann in doc["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for img in doc["images"]:
        largest = max(per_image[img["id"]], key=lambda a: a["area"])
        assert CATEGORIES[largest["category_id"] - 1] == CATEGORIES[img["label"]]
        assert 1 <= len(per_image[img["id"]]) <= 3


def test_reader_yields_batch_in_input_coordinates(shapes_root):
    ds = open_dataset("shapes", "shapes", shapes_root, "val")
    ids = ds.image_ids()[:5]
    batch = ds.load_batch(ids, DEMO_PREPROCESSING)
    assert batch.images.shape == (5, 3, 64, 64)
    assert batch.image_ids == ids
    for sample, label in zip(batch.samples, batch.labels, strict=True):
        assert sample.label == int(label)
        assert sample.masks is not None and sample.masks.shape[1:] == (64, 64)
        assert (sample.box_labels == label).any()


def test_undecodable_image_is_reported_not_raised(tmp_path):
    generate_shapes(tmp_path, ShapesConfig(n_train=2, n_val=3, image_size=32))
    (tmp_path / "images" / "val" / "000002.png").write_bytes(b"not a png")
    batch = CocoFormatDataset("shapes", tmp_path, "val").load_batch([1, 2, 3], DEMO_PREPROCESSING)
    assert batch.image_ids == [1, 3]
    assert 2 in batch.failures and "cannot be decoded" in batch.failures[2]


def test_bad_config_and_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_objects"):
        ShapesConfig(min_objects=3, max_objects=2)
    with pytest.raises(DataError, match="instances_val.json"):
        CocoFormatDataset("shapes", tmp_path, "val")
