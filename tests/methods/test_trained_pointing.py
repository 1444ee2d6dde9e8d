"""Trained against random weights: on shapes, every attribution method of the trained demo net wins the
pointing game on more images than the same architecture with random weights.

A shape's box covers the image centre in most images (a map that peaks at the centre wins the default
game on 98% of them), so a centre-biased map of a random net would pass for a good one. The images
scored are therefore those on which a centre-peaked map misses (the 'difficult' set idea of Zhang et
al.), in the strict game: the peak must lie inside a box of the explained class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislib import methods, metrics, models
from vislib.data.dataset import Batch, CocoFormatDataset, Sample
from vislib.data.synthetic import ShapesConfig, generate_shapes

# Defaults, except where a method's cost grows with a count: these keep the file quick.
PARAMS = {
    "cam": {},
    "gradcam": {},
    "gradcampp": {},
    "layercam": {},
    "hirescam": {},
    "xgradcam": {},
    "gradcam_elementwise": {},
    "eigencam": {},
    "eigengradcam": {},
    "smoothgradcampp": {"samples": 2},
    "scorecam": {"top_channels": 16},
    "ablationcam": {"top_channels": 8},
    "sscam": {"top_channels": 8, "samples": 2},
    "iscam": {"top_channels": 4, "steps": 2},
    "occlusion": {},
    "rise": {"masks": 16},
    "lime": {"samples": 16, "superpixels": 9},
    "kernel_shap": {"samples": 16, "superpixels": 9},
    "lrp": {},
    "vanilla_gradient": {},
    "guided_backprop": {},
    "guided_gradcam": {},
    "gradient_x_input": {},
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 8},
    "deeplift": {},
    "gradient_shap": {},
    "deconvolution": {},
    "positive_saliency": {},
    "negative_saliency": {},
    "layer_guided_backprop": {},
    "fullgrad": {},
    "l2caf_oblivious": {},
    "l2caf_specific": {},
}
POINTING = metrics.get("pointing_game", tolerance=0.0)
# Methods that cost many passes per image run on the first MULTI_PASS_IMAGES difficult images, not all ~140: on
# those 64 each still beats random weights by 0.078 (Score-CAM, IS-CAM) to 0.53 (RISE); the one-pass methods keep
# every image, which a small margin (FullGrad: +0.03 over all, -0.06 over the first 64) needs.
MULTI_PASS = {"gradient_shap", "smoothgrad", "rise", "kernel_shap", "lime", "sscam", "scorecam", "occlusion",
              "deeplift", "integrated_gradients", "iscam", "ablationcam"}
MULTI_PASS_IMAGES = 64


def test_every_registered_method_is_compared():
    assert set(PARAMS) == set(methods.METHODS.names())


def pointing_hits(maps: torch.Tensor, images: torch.Tensor, targets: torch.Tensor,
                  samples: list[Sample]) -> np.ndarray:
    """1 where an image's map [N,H,W] peaks inside a box of its target class, else 0."""
    return POINTING(metrics.MetricInput(maps, images, targets, samples)).values


@pytest.fixture(scope="module")
def nets_and_difficult_images(trained_demonet, tmp_path_factory) -> tuple[torch.nn.Module, torch.nn.Module, Batch]:
    """The trained demo net, the same architecture with random weights, and the shapes val images on
    which a map peaking at the image centre misses."""
    # Above chance (1/6) by a margin, or the comparison says nothing about the methods.
    assert trained_demonet.val_accuracy > 0.6, trained_demonet
    trained = models.load("demonet", str(trained_demonet.checkpoint))
    torch.manual_seed(0)
    random = models.load("demonet", "random", num_classes=6)
    root = tmp_path_factory.mktemp("shapes_pointing")
    generate_shapes(root, ShapesConfig(n_train=0, n_val=900, image_size=64, seed=2))
    val = CocoFormatDataset("shapes", root, "val")
    batch = val.load_batch(val.image_ids(), models.preprocessing_of(trained))
    n, _, height, width = batch.images.shape
    centre = torch.zeros(n, height, width)
    centre[:, height // 2, width // 2] = 1
    keep = np.nonzero(pointing_hits(centre, batch.images, batch.labels, batch.samples) == 0)[0]
    assert len(keep) >= 100, len(keep)
    difficult = Batch(batch.images[keep], batch.labels[keep], [batch.samples[i] for i in keep])
    return trained, random, difficult


def pointing_accuracy(net: torch.nn.Module, method: str, batch: Batch) -> float:
    """Share of images whose map peaks inside a box of the ground-truth class."""
    result = methods.get(method, **PARAMS[method]).explain(net, None, batch.images, batch.labels)
    maps = methods.to_image_maps(result.maps, tuple(batch.images.shape[-2:]))
    return float(pointing_hits(maps, batch.images, batch.labels, batch.samples).mean())


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_trained_demonet_points_better_than_random_weights(nets_and_difficult_images, method):
    trained, random, batch = nets_and_difficult_images
    if method in MULTI_PASS:
        n = MULTI_PASS_IMAGES
        batch = Batch(batch.images[:n], batch.labels[:n], batch.samples[:n])
    hits_trained = pointing_accuracy(trained, method, batch)
    hits_random = pointing_accuracy(random, method, batch)
    assert hits_trained > hits_random, f"{method}: trained {hits_trained:.3f}, random weights {hits_random:.3f}"
