"""The perturbation-scored CAMs: Ablation-CAM against pytorch-grad-cam, SS-CAM and IS-CAM against torchcam, on
random-weight nets and the trained demo net; their options, seeds and errors."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam.methods import ISCAM, SSCAM

from vislib import methods, models
from vislib.data.dataset import CocoFormatDataset
from vislib.errors import ConfigError, LayerError
from vislib.methods.cam import first_component
from vislib.methods.hooks import capture_layer, frozen_model

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Ablation-CAM prints a progress bar per image


def pgc_ablation_maps(net, layer: str, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's Ablation-CAM at layer resolution (its get_cam_image route, before cv2 resizing)."""
    module = models.resolve_layer(net, layer)
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]
    with AblationCAM(net, target_layers=[module]) as cam:
        # Its __call__ resizes the maps to the input with cv2; get_cam_image (which ablates) stops before that.
        cam.activations_and_grads(x)
        activations = cam.activations_and_grads.activations[0].numpy()
        native = cam.get_cam_image(x, module, wanted, activations, None, False)
    return torch.from_numpy(np.maximum(native, 0))


def _upsample_then_normalize(extractor, activation: torch.Tensor) -> torch.Tensor:
    """torchcam's mask upsampling followed by a min-max normalisation per mask (constant masks: 0).

    torchcam normalises each channel at the layer's resolution and then upsamples it; vislib upsamples first and
    normalises the upsampled mask (the Score-CAM paper's s(Up(A_k))). Bilinear upsampling is affine in its input,
    so normalising torchcam's upsampled mask again gives exactly vislib's mask.
    """
    up = F.interpolate(activation, extractor._input.shape[2:], mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    low = flat.amin(2, keepdim=True)
    span = flat.amax(2, keepdim=True) - low
    return torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat)).view_as(up)


class _InjectedNoise:
    """Stands in for torchcam SSCAM's noise distribution: its i-th draw is vislib's i-th noise sample, the same
    for every image and channel (torchcam draws [N,C,H,W] per sample)."""

    def __init__(self, noise: torch.Tensor) -> None:
        self.noise, self.drawn = noise, 0

    def sample(self, size: torch.Size) -> torch.Tensor:
        draw = self.noise[self.drawn]
        self.drawn += 1
        return draw.expand(size)


def torchcam_maps(method: str, net, layer: str, x: torch.Tensor, targets: torch.Tensor, ours) -> torch.Tensor:
    """torchcam's SS-CAM or IS-CAM at layer resolution with vislib's masks (and, for SS-CAM, vislib's noise)."""
    if method == "sscam":
        extractor = SSCAM(net, layer, num_samples=ours.params["samples"], std=ours.params["noise_std"],
                          input_shape=tuple(x.shape[1:]))
        extractor._distrib = _InjectedNoise(ours.params["noise_std"] * ours.noise(x))
    else:
        extractor = ISCAM(net, layer, num_samples=ours.params["steps"], input_shape=tuple(x.shape[1:]))
    with extractor:
        extractor._upsample = _upsample_then_normalize.__get__(extractor)
        with torch.no_grad():
            net(x)
        return extractor(targets.tolist(), normalized=False)[0]


