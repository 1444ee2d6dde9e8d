"""Feature visualization: objectives improve, determinism, batch independence, hooks, bad input."""

import pytest
import torch

from vislib import featvis
from vislib.errors import ConfigError, DataError, LayerError, UnknownNameError
from vislib.featvis.class_agnostic import gaussian_centre_mask
from vislib.featvis.engine import (
    blur_kernel_size,
    gaussian_blur,
    laplacian_normalize,
    tap_layers,
    total_variation,
)
from vislib.methods.hooks import hook_count

FAST = {"size": 32, "iterations": 48, "octaves": 1, "lr": 0.1, "lr_end": 0.05, "jitter": 2, "scale_jitter": 0.0}
TINY_OCTAVE = {"iterations": 12, "window_step": 5, "brightness_step": 6}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_every_method():
    assert featvis.FEATVIS.names() == ["class_agnostic", "class_image", "deep_dream", "filter_visualization",
                                       "inversion"]
    with pytest.raises(UnknownNameError, match="filter_visualization"):
        featvis.get("filter_visualisation")


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="no parameter 'lrate'"):
        featvis.get("filter_visualization", lrate=0.1)
    with pytest.raises(ConfigError, match="must be int"):
        featvis.get("filter_visualization", iterations=2.5)
    with pytest.raises(ConfigError, match="optimizer"):
        featvis.get("deep_dream", optimizer="rmsprop")
    with pytest.raises(ConfigError, match="no key 'lr'"):
        featvis.get("class_agnostic", octaves=[{"lr": 0.1}])


@pytest.mark.parametrize("layer", ["features.6", "features.14"])
def test_filter_visualization_raises_target_unit_by_a_large_factor(model, layer):
    result = featvis.get("filter_visualization", **FAST).generate(model, layer, [0, 3, 7, 11, 20])
    start, end = result.extras["activation_start"], result.extras["activation_end"]
    assert (end > 5 * start.clamp_min(1e-3)).all(), (start, end)
    assert result.images.shape == (5, 3, 32, 32) and result.images.dtype == torch.float32
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert result.units.tolist() == [0, 3, 7, 11, 20]
    assert result.loss_curve.shape == (48, 5)
    # The loss is minus the activation: it must fall over the run.
    assert (result.loss_curve[-4:].mean(0) < result.loss_curve[:4].mean(0)).all()


def test_neuron_objective_and_octaves(model):
    params = {**FAST, "objective": "neuron", "octaves": 2, "iterations": 16}
    result = featvis.get("filter_visualization", **params).generate(model, "features.6", [1, 2])
    assert result.loss_curve.shape == (32, 2)
    assert (result.extras["activation_end"] > result.extras["activation_start"]).all()


def test_same_seed_same_image_and_other_seed_differs(model):
    first = featvis.get("filter_visualization", **FAST, seed=3).generate(model, "features.6", [4, 5]).images
    second = featvis.get("filter_visualization", **FAST, seed=3).generate(model, "features.6", [4, 5]).images
    other = featvis.get("filter_visualization", **FAST, seed=4).generate(model, "features.6", [4, 5]).images
    assert torch.equal(first, second)
    assert (first - other).abs().max() > 0.05


def test_batch_of_units_equals_one_unit_at_a_time(model):
    # Jitter is shared by the batch and start noise is drawn per unit, so only float rounding of
    # batched convolutions differs. Rounding can still flip a max-pool choice in an odd image, which then
    # drifts by ~1e-2; a real dependence on the batch (per-batch normalisation, per-batch jitter) changes
    # every image. So: nearly all images equal to rounding, none far off, and every unit's final
    # activation the same (the flipped image reaches it too).
    params = {**FAST, "octaves": 2, "iterations": 6, "lr": 0.03, "lr_end": 0.015, "jitter": 3, "scale_jitter": 0.1}
    units = list(range(0, 64, 5))
    batched = featvis.get("filter_visualization", **params).generate(model, "features.6", units)
    single = [featvis.get("filter_visualization", **params).generate(model, "features.6", [u]) for u in units]
    difference = (batched.images - torch.cat([s.images for s in single])).abs().amax((1, 2, 3))
    assert (difference <= 1e-4).sum() >= len(units) - 1 and difference.max() < 0.05
    single_end = torch.cat([s.extras["activation_end"] for s in single])
    torch.testing.assert_close(batched.extras["activation_end"], single_end, rtol=1e-3, atol=1e-6)
    equal = difference <= 1e-4
    assert torch.allclose(batched.loss_curve[:, equal], torch.cat([s.loss_curve for s in single], 1)[:, equal],
                          rtol=1e-4, atol=1e-6)


