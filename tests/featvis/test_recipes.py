"""`recipe: original`: the values read from the original codes, its start images, the class-agnostic term balance,
t-SNE clustering, the plain optimiser path, and a short run of every method that must raise its objective.

Sources (file:line below): pytorch-cnn-visualizations @ba22fa0 src/, Class-Agnostic-Feature-Visualisation @6c9590d.
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from vislib import featvis, models
from vislib.errors import ConfigError
from vislib.featvis.base import draw_start, start_from_draws, unit_start
from vislib.featvis.class_agnostic import (
    ORIGINAL_OCTAVE,
    cluster_image_set,
    combine_terms,
    last_conv_before,
    parse_octave,
    set_dots,
)
from vislib.featvis.engine import EngineSettings, learning_rate, optimize, regularizers
from vislib.losses import general_robust_loss

# Every value `recipe: original` sets, with where the original has it.
ORIGINAL_VALUES = {
    "filter_visualization": {
        "size": 224,  # cnn_layer_visualization.py:42  np.random.uniform(150, 180, (224, 224, 3))
        "init": "uniform",  # cnn_layer_visualization.py:42  np.uint8(np.random.uniform(...))
        "init_range": [150.0, 180.0],  # cnn_layer_visualization.py:42
        "space": "normalized",  # cnn_layer_visualization.py:44,46  Adam over preprocess_image(...)'s normalised tensor
        "optimizer": "adam",  # cnn_layer_visualization.py:46
        "lr": 0.1, "lr_end": 0.1,  # cnn_layer_visualization.py:46  Adam(lr=0.1), no schedule
        "weight_decay": 1e-6,  # cnn_layer_visualization.py:46
        "momentum": 0.0,
        "iterations": 30,  # cnn_layer_visualization.py:47  range(1, 31)
        "objective": "channel",  # cnn_layer_visualization.py:62  -torch.mean(conv_output)
        "projection": "none",  # cnn_layer_visualization.py:69  recreate_image only for saving; no clamp in the loop
        # cnn_layer_visualization.py:47-67: no jitter, blur, octaves, regulariser or gradient conditioning
        "octaves": 1, "jitter": 0, "scale_jitter": 0.0, "blur_every": 0, "tv_weight": 0.0, "decay_weight": 0.0,
        "alpha_weight": 0.0, "grad_pyramid": 0, "decorrelate": False, "lr_decay_every": 0,
    },
    "deep_dream": {
        "space": "normalized",  # deep_dream.py:45,48  SGD over preprocess_image(...)'s normalised tensor
        "optimizer": "sgd", "lr": 12.0, "lr_end": 12.0, "weight_decay": 1e-4,  # deep_dream.py:48
        "momentum": 0.0,  # deep_dream.py:48  SGD without momentum
        "iterations": 250,  # deep_dream.py:49  range(1, 251)
        "objective": "channel",  # deep_dream.py:61  -torch.mean(conv_output)
        "projection": "none",  # deep_dream.py:68  recreate_image only for saving
        # deep_dream.py:49-66: none of vislib's regularisers
        "octaves": 1, "jitter": 0, "scale_jitter": 0.0, "blur_every": 0, "tv_weight": 0.0, "decay_weight": 0.0,
        "alpha_weight": 0.0, "grad_pyramid": 0, "decorrelate": False, "lr_decay_every": 0,
    },
    "inversion": {
        "init": "normal", "init_std": 0.1,  # inverted_representation.py:66  1e-1 * torch.randn(...)
        "space": "normalized",  # inverted_representation.py:66,68  the optimised tensor is fed to the model as is
        "optimizer": "sgd", "lr": 1e4, "momentum": 0.9,  # inverted_representation.py:68
        "weight_decay": 0.0,  # inverted_representation.py:68
        "alpha": 6.0,  # inverted_representation.py:76
        "alpha_weight": 1e-7,  # inverted_representation.py:78
        "tv_beta": 2.0,  # inverted_representation.py:82
        "tv_weight": 1e-8,  # inverted_representation.py:84
        "iterations": 201,  # inverted_representation.py:86  range(201)
        "feature_weight": 0.1,  # inverted_representation.py:92  1e-1 * self.euclidian_loss(...)
        "penalty_reduction": "sum",  # inverted_representation.py:25,37  .sum() of x^alpha and of the TV terms
        "lr_decay_every": 40, "lr_decay_factor": 0.1,  # inverted_representation.py:112-114  i % 40 == 0: lr *= 1/10
        "projection": "none",  # inverted_representation.py:106  recreate_image only for saving
        "octaves": 1, "jitter": 0, "scale_jitter": 0.0, "blur_every": 0, "decay_weight": 0.0, "grad_pyramid": 0,
        "decorrelate": False,
    },
    "class_image": {
        "size": 224,  # generate_class_specific_samples.py:27  np.random.uniform(0, 255, (224, 224, 3))
        "init": "uniform", "init_range": [0.0, 255.0],  # generate_class_specific_samples.py:27
        "space": "normalized",  # generate_class_specific_samples.py:44,47  SGD over preprocess_image(...)
        "optimizer": "sgd", "lr": 6.0, "lr_end": 6.0,  # generate_class_specific_samples.py:41,47
        "momentum": 0.0, "weight_decay": 0.0,  # generate_class_specific_samples.py:47  SGD([...], lr=6)
        "iterations": 149,  # generate_class_specific_samples.py:32,42  range(1, iterations=150)
        "projection": "uint8",  # generate_class_specific_samples.py:63,44 + misc_functions.py:216-220  clip, round
        "regularized": False,  # generate_class_specific_samples.py:42-63: no blur, decay, jitter or octaves
        "octaves": 1, "jitter": 0, "scale_jitter": 0.0, "blur_every": 0, "tv_weight": 0.0, "decay_weight": 0.0,
        "alpha_weight": 0.0, "grad_pyramid": 0, "decorrelate": False, "lr_decay_every": 0,
    },
    "class_agnostic": {
        "top_channels": 50,  # vis.py:745  target_channels = 50
        "num_clusters": 10,  # vis.py:746  clusters = 10
        "penalty_layer": "auto",  # vis.py:747-748  '7.2.conv3', the last convolution before target '7.2.relu'
        "image_size": 512,  # vis.py:203  cv2.resize(im, (512, 512), ...)
        "tsne": True,  # vis.py:386,391,395  PCA(50) -> TSNE(2) -> KMeans
        "embedding": "tsne",  # vis.py:410-430  the scatter of the t-SNE embedding, tsne_<name>.png
        "images_per_cluster": 10,  # vis.py:439  [:10]
        "blur_every": 10,  # vis.py:585,713  i % 10 == 0: blur, denoise
        "momentum": 0.9,  # vis.py:615  SGD(..., momentum=0.9, nesterov=True)
        "fresh_optimizer": True,  # vis.py:609-615  a new AdaptiveLossFunction and SGD every iteration
        # vis.py:609,636: the adaptive loss's initial alpha and scale (robust_loss_pytorch: alpha midpoint of
        # [0.001, 1.999], scale_init 1), which it never leaves because it is rebuilt every step
        "robust_alpha": 1.0, "robust_scale": 1.0,
        "space": "normalized",  # vis.py:606,615  SGD over preprocess_image(...)'s normalised tensor
        "projection": "uint8",  # vis.py:709 + vis.py:244-248  recreate_image: clip, round, uint8 every step
        "term_balance": "original",  # vis.py:645-655  [B,K] dot term + scalar L1 + scalar mean distance, summed
        "decorrelate": False, "grad_pyramid": 0,  # vis.py:657-665  the raw gradient times the mask
    },
}

ORIGINAL_OCTAVE_VALUES = {
    "iterations": 2001,  # vis.py:769  iterations=2001 (also the default, vis.py:332); for i in range(1, 2001 + 1)
    "scale": 1.2,  # vis.py:757
    "start_lr": 0.5, "end_lr": 0.08,  # vis.py:758
    "start_mask_sigma": 420 / 512, "end_mask_sigma": 340 / 512,  # vis.py:759 (px at vis.py:203's 512 px side)
    "start_sigma": 0.9, "end_sigma": 0.2,  # vis.py:760
    "start_denoise_weight": 2.0, "end_denoise_weight": 8.0,  # vis.py:761
    "start_lambda": 1e-4, "end_lambda": 5e-4,  # vis.py:762
    "window": 0.4,  # vis.py:763
    "window_step": 400,  # vis.py:764
    "brightness_step": 50,  # vis.py:765
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loud_model():
    """The demo net with random weights and its first convolution scaled by 100 (the net is ReLU and eval-mode
    batch norm, so every activation and gradient scales by 100): logits of a few units, as a trained net has.
    At the random init's scale (logits ~0.05) the original recipes' 8-bit rounding swallows every step."""
    torch.manual_seed(0)
    model = models.load("demonet")
    with torch.no_grad():
        model.features[0].weight.mul_(100)
    return model


@pytest.mark.parametrize("name", sorted(ORIGINAL_VALUES))
def test_original_recipe_sets_the_original_values(name):
    params = featvis.get(name, recipe="original").params
    assert params["recipe"] == "original"
    assert {key: params[key] for key in ORIGINAL_VALUES[name]} == ORIGINAL_VALUES[name]


def test_original_class_agnostic_octave_is_the_originals():
    method = featvis.get("class_agnostic", recipe="original")
    assert method.params["octaves"] == [ORIGINAL_OCTAVE]
    assert dataclasses.asdict(method.octaves[0]) == ORIGINAL_OCTAVE_VALUES
    # At the original's 512 px the mask sigmas are its pixel values.
    assert method.octaves[0].start_mask_sigma * 512 == 420 and method.octaves[0].end_mask_sigma * 512 == 340


def test_every_method_has_the_recipe_switch_and_regularized_is_the_default():
    assert set(ORIGINAL_VALUES) == set(featvis.FEATVIS.names())
    for name in featvis.FEATVIS.names():
        assert featvis.get(name).params == featvis.get(name, recipe="regularized").params
        assert featvis.get(name).params["recipe"] == "regularized"
        assert featvis.get(name).params != featvis.get(name, recipe="original").params
    with pytest.raises(ConfigError, match="recipe.*'regularized', 'original'"):
        featvis.get("inversion", recipe="paper")


def test_explicit_parameters_override_the_recipe():
    method = featvis.get("filter_visualization", recipe="original", iterations=3, size=32)
    assert method.params["iterations"] == 3 and method.params["size"] == 32
    assert method.params["lr"] == 0.1 and method.params["optimizer"] == "adam"  # the rest stays the recipe's
    # An octave given with the original recipe takes its missing keys from the original's octave.
    agnostic = featvis.get("class_agnostic", recipe="original", octaves=[{"iterations": 5}])
    assert dataclasses.asdict(agnostic.octaves[0]) == {**ORIGINAL_OCTAVE_VALUES, "iterations": 5}
    assert parse_octave({"iterations": 5}, 0).start_lr == 0.01  # without the recipe: vislib's octave
    # A value given that the recipe also sets is still checked.
    with pytest.raises(ConfigError, match="init_range"):
        featvis.get("class_image", recipe="original", init_range=[200, 100])


def test_original_start_images_are_8bit_uniform_noise():
    # np.uint8(np.random.uniform(150, 180, ...)) truncates U[150, 180) to the integers 150..179, each equally likely.
    method = featvis.get("filter_visualization", recipe="original")
    preprocessing = models.load("demonet").vislib_preprocessing
    units = torch.tensor([0, 7, 31])
    images = unit_start(method.params["init"], units, (64, 64), 0, method.params["init_std"],
                        method.params["init_range"], preprocessing)
    values = images * 255
    assert torch.equal(values, values.round()) and values.min() == 150 and values.max() == 179
    counts = torch.bincount(values.round().long().flatten() - 150, minlength=30)
    expected = values.numel() / 30
    assert counts.numel() == 30 and ((counts - expected).abs() < 5 * math.sqrt(expected)).all()
    assert abs(values.mean().item() - 164.5) < 0.2
    # Drawn per (seed, unit): a unit's start is the same alone or in a batch; units differ.
    alone = unit_start("uniform", units[1:2], (64, 64), 0, 0.1, [150, 180], preprocessing)
    assert torch.equal(alone[0], images[1]) and not torch.equal(images[0], images[1])
    # Class images: uniform(0, 255) -> 0..254.
    params = featvis.get("class_image", recipe="original").params
    values = unit_start(params["init"], units, (64, 64), 0, 0.1, params["init_range"], preprocessing) * 255
    assert values.min() == 0 and values.max() == 254 and abs(values.mean().item() - 127) < 1


def test_original_inversion_start_is_noise_in_normalised_space():
    # 1e-1 * torch.randn(1, 3, H, W) is the normalised image: the mean colour plus 0.1 standard deviations of noise.
    preprocessing = models.load("demonet").vislib_preprocessing
    generator = torch.Generator().manual_seed(0)
    image = start_from_draws("normal", draw_start("normal", (4, 3, 64, 64), generator), 0.1, [0, 255], preprocessing)
    normalised = preprocessing.normalize(image)
    assert abs(normalised.mean().item()) < 0.01 and abs(normalised.std().item() - 0.1) < 0.01


def test_step_decay_is_the_original_inversions_schedule():
    # inverted_representation.py:86-114: the step uses lr, then `if i % 40 == 0: lr *= 1/10` (i = 0 included).
    lr, used = 1e4, []
    for i in range(201):
        used.append(lr)
        if i % 40 == 0:
            lr *= 1 / 10
    settings = EngineSettings(**{k: v for k, v in ORIGINAL_VALUES["inversion"].items()
                                 if k in {f.name for f in dataclasses.fields(EngineSettings)}})
    assert [learning_rate(settings, i) for i in range(201)] == pytest.approx(used, rel=1e-12)
    assert learning_rate(settings, 0) == 1e4 and learning_rate(settings, 40) == pytest.approx(1e3)
    assert learning_rate(settings, 41) == pytest.approx(1e2)


def test_penalty_reduction_sums_over_the_image():
    images = torch.rand(2, 3, 8, 8)
    mean = regularizers(images, images, EngineSettings(tv_weight=1.0, alpha_weight=1.0, alpha=6.0))
    summed = regularizers(images, images, EngineSettings(tv_weight=1.0, alpha_weight=1.0, alpha=6.0,
                                                         penalty_reduction="sum"))
    tv_sum = ((images[..., 1:, :-1] - images[..., :-1, :-1]) ** 2
              + (images[..., :-1, 1:] - images[..., :-1, :-1]) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(summed, tv_sum + images.pow(6).flatten(1).sum(1))
    assert (summed > 50 * mean).all()


def test_plain_sgd_step_in_normalised_space_is_the_hand_computed_one(loud_model):
    # Objective -sum(w * x) over the normalised image x: gradient -w. One SGD step with weight decay wd:
    # x1 = x0 - lr * (-w + wd * x0); the result is x1 back in pixels (within [0,1] here, so not clamped).
    preprocessing = loud_model.vislib_preprocessing
    init = 0.4 + 0.2 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    settings = EngineSettings(iterations=1, lr=0.01, lr_end=0.01, optimizer="sgd", weight_decay=0.5,
                              space="normalized", projection="none")
    result, curve = optimize(loud_model, lambda x: -(w * x).flatten(1).sum(1), init, settings, seed=0)
    x0 = preprocessing.normalize(init)
    expected = preprocessing.denormalize(x0 - 0.01 * (-w + 0.5 * x0))
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(curve[0], -(w * x0).flatten(1).sum(1))
    # The same step on the pixels moves each pixel by lr * std * w, not lr * w / std: the spaces differ.
    pixels, _ = optimize(loud_model, lambda x: -(w * x).flatten(1).sum(1), init,
                         dataclasses.replace(settings, space="pixels", weight_decay=0.0), seed=0)
    std = torch.tensor(preprocessing.std)[:, None, None]
    torch.testing.assert_close(pixels, (init + 0.01 * w / std).clamp(0, 1))


def test_uint8_projection_keeps_8bit_pixels(loud_model):
    result = featvis.get("class_image", recipe="original", size=32, iterations=3).generate(loud_model, None, [1])
    values = result.images * 255
    assert (values - values.round()).abs().max() < 1e-3


def test_term_balance_on_a_hand_made_case():
    # Two clusters, three channels; image b is cluster b's image. Channel sets S_0 = {2, 0}, S_1 = {0, 1}.
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 0.0]])  # pooled activations of the two images
    t = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])  # each image's own cluster target
    sets = torch.tensor([[2, 0], [0, 1]])
    # dots[b, k] = sum_{j in S_k} a[b, j] t[b, j]: [[3*2 + 1*1, 1*1 + 2*0], [0*1 + 0.5*0, 0.5*0 + 1*1]]
    dots = set_dots(a, t, sets)
    assert dots.tolist() == [[7.0, 1.0], [0.0, 1.0]]
    l1 = torch.tensor([10.0, 20.0])  # L1 norms of the two images' penalty-layer inputs
    lam = 0.01
    # Charbonnier sqrt(r^2 + 1) - 1 of a - t = [[0, 2, 1], [0.5, 0, -1]], averaged over the channels.
    distance = torch.tensor([(math.sqrt(5) + math.sqrt(2) - 2) / 3, (math.sqrt(1.25) + math.sqrt(2) - 2) / 3])
    torch.testing.assert_close(general_robust_loss(a - t, 1.0, 1.0).mean(1), distance)
    own = torch.tensor([0, 1])
    # vislib: each image against its own set, lambda * L1 and the distance once per image.
    per_cluster = combine_terms(dots, own, l1, distance, lam, "per_cluster")
    torch.testing.assert_close(per_cluster, torch.tensor([-7.0 + 0.1, -1.0 + 0.2]) + distance)
    # vis.py: image b against every set, and both scalars (the batch's L1, the batch-mean distance) added to each
    # of the B*K = 4 entries of the [B,K] dot matrix: image b carries K^2 lambda L1_b and K mean_c rho_bc.
    original = combine_terms(dots, own, l1, distance, lam, "original")
    torch.testing.assert_close(original, torch.tensor([-8.0 + 4 * 0.1, -1.0 + 4 * 0.2]) + 2 * distance)
    # The same total, written as vis.py:645-655 computes it.
    index = sets.tolist()  # self.target_channels: a list of per-cluster index lists
    class_loss = -1 * torch.sum(a[:, index] * t[:, index], dim=-1)  # [B,K]
    class_loss += lam * l1.sum()  # torch.norm(p_layer, p=1): one L1 norm of the whole batch = the images' sum
    class_loss += torch.mean(general_robust_loss(a - t, 1.0, 1.0))  # one mean over B x C
    torch.testing.assert_close(original.sum(), class_loss.sum())


def test_original_balance_does_not_depend_on_the_shard(loud_model, photos):
    params = {"recipe": "original", "num_clusters": 2, "image_size": 32, "top_channels": 8, "images_per_cluster": 4,
              "tsne": False, "octaves": [{"iterations": 4, "window_step": 3}]}
    method = featvis.get("class_agnostic", **params)
    both = method.generate(loud_model, "features.14", None, photos)
    alone = method.generate(loud_model, "features.14", [1], photos)
    torch.testing.assert_close(alone.loss_curve[:, 0], both.loss_curve[:, 1], rtol=1e-3, atol=1e-2)
    assert (alone.images[0] - both.images[1]).abs().mean() < 2e-3


def test_tsne_clustering_gives_the_clusters_asked_for_and_is_deterministic(photos):
    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(3, 16, generator=generator) * 5
    pooled = torch.cat([centre + 0.3 * torch.randn(8, 16, generator=generator) for centre in centres])
    first = cluster_image_set(pooled, 3, 4, seed=0, tsne=True)
    second = cluster_image_set(pooled, 3, 4, seed=0, tsne=True)
    assert first["labels"].unique().numel() == 3
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The three groups of 8 are the three clusters.
    labels = first["labels"]
    assert all(labels[8 * g:8 * g + 8].unique().numel() == 1 for g in range(3))
    members = first["members"]
    assert all((labels[members[c]] == c).all() for c in range(3))
    assert first["embedding"].shape == (24, 2)


def test_auto_penalty_layer_is_the_last_convolution_before_the_target():
    demo = models.load("demonet")
    sample = torch.zeros(1, 3, 32, 32)
    assert last_conv_before(demo, "features.14", sample) == "features.12"
    assert last_conv_before(demo, "features.1", sample) == "features.0"
    # vis.py:747-748: target '7.2.relu' (layer4.2.relu of torchvision's ResNet; the block's ReLU runs three times,
    # the last on the block output), penalty '7.2.conv3'. ResNet-50 has the same bottleneck blocks.
    resnet = models.load("resnet50")
    assert last_conv_before(resnet, "layer4.2.relu", sample) == "layer4.2.conv3"
    with pytest.raises(ConfigError, match="no convolution"):
        last_conv_before(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 1)), "0", sample)


SHORT = {
    "filter_visualization": {"size": 32, "iterations": 8},
    "deep_dream": {"iterations": 8},
    "inversion": {"iterations": 8},
    "class_image": {"size": 32, "iterations": 8},
    "class_agnostic": {"num_clusters": 2, "image_size": 32, "top_channels": 8, "images_per_cluster": 4,
                       "octaves": [{"iterations": 9, "window_step": 5}]},
}


@pytest.mark.parametrize("name", sorted(SHORT))
def test_a_short_original_run_raises_its_objective(name, loud_model, photos):
    method = featvis.get(name, recipe="original", **SHORT[name])
    if name == "filter_visualization":
        result = method.generate(loud_model, "features.6", [0, 3])
        gain = result.extras["activation_end"] - result.extras["activation_start"]
    elif name == "deep_dream":
        result = method.generate(loud_model, "features.6", [0, 3], photos[:2])
        gain = result.extras["activation_end"] - result.extras["activation_start"]
    elif name == "inversion":
        result = method.generate(loud_model, "features.6", None, photos[:2])
        gain = result.extras["feature_distance_start"] - result.extras["feature_distance_end"]
    elif name == "class_image":
        result = method.generate(loud_model, None, [1, 2])
        gain = result.extras["logit_end"] - result.extras["logit_start"]
    else:
        result = method.generate(loud_model, "features.14", None, photos)
        gain = result.extras["score_end"] - result.extras["score_start"]
    assert (gain > 0).all(), gain
    assert (result.loss_curve[-1] < result.loss_curve[0]).all()
    assert 0 <= result.images.min() and result.images.max() <= 1


def test_steps_too_large_for_the_model_fail_clearly(loud_model, photos):
    with pytest.raises(ConfigError, match="loss became .* at step .*lower lr"):
        featvis.get("inversion", recipe="original", iterations=6, lr=1e12).generate(
            loud_model, "features.6", None, photos[:1])
