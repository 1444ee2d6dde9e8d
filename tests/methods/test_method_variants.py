"""Known answers for the method variants of the papers and the originals: channel reductions, SmoothGrad's
average, Score-CAM's softmax and initial value, on hand-built inputs and nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vislib import methods, models
from vislib.methods.gradients import CHANNEL_REDUCTIONS, reduce_channels
from vislib.methods.hooks import capture_layer, frozen_model
from vislib.methods.postprocess import map_quantiles


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def convert_to_grayscale(im_as_arr: np.ndarray) -> np.ndarray:
    """pytorch-cnn-visualizations' misc_functions.convert_to_grayscale, for a [3,H,W] array, as [H,W]."""
    grayscale_im = np.sum(np.abs(im_as_arr), axis=0)
    im_max = np.percentile(grayscale_im, 99)
    im_min = np.min(grayscale_im)
    return np.clip((grayscale_im - im_min) / (im_max - im_min), 0, 1)


# ---------------------------------------------------------------------------------------------------------
# Channel reductions


def test_the_reductions_of_hand_made_pixels():
    # Pixels (r, g, b): (1, -3, 2), (-1, -1, -1), (0, 0, 0), (0.5, 0, -2).
    a = torch.tensor([[1.0, -1.0, 0.0, 0.5], [-3.0, -1.0, 0.0, 0.0], [2.0, -1.0, 0.0, -2.0]]).reshape(1, 3, 2, 2)
    assert reduce_channels(a, "max_abs").flatten().tolist() == [3.0, 1.0, 0.0, 2.0]
    assert reduce_channels(a, "signed_sum").flatten().tolist() == [0.0, -3.0, 0.0, -1.5]
    # The 99th percentile of 4 sums |a| (6, 3, 0, 2.5): position 0.99 * 3 = 2.97, between 3 and 6.
    cap = 3 + 0.97 * (6 - 3)
    torch.testing.assert_close(reduce_channels(a, "sum_abs_clip99").flatten(), torch.tensor([cap, 3.0, 0.0, 2.5]))


def test_sum_abs_clip99_caps_an_outlier_at_the_99th_percentile():
    # Sums of |a| over the channels: 0, 1, ..., 98 and one outlier of 1000, in a 10x10 map.
    total = torch.arange(100, dtype=torch.float32)
    total[99] = 1000.0
    a = torch.stack([0.5 * total, -0.3 * total, 0.2 * total]).reshape(1, 3, 10, 10)
    cap = 98 + 0.01 * (1000 - 98)  # position 0.99 * 99 = 98.01 between order statistics 98 and 99
    expected = total.clone()
    expected[99] = cap
    torch.testing.assert_close(reduce_channels(a, "sum_abs_clip99"), expected.reshape(1, 10, 10))
    # Min-max normalised (vislib's one normalisation) it is the original's grayscale: v / 107.02.
    torch.testing.assert_close(methods.normalize_maps(reduce_channels(a, "sum_abs_clip99"))[0, 5, 0],
                               torch.tensor(50 / cap))


def test_sum_abs_clip99_normalised_is_the_originals_grayscale():
    torch.manual_seed(0)
    grads = torch.randn(3, 3, 17, 23) ** 3  # heavy tails, so the cap bites
    ours = methods.normalize_maps(reduce_channels(grads, "sum_abs_clip99"))
    for i in range(3):
        theirs = torch.from_numpy(convert_to_grayscale(grads[i].double().numpy())).float()
        torch.testing.assert_close(ours[i], theirs, rtol=0, atol=1e-6)


def test_map_quantiles_is_numpys_percentile_per_map():
    torch.manual_seed(1)
    for shape, q in [((4, 7, 9), 0.99), ((2, 1000), 0.5), ((3, 5), 1.0), ((3, 5), 0.0), ((1, 1), 0.99)]:
        maps = torch.randn(shape, dtype=torch.float64)
        expected = np.percentile(maps.reshape(shape[0], -1).numpy(), 100 * q, axis=1)
        torch.testing.assert_close(map_quantiles(maps, q)[:, 0], torch.from_numpy(expected))