def test_deep_dream_amplifies_layer_and_pairs_units(model, photos):
    images = photos[:2]
    result = featvis.get("deep_dream", iterations=6, octaves=2).generate(model, "features.6", None, images)
    assert result.images.shape == images.shape
    assert (result.extras["activation_end"] > 1.2 * result.extras["activation_start"]).all()
    assert result.units.tolist() == [-1, -1]
    per_unit = featvis.get("deep_dream", iterations=6, octaves=1).generate(model, "features.6", [0, 3, 5], photos[:1])
    assert per_unit.images.shape == (3, 3, 32, 32)
    assert (per_unit.extras["activation_end"] > per_unit.extras["activation_start"]).all()
    with pytest.raises(ConfigError, match="one unit per image"):
        featvis.get("deep_dream").generate(model, "features.6", [0, 1, 2], photos[:2])


def test_inversion_lowers_feature_distance(model, photos):
    result = featvis.get("inversion", iterations=30, lr=0.05).generate(model, "features.6", None, photos[:3])
    start, end = result.extras["feature_distance_start"], result.extras["feature_distance_end"]
    assert (end < 0.5 * start).all(), (start, end)
    assert result.images.shape == (3, 3, 32, 32)
    with pytest.raises(ConfigError, match="no units"):
        featvis.get("inversion").generate(model, "features.6", [1], photos[:1])


def test_total_variation_runs_over_height_and_width_only():
    across_channels = torch.zeros(1, 3, 8, 8)
    across_channels[:, 1] = 1.0  # the original's bug would count this
    assert total_variation(across_channels).item() == 0
    across_width = torch.zeros(1, 3, 8, 8)
    across_width[..., 4:] = 1.0
    assert total_variation(across_width).item() > 0
    assert torch.allclose(total_variation(across_width), total_variation(across_width.transpose(2, 3)))


@pytest.mark.parametrize("regularized", [True, False])
def test_class_image_raises_the_logit(model, regularized):
    params = {**FAST, "regularized": regularized}
    result = featvis.get("class_image", **params).generate(model, None, [0, 5])
    assert (result.extras["logit_end"] > result.extras["logit_start"] + 0.02).all()
    assert result.units.tolist() == [0, 5] and result.layer is None
    with pytest.raises(ConfigError, match="class 6 is out of range"):
        featvis.get("class_image", **params).generate(model, None, [6])


def test_class_agnostic_clusters_and_generates(model, photos):
    method = featvis.get("class_agnostic", num_clusters=2, top_channels=8, images_per_cluster=4, image_size=32,
                         penalty_layer="features.12", octaves=[TINY_OCTAVE, {**TINY_OCTAVE, "scale": 1.0}])
    result = method.generate(model, "features.14", None, photos)
    assert result.images.shape == (2, 3, 32, 32) and result.loss_curve.shape == (24, 2)
    labels = result.extras["cluster_of_image"]
    assert labels[:6].unique().numel() == 1 and labels[6:].unique().numel() == 1 and labels[0] != labels[6]
    members, weights = result.extras["members"], result.extras["weights"]
    for cluster in range(2):
        # The members are that cluster's own images, closest first (highest softmax(1/d) weight first).
        assert (labels[members[cluster]] == cluster).all()
        assert torch.allclose(weights[cluster].sum(), torch.tensor(1.0))
        assert (weights[cluster][:-1] >= weights[cluster][1:]).all()
    channels, target = result.extras["channels"], result.extras["target"]
    assert channels.shape == (2, 8)
    assert torch.equal(channels, target.topk(8, dim=1).indices)  # each cluster has its own channel set
    assert (result.extras["score_end"] > result.extras["score_start"]).all()
    subset = method.generate(model, "features.14", [1], photos)
    assert subset.units.tolist() == [1]
    # Same cluster alone or in the batch: same run up to float rounding of batched convolutions.
    assert torch.allclose(subset.loss_curve[:, 0], result.loss_curve[:, 1], rtol=1e-3, atol=1e-3)
    assert (subset.images[0] - result.images[1]).abs().mean() < 5e-3


def test_class_agnostic_with_tsne(model, photos):
    method = featvis.get("class_agnostic", num_clusters=2, top_channels=4, tsne=True, image_size=32,
                         octaves=[{**TINY_OCTAVE, "iterations": 2}])
    result = method.generate(model, "features.14", None, photos)
    assert result.extras["embedding"].shape == (12, 2)


def test_gaussian_blur_follows_imgaug_kernel_rule():
    assert [blur_kernel_size(s) for s in (0.2, 0.5, 0.9, 2.0, 4.0, 6.0)] == [5, 5, 5, 7, 11, 15]
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(gaussian_blur(images, 1e-4), images)
    blurred = gaussian_blur(images, 0.9)
    assert blurred.shape == images.shape and total_variation(blurred).max() < total_variation(images).min()


