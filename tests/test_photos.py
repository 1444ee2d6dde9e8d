"""The scikit-image photos dataset: annotations are sane and a pretrained net agrees with them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch

import vislib.models as models
from vislib.data.dataset import CocoFormatDataset
from vislib.data.photos import write_photos

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO = 967
ANNOTATIONS = json.loads(resources.files("vislib.data").joinpath("photos.json").read_text())["photos"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> CocoFormatDataset:
    """The photos written once to a temporary root."""
    root = tmp_path_factory.mktemp("photos")
    assert write_photos(root) == {"val": len(ANNOTATIONS)}
    return CocoFormatDataset("photos", root, "val")


def _ids_by_photo(ds: CocoFormatDataset) -> dict[str, int]:
    return {ds.record(i).path.stem: i for i in ds.image_ids()}


def test_unknown_param_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_photos(tmp_path, n_val=3)


def test_label_names_match_imagenet(photos: CocoFormatDataset) -> None:
    assert len(photos.label_names) == 1000 and photos.categories == photos.label_names
    for entry in ANNOTATIONS:
        assert photos.label_names[entry["label"]] == entry["label_name"]


def test_boxes_lie_inside_images_and_are_non_trivial(photos: CocoFormatDataset) -> None:
    for image_id in photos.image_ids():
        rec = photos.record(image_id)
        assert rec.path.exists() and len(rec.boxes) >= 1
        x0, y0, x1, y1 = rec.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= rec.width).all() and (y1 <= rec.height).all()
        # A box narrower than 10 px or covering under 1% of the image would not mark an object.
        assert ((x1 - x0) >= 10).all() and ((y1 - y0) >= 10).all()
        assert ((x1 - x0) * (y1 - y0) >= 0.01 * rec.width * rec.height).all()
        assert (rec.box_labels == rec.label).all()


def test_pretrained_net_recognises_cat_and_espresso(photos: CocoFormatDataset) -> None:
    net = models.load("efficientnet_lite0", "IMAGENET")
    ids = _ids_by_photo(photos)
    batch = photos.load_batch([ids["chelsea"], ids["coffee"]], models.preprocessing_of(net))
    assert batch.images.shape == (2, 3, 224, 224) and not batch.failures
    with torch.no_grad():
        top1 = net(batch.images).argmax(1).tolist()
    assert top1[0] in CAT_CLASSES
    assert top1[1] == ESPRESSO
    assert batch.labels.tolist() == [285, ESPRESSO]