def assert_same_maps(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(methods.normalize_maps(ours), methods.normalize_maps(theirs), rtol=0, atol=1e-4)


# (model, input size, layer): post-ReLU layers, whose minimum is 0, so pytorch-grad-cam ablates to 0 as the paper
# does; few channels keep every method's exact run quick.
RANDOM_CASES = [("demonet", 32, "features.6"), ("resnet18", 32, "layer1")]


@pytest.fixture(scope="module")
def random_nets():
    torch.manual_seed(0)
    return {name: models.load(name, "random") for name, *_ in RANDOM_CASES}


@pytest.fixture(scope="module")
def trained_net_and_images(trained_demonet):
    """The trained demo net and 2 of its shapes val images, preprocessed."""
    net = models.load("demonet", str(trained_demonet.checkpoint))
    val = CocoFormatDataset("shapes", trained_demonet.shapes_root, "val")
    batch = val.load_batch(val.image_ids()[:2], models.preprocessing_of(net))
    return net, batch.images


def peer_maps(method: str, net, layer: str, x: torch.Tensor, targets: torch.Tensor, ours) -> torch.Tensor:
    if method == "ablationcam":
        return pgc_ablation_maps(net, layer, x, targets)
    return torchcam_maps(method, net, layer, x, targets, ours)


# torchcam weighs by the softmax over channels of the (averaged) logits, as pytorch-grad-cam's Score-CAM does.
PEER_PARAMS = {"ablationcam": {}, "sscam": {"softmax": "channels", "samples": 2, "noise_std": 0.5},
               "iscam": {"softmax": "channels", "steps": 3}}


@pytest.mark.parametrize("method,case", [(method, RANDOM_CASES[0]) for method in sorted(PEER_PARAMS)]
                         + [("ablationcam", RANDOM_CASES[1])], ids=lambda value: value if isinstance(value, str)
                         else value[0])
def test_random_nets_match_the_peer(random_nets, method, case):
    # SS-CAM's and IS-CAM's masks act on the input, whatever the net; Ablation-CAM's change of one layer's output
    # is also checked inside a residual net (the block's skip branch crosses the layer).
    name, size, layer = case
    net = random_nets[name]
    count = 2 if name == "demonet" else 1
    x = torch.randn(count, 3, size, size)
    targets = torch.tensor([1, 3])[:count]
    if name == "resnet18":
        # A random resnet's logits are small (|y| ~ 0.06, drops ~ 0.01) and each drop is divided by y, so float32
        # rounding of the logits (~5e-7, which the batch's composition changes) reached 1.4e-4 of the normalised
        # map on some inputs; in float64 the two agree to 1e-7 (pytorch-grad-cam casts its scores to float32).
        net, x = copy.deepcopy(net).double(), x.double()
    ours = methods.get(method, **PEER_PARAMS[method])
    assert_same_maps(ours.explain(net, layer, x, targets).maps, peer_maps(method, net, layer, x, targets, ours))


@pytest.mark.parametrize("method", sorted(PEER_PARAMS))
def test_trained_demonet_matches_the_peer(trained_net_and_images, method):
    net, x = trained_net_and_images
    with torch.no_grad():
        targets = net(x).argmax(1)
    ours = methods.get(method, **PEER_PARAMS[method])
    maps = ours.explain(net, "features.14", x, targets).maps
    assert_same_maps(maps, peer_maps(method, net, "features.14", x, targets, ours))


def test_sscam_noise_is_seeded_and_independent_of_the_batch(random_nets):
    net = random_nets["demonet"]
    x = torch.randn(3, 3, 32, 32)
    ours = methods.get("sscam", samples=2, noise_std=1.0, seed=5)
    batch = ours.explain(net, "features.6", x).maps
    torch.testing.assert_close(ours.explain(net, "features.6", x[2:]).maps, batch[2:], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(methods.get("sscam", samples=2, noise_std=1.0, seed=5).explain(
        net, "features.6", x).maps, batch, rtol=0, atol=0)
    other_seed = methods.get("sscam", samples=2, noise_std=1.0, seed=6).explain(net, "features.6", x).maps
    assert not torch.allclose(other_seed, batch)


@pytest.mark.parametrize("softmax", ["classes", "channels"])
def test_without_noise_or_with_one_full_step_the_variants_are_score_cam(random_nets, softmax):
    net = random_nets["demonet"]
    x = torch.randn(2, 3, 32, 32)
    scorecam = methods.get("scorecam", softmax=softmax).explain(net, "features.6", x).maps
    for method, params in [("sscam", {"samples": 2, "noise_std": 0.0}), ("iscam", {"steps": 1}),
                           ("iscam", {"steps": 1, "scales": "linear"})]:
        maps = methods.get(method, softmax=softmax, **params).explain(net, "features.6", x).maps
        torch.testing.assert_close(maps, scorecam, rtol=1e-5, atol=1e-7)


def test_iscam_linear_scales_average_the_probability_along_the_path(random_nets):
    net = random_nets["demonet"]
    x = torch.randn(1, 3, 32, 32)
    steps, target = 3, 2
    ours = methods.get("iscam", steps=steps, scales="linear", softmax="classes").explain(
        net, "features.6", x, torch.tensor([target]))
    with torch.no_grad(), frozen_model(net), capture_layer(net, "features.6") as capture:
        net(x)
        activation = capture.activation[0].clone()
        masks = methods.normalize_maps(methods.upsample_maps(activation, (32, 32)))
        scores = torch.stack([torch.softmax(net(x * (i / steps) * masks[:, None]), 1)[:, target]
                              for i in range(1, steps + 1)]).mean(0)
    expected = torch.relu((scores[:, None, None] * activation).sum(0))
    torch.testing.assert_close(ours.maps[0], expected, rtol=1e-4, atol=1e-6)


def test_ablationcam_ablates_the_top_channels_only_and_weighs_the_rest_zero(random_nets):
    net = random_nets["demonet"]
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 5])
    ours = methods.get("ablationcam", top_channels=5, batch_size=3).explain(net, "features.6", x, targets).maps
    with torch.no_grad(), frozen_model(net), capture_layer(net, "features.6") as capture:
        score = net(x).gather(1, targets[:, None])
        activation = capture.activation.clone()
    top = activation.abs().mean(dim=(2, 3)).topk(5, dim=1).indices
    weights = torch.zeros(2, activation.shape[1])
    for i in range(2):
        for c in top[i].tolist():
            def zero_channel(_module, _inputs, output, c=c):
                output = output.clone()
                output[:, c] = 0
                return output

            handle = net.features[6].register_forward_hook(zero_channel)
            with torch.no_grad(), frozen_model(net):
                ablated = net(x[i:i + 1])[0, targets[i]]
            handle.remove()
            weights[i, c] = (score[i, 0] - ablated) / score[i, 0]
    expected = torch.relu((weights[:, :, None, None] * activation).sum(1))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    exact = methods.get("ablationcam", batch_size=64).explain(net, "features.6", x, targets).maps
    torch.testing.assert_close(methods.get("ablationcam", batch_size=7).explain(net, "features.6", x, targets).maps,
                               exact)