def test_laplacian_normalize_keeps_shape_and_is_per_image():
    grad = torch.randn(3, 3, 20, 24)
    out = laplacian_normalize(grad, 4)
    assert out.shape == grad.shape
    assert torch.allclose(laplacian_normalize(grad[1:2], 4), out[1:2], atol=1e-6)


def test_centre_mask_is_the_originals_gaussian():
    size, sigma = 33, 0.82 * 33
    mask = gaussian_centre_mask(size, sigma)
    assert mask.max() == 1 and mask.min() == 0
    assert torch.allclose(mask, mask.flip(0)) and torch.allclose(mask, mask.T)
    # eps ** (0.5 ((r-1)/sigma)^2) = exp(-18.02 ((r-1)/sigma)^2): a Gaussian of std sigma/6 around r = 1.
    radius = torch.hypot(*torch.meshgrid(torch.arange(size) - 16.0, torch.arange(size) - 16.0, indexing="ij"))
    raw = torch.exp(-18.0218 * ((radius - 1) / sigma) ** 2)
    assert torch.allclose(mask, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-3)
    assert mask[16, 17] == 1 and mask[16, 16] < 1


# Quick settings of every registered method for the contract test; a method registered without an entry here fails
# test_the_contract_covers_every_registered_method.
QUICK = {
    "filter_visualization": {**FAST, "iterations": 2},
    "deep_dream": {"iterations": 2, "octaves": 1},
    "inversion": {"iterations": 2},
    "class_image": {**FAST, "iterations": 2},
    "class_agnostic": {"num_clusters": 2, "top_channels": 4, "penalty_layer": "features.12", "image_size": 32,
                       "octaves": [{**TINY_OCTAVE, "iterations": 2}]},
}


def run_quick(name: str, model, photos):
    """Run a registered method as the workflow would for its kind of units, with its quick settings."""
    method = featvis.get(name, **QUICK[name])
    source = method.unit_source
    if source == "channels":
        return method.generate(model, "features.6", [0, 3])
    if source == "classes":
        return method.generate(model, None, [1, 2])
    if source == "images":
        return method.generate(model, "features.6", None, photos[:2])
    return method.generate(model, "features.14", None, photos)


def test_the_contract_covers_every_registered_method():
    assert set(QUICK) == set(featvis.FEATVIS.names())


@pytest.mark.parametrize("name", featvis.FEATVIS.names())
def test_every_method_meets_the_contract_and_leaves_the_model_as_it_was(name, model, photos):
    before = hook_count(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    result = run_quick(name, model, photos)
    n = len(result.images)
    assert result.images.ndim == 4 and result.images.shape[1] == 3 and n == 2
    assert result.images.dtype == torch.float32 and 0 <= result.images.min() and result.images.max() <= 1
    assert result.units.shape == (n,) and len(result.labels) == n and result.loss_curve.shape[1] == n
    assert torch.isfinite(result.loss_curve).all() and result.method == name
    assert hook_count(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    # The methods optimise on a copy with folded batch norms; the model given keeps its own.
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_hooks_are_released_on_an_error(model):
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"), tap_layers(model, outputs=["features.6"], inputs=["features.12"]):
        raise RuntimeError("boom")
    assert hook_count(model) == before


def test_bad_input_gives_clear_errors(model, photos):
    with pytest.raises(ConfigError, match="channel 128 is out of range.*0..127"):
        featvis.get("filter_visualization", **FAST).generate(model, "features.14", [3, 128])
    with pytest.raises(ConfigError, match="channel -1 is out of range"):
        featvis.get("filter_visualization", **FAST).generate(model, "features.14", [-1])
    with pytest.raises(ConfigError, match="needs units"):
        featvis.get("filter_visualization", **FAST).generate(model, "features.14")
    with pytest.raises(LayerError, match="features.99"):
        featvis.get("filter_visualization", **FAST).generate(model, "features.99", [0])
    with pytest.raises(LayerError, match="features.99"):
        featvis.get("class_agnostic", penalty_layer="features.99").generate(model, "features.14", None, photos)
    for name in ("deep_dream", "inversion", "class_agnostic"):
        with pytest.raises(DataError, match="non-empty image set"):
            featvis.get(name).generate(model, "features.6", None, torch.empty(0, 3, 32, 32))
        with pytest.raises(DataError, match="non-empty image set"):
            featvis.get(name).generate(model, "features.6", None, None)
    with pytest.raises(DataError, match=r"pixels in \[0,1\].*denormalize"):
        featvis.get("deep_dream").generate(model, "features.6", None, photos[:1] * 4 - 2)
    with pytest.raises(DataError, match="cannot form 4 clusters"):
        featvis.get("class_agnostic").generate(model, "features.14", None, photos[:3])
    with pytest.raises(ConfigError, match="top_channels=500"):
        featvis.get("class_agnostic", num_clusters=2, top_channels=500).generate(model, "features.14", None, photos)