class _Linear(nn.Module):
    """Logit 0 = <w, x> and logit 1 = 0: the input gradient of class 0 is `w` at every input."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        score = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


REDUCTION_METHODS = ["vanilla_gradient", "guided_backprop", "gradient_x_input", "integrated_gradients",
                     "smoothgrad"]


@pytest.mark.parametrize("how", CHANNEL_REDUCTIONS)
@pytest.mark.parametrize("method", REDUCTION_METHODS)
def test_every_gradient_method_reduces_its_attribution_by_the_parameter(method, how):
    torch.manual_seed(2)
    w = torch.randn(1, 3, 12, 12) ** 3
    x = torch.randn(2, 3, 12, 12)
    net = _Linear(w)
    # On a linear net every method's attribution is known: w (gradients, any noise), or x * w (the input
    # times the gradient, and integrated gradients from the zero baseline, exactly).
    attribution = x * w if method in ("gradient_x_input", "integrated_gradients") else w.expand_as(x)
    params = {"steps": 2} if method == "integrated_gradients" else {"samples": 2} if method == "smoothgrad" else {}
    explainer = methods.get(method, channel_reduction=how, **params)
    maps = explainer.explain(net, None, x, torch.tensor([0, 0])).maps
    torch.testing.assert_close(maps, reduce_channels(attribution, how), rtol=1e-5, atol=1e-6)
    assert explainer.maps_are_signed() == (how == "signed_sum")


def test_guided_gradcam_takes_the_reduction_too():
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([1, 3])
    for how in CHANNEL_REDUCTIONS:
        explainer = methods.get("guided_gradcam", channel_reduction=how)
        attribution = explainer.attribute(net, x, targets)
        torch.testing.assert_close(explainer.explain(net, None, x, targets).maps, reduce_channels(attribution, how))


def test_the_defaults_are_the_papers_reductions():
    assert methods.get("vanilla_gradient").reduction() == "max_abs"  # Simonyan et al.: max_c |w_c|
    assert methods.get("guided_backprop").reduction() == "max_abs"
    assert methods.get("gradient_x_input").reduction() == "signed_sum"
    assert methods.get("integrated_gradients").reduction() == "signed_sum"  # keeps completeness
    assert methods.get("smoothgrad").reduction() == "max_abs"  # the base method's
    assert methods.get("smoothgrad", base="integrated_gradients").reduction() == "signed_sum"
    assert methods.get("smoothgrad", base="integrated_gradients", channel_reduction="max_abs").reduction() == "max_abs"


# ---------------------------------------------------------------------------------------------------------
# SmoothGrad: what is averaged


class _AbsNet(nn.Module):
    """Logit 0 = <w, |x|>, logit 1 = 0: the input gradient of class 0 is w * sign(x)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        score = (x.abs() * self.w).sum(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_smoothgrad_averages_signed_absolute_or_squared_gradients():
    torch.manual_seed(3)
    w = torch.randn(1, 3, 8, 8)
    # Half the pixels far from 0 (the noise never flips their sign), half at 0 (it flips at random).
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4] = 100 * torch.sign(torch.randn(1, 3, 8, 4))
    net = _AbsNet(w)
    target = torch.tensor([0])
    explainer = methods.get("smoothgrad", samples=8, noise_level=0.01, seed=5)
    std = 0.01 * float(x.max() - x.min())
    gradients = w * torch.sign(x + std * explainer.noise(x))  # [samples,3,H,W]: the gradient at each noisy copy
    assert (gradients[:, :, :, :4] == (w * torch.sign(x))[:, :, :, :4]).all()
    assert not (gradients[:, :, :, 4:] == gradients[:1, :, :, 4:]).all()

    signed = explainer.attribute(net, x, target)
    torch.testing.assert_close(signed[0], gradients.mean(0))
    # The paper's average (Smilkov et al. eq. 3) of the raw gradient: where the sign flips, it cancels.
    assert (signed[..., 4:].abs() < w[..., 4:].abs()).float().mean() > 0.5
    torch.testing.assert_close(explainer.explain(net, None, x, target).maps, gradients.mean(0).abs().amax(0)[None])

    absolute = methods.get("smoothgrad", samples=8, noise_level=0.01, seed=5, average="absolute")
    torch.testing.assert_close(absolute.attribute(net, x, target), w.abs())  # mean |g| = |w| wherever x is
    squared = methods.get("smoothgrad", samples=8, noise_level=0.01, seed=5, average="squared")
    torch.testing.assert_close(squared.attribute(net, x, target), w * w)  # mean g^2 = w^2
    torch.testing.assert_close(squared.explain(net, None, x, target).maps, (w * w).amax(1))


@pytest.mark.parametrize("average,how,signed", [
    ("signed", "base", True), ("absolute", "base", False), ("squared", "base", False),
    ("signed", "max_abs", False), ("signed", "sum_abs_clip99", False), ("absolute", "signed_sum", False)])
def test_smoothgrad_maps_are_signed_only_for_a_signed_sum_of_a_signed_average(average, how, signed):
    explainer = methods.get("smoothgrad", base="gradient_x_input", samples=2, average=average, channel_reduction=how)
    assert explainer.maps_are_signed() == signed
    maps = explainer.explain(models.load("demonet", "random"), None, torch.randn(3, 3, 32, 32)).maps
    if signed:
        assert (maps < 0).any() and (maps > 0).any()
    else:
        assert (maps >= 0).all()


# ---------------------------------------------------------------------------------------------------------
# Score-CAM