def test_ablationcam_refuses_a_layer_that_runs_twice_in_a_forward_pass(random_nets):
    # A torchvision BasicBlock applies its one ReLU module twice.
    with pytest.raises(LayerError, match=r"'layer1.0.relu' runs more than once.*enclosing block"):
        methods.get("ablationcam", top_channels=2).explain(random_nets["resnet18"], "layer1.0.relu",
                                                           torch.randn(1, 3, 32, 32))


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="'samples' must be >= 1"):
        methods.get("sscam", samples=0)
    with pytest.raises(ConfigError, match="'noise_std' must be >= 0"):
        methods.get("sscam", noise_std=-1.0)
    with pytest.raises(ConfigError, match="'steps' must be >= 1"):
        methods.get("iscam", steps=0)
    with pytest.raises(ConfigError, match="'scales' must be one of"):
        methods.get("iscam", scales="log")
    with pytest.raises(ConfigError, match="'batch_size' must be >= 1"):
        methods.get("ablationcam", batch_size=0)


def full_resolution_net() -> torch.nn.Module:
    """Two 3x3 convolutions that keep the input's size, then global pooling and a linear head: at layer '3' the
    CAM has the input's resolution, so pytorch-grad-cam's resize to the input is the identity."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()


@pytest.mark.parametrize("aug_smooth,eigen_smooth", [(True, False), (False, True)])
def test_ablationcam_smoothing_options_match_pytorch_grad_cam(monkeypatch, aug_smooth, eigen_smooth):
    # The SVD leaves the component's sign open: the peer's projection gets vislib's sign rule.
    monkeypatch.setattr("pytorch_grad_cam.base_cam.get_2d_projection",
                        lambda a: first_component(torch.from_numpy(a)).numpy())
    net = full_resolution_net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 4])
    maps = methods.get("ablationcam", aug_smooth=aug_smooth, eigen_smooth=eigen_smooth).explain(
        net, "3", x, targets).maps
    with AblationCAM(net, target_layers=[net[3]]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
                     aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    got = maps if aug_smooth else methods.normalize_maps(maps)
    torch.testing.assert_close(got, torch.from_numpy(theirs), atol=2e-4, rtol=1e-3)