class _ThreeChannels(nn.Module):
    """`features`: A0 = x0, A1 = sign * x1 and A2 = 1 (a constant channel); logits = W @ mean(A).

    The images are 2x2 like the layer, so the masks are the min-max normalised channels themselves.
    """

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.features.weight[1, 1] = sign
            self.features.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
            self.head.weight.copy_(torch.tensor([[8.0, 4.0, 0.0], [0.0, 8.0, 0.0]]))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _image() -> torch.Tensor:
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 1, 1] = 2.0
    return x


def test_scorecam_softmax_over_classes_and_over_channels_by_hand():
    # Masks: M0 = [[1,0],[0,0]], M1 = [[0,0],[0,1]], M2 = 0 (constant). Masked inputs' mean activations:
    # x*M0 -> (0.25, 0, 1), logits (2, 0); x*M1 -> (0, 0.5, 1), logits (2, 4); x*M2 -> (0, 0, 1), logits (0, 0).
    net, x, target = _ThreeChannels(), _image(), torch.tensor([0])
    classes = methods.get("scorecam", softmax="classes").explain(net, "features", x, target).maps[0]
    # Target probabilities: sigmoid(2 - 0), sigmoid(2 - 4); the constant channel is skipped (weight 0).
    p0, p1 = sigmoid(2), sigmoid(-2)
    torch.testing.assert_close(classes, torch.tensor([[p0, 0.0], [0.0, 2 * p1]]))
    # The softmax over channels of the target logits (2, 2, 0).
    z = 2 * math.exp(2) + 1
    w0, w1, w2 = math.exp(2) / z, math.exp(2) / z, 1 / z
    channels = methods.get("scorecam", softmax="channels").explain(net, "features", x, target).maps[0]
    torch.testing.assert_close(channels, torch.tensor([[w0 + w2, w2], [w2, 2 * w1 + w2]]))
    # The two weightings disagree on where the class is.
    assert classes.argmax() == 0 and channels.argmax() == 3


def test_scorecam_ones_init_changes_the_normalised_map_only_where_the_sum_goes_negative():
    x, target = _image(), torch.tensor([0])
    # A post-ReLU-like layer (activations >= 0, weights > 0): 1 + S >= 1, so min-max removes the offset.
    net = _ThreeChannels()
    maps = {init: methods.get("scorecam", init=init).explain(net, "features", x, target).maps
            for init in ("zeros", "ones")}
    torch.testing.assert_close(maps["ones"], maps["zeros"] + 1)
    torch.testing.assert_close(methods.normalize_maps(maps["ones"]), methods.normalize_maps(maps["zeros"]))
    # A signed channel, A1 = [[0,0],[0,-2]]: M1 = [[1,1],[1,0]], so x*M1 keeps only x0 and scores like x*M0,
    # logits (2, 0). Both weights are sigmoid(2), and S = p (A0 + A1) = p [[1,0],[0,-2]].
    net = _ThreeChannels(sign=-1.0)
    p = sigmoid(2)
    zeros = methods.get("scorecam", init="zeros").explain(net, "features", x, target).maps[0]
    ones = methods.get("scorecam", init="ones").explain(net, "features", x, target).maps[0]
    torch.testing.assert_close(zeros, torch.tensor([[p, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(ones, torch.tensor([[1 + p, 1.0], [1.0, max(0.0, 1 - 2 * p)]]))
    assert not torch.allclose(methods.normalize_maps(ones[None]), methods.normalize_maps(zeros[None]))


def _original_scorecam(net, layer, x, target):
    """pytorch-cnn-visualizations' ScoreCam.generate_cam for one image, at the layer's resolution (before its
    uint8 and PIL resize), upsampling the masks to the image size instead of a fixed 224."""
    with torch.no_grad(), frozen_model(net), capture_layer(net, layer) as capture:
        net(x)
        conv = capture.activation[0].clone()
        cam = np.ones(conv.shape[1:], dtype=np.float32)
        for i in range(len(conv)):
            saliency_map = F.interpolate(conv[i][None, None], size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
            if saliency_map.max() == saliency_map.min():
                continue
            norm_saliency_map = (saliency_map - saliency_map.min()) / (saliency_map.max() - saliency_map.min())
            w = F.softmax(net(x * norm_saliency_map), dim=1)[0][target]
            cam += w.numpy() * conv[i].numpy()
    cam = np.maximum(cam, 0)
    return torch.from_numpy((cam - np.min(cam)) / (np.max(cam) - np.min(cam)))


@pytest.mark.parametrize("layer", ["features.13", "features.14"])  # before and after a ReLU
def test_scorecam_with_the_originals_switches_is_the_originals_loop(layer):
    torch.manual_seed(4)
    net = models.load("demonet", "random")
    x = torch.randn(1, 3, 32, 32)
    ours = methods.get("scorecam", softmax="classes", init="ones").explain(net, layer, x, torch.tensor([2])).maps
    torch.testing.assert_close(methods.normalize_maps(ours)[0], _original_scorecam(net, layer, x, 2),
                               rtol=0, atol=1e-5)
