"""The CAM family: parity with pytorch-grad-cam, CAM = Grad-CAM on GAP + linear nets, Score-CAM options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from skimage import data as skdata

from vislib import methods, models
from vislib.errors import ConfigError, LayerError
from vislib.methods.cam import first_component, layer_activation_and_grad
from vislib.methods.hooks import capture_layer, frozen_model

PEERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM, "scorecam": ScoreCAM}


class _HalfPixelUpsample(torch.nn.Module):
    """Bilinear upsampling with half-pixel centres, the convention vislib uses for every map."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def photos(size: int) -> torch.Tensor:
    """Two real photographs in [0,1], [2,3,size,size]."""
    images = [torch.from_numpy(skdata.astronaut()), torch.from_numpy(skdata.chelsea())]
    batch = torch.stack([F.interpolate(im.permute(2, 0, 1)[None].float() / 255, size=(size, size),
                                       mode="bilinear", antialias=True)[0] for im in images])
    return batch.clamp(0, 1)


def peer_native_maps(method: str, net, layer: str, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's map at layer resolution (their get_cam_image route, before cv2 resizing)."""
    module = models.resolve_layer(net, layer)
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]
    with PEERS[method](net, target_layers=[module]) as cam:
        if method == "scorecam":
            # Their __call__ would score every channel twice; the weights come from get_cam_image alone.
            cam.activations_and_grads(x)
            grads = None
        else:
            cam(input_tensor=x, targets=wanted)
            grads = cam.activations_and_grads.gradients[0].numpy()
        activations = cam.activations_and_grads.activations[0].numpy()
        native = cam.get_cam_image(x, module, wanted, activations, grads, False)
    net.zero_grad(set_to_none=True)
    return torch.from_numpy(np.maximum(native, 0))


# (model, weights, input size, layer, layer for Score-CAM: fewer channels keep exact Score-CAM quick)
PARITY_CASES = [
    ("demonet", "random", 64, "features.14", "features.6"),
    ("resnet18", "random", 64, "layer4", "layer1"),
    ("efficientnet_lite0", "IMAGENET", 224, "_bn1", "_blocks.0._bn2"),
]


@pytest.fixture(scope="module")
def parity_nets():
    torch.manual_seed(0)
    return {name: models.load(name, weights) for name, weights, *_ in PARITY_CASES}


@pytest.mark.parametrize("method", sorted(PEERS))
@pytest.mark.parametrize("case", PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_matches_pytorch_grad_cam(parity_nets, monkeypatch, method, case):
    name, _, size, layer, scorecam_layer = case
    net = parity_nets[name]
    layer = scorecam_layer if method == "scorecam" else layer
    if name == "efficientnet_lite0":
        # One photo for Score-CAM: a forward per channel at 224 px is what the test time goes to.
        x = models.preprocessing_of(net).normalize(photos(size))[:1 if method == "scorecam" else 2]
        targets = net(x).argmax(1)
    else:
        x = torch.randn(2, 3, size, size)
        targets = torch.tensor([1, 3])
    # pytorch-grad-cam's Score-CAM weights are the softmax over channels of the masked inputs' logits.
    ours = methods.get(method, **({"softmax": "channels"} if method == "scorecam" else {})).explain(
        net, layer, x, targets).maps
    # pytorch-grad-cam upsamples Score-CAM masks with align_corners=True; vislib uses half-pixel
    # centres everywhere, so the peer gets the same upsampling for a like-for-like comparison.
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _HalfPixelUpsample)
    theirs = peer_native_maps(method, net, layer, x, targets)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(methods.normalize_maps(ours), methods.normalize_maps(theirs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,layer", [("demonet", "features.14"), ("resnet18", "layer4"),
                                        ("googlenet", "inception5b")])
def test_cam_equals_gradcam_on_global_pool_linear_nets(name, layer):
    net = models.load(name, "random")
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 2, 5])
    cam = methods.get("cam").explain(net, layer, x, targets).maps
    gradcam = methods.get("gradcam").explain(net, layer, x, targets).maps
    # Scaled by each map's maximum: a random googlenet's maps are ~1e-12, below normalize_maps' floor.
    peak = cam.amax(dim=(1, 2), keepdim=True)
    assert (peak > 0).any()
    torch.testing.assert_close(cam / peak.clamp_min(1e-30),
                               gradcam / gradcam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30), rtol=0, atol=1e-5)


def test_cam_refuses_layers_that_do_not_feed_pool_and_linear():
    net = models.load("demonet", "random")
    with pytest.raises(LayerError, match="global average.*'features.11'.*gradcam"):
        methods.get("cam").explain(net, "features.11", torch.randn(1, 3, 64, 64))
    alexnet = models.load("alexnet", "random")
    with pytest.raises(LayerError, match="alexnet"):
        methods.get("cam").explain(alexnet, None, torch.randn(1, 3, 64, 64))


def _naive_scorecam(net, layer, x, target, channels, softmax):
    """Score-CAM of one image scoring only `channels`, one masked forward at a time; the other
    channels get the weight of the lowest-scoring scored one."""
    with torch.no_grad(), frozen_model(net), capture_layer(net, layer) as capture:
        net(x)
        activation = capture.activation[0].clone()
        scores = torch.zeros(len(activation), dtype=torch.float64)
        for c in channels:
            mask = F.interpolate(activation[c][None, None], size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)[0, 0]
            mask = (mask - mask.min()) / (mask.max() - mask.min()) if mask.max() > mask.min() else mask * 0
            logits = net(x * mask)[0].double()
            scores[c] = torch.softmax(logits, 0)[target] if softmax == "classes" else logits[target]
    scored = torch.zeros(len(activation), dtype=torch.bool)
    scored[channels] = True
    scores = torch.where(scored, scores, scores[scored].min())
    if softmax == "channels":
        weights = torch.softmax(scores, 0)
    else:
        weights = torch.where(activation.flatten(1).amax(1) > activation.flatten(1).amin(1), scores, 0)
    return torch.relu((weights.float()[:, None, None] * activation).sum(0))


@pytest.mark.parametrize("softmax", ["classes", "channels"])
def test_scorecam_top_channels_scores_the_channels_of_largest_magnitude_only(softmax):
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([4, 1])
    # features.13 is a batch-norm output, before its ReLU: channels of large magnitude may be negative.
    ours = methods.get("scorecam", top_channels=5, batch_size=3, softmax=softmax).explain(
        net, "features.13", x, targets).maps
    with torch.no_grad(), frozen_model(net), capture_layer(net, "features.13") as capture:
        net(x)
        magnitude = capture.activation.abs().mean(dim=(2, 3))
        top = magnitude.topk(5, dim=1).indices
    assert not torch.equal(top, capture.activation.mean(dim=(2, 3)).topk(5, dim=1).indices)
    for i in range(2):
        expected = _naive_scorecam(net, "features.13", x[i:i + 1], int(targets[i]), top[i], softmax)
        torch.testing.assert_close(ours[i], expected, rtol=1e-4, atol=1e-6)
    everything = _naive_scorecam(net, "features.14", x[:1], 4, torch.arange(128), softmax)
    torch.testing.assert_close(methods.get("scorecam", softmax=softmax).explain(net, "features.14", x[:1],
                                                                                targets[:1]).maps[0],
                               everything, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("softmax", ["classes", "channels"])
def test_scorecam_result_does_not_depend_on_batch_size_or_an_oversized_top_channels(softmax):
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    exact = methods.get("scorecam", batch_size=64, softmax=softmax).explain(net, "features.6", x).maps
    torch.testing.assert_close(methods.get("scorecam", batch_size=7, softmax=softmax).explain(
        net, "features.6", x).maps, exact)
    torch.testing.assert_close(methods.get("scorecam", top_channels=10_000, softmax=softmax).explain(
        net, "features.6", x).maps, exact)


def test_layer_activation_and_grad_matches_a_full_backward_pass():
    net = models.load("resnet18", "random")
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([3, 7])
    activation, grad, logits, chosen = layer_activation_and_grad(net, "layer3", x, targets, "gradcam")
    assert torch.equal(chosen, targets)
    # The reference runs resnet18's stages by hand, split at layer3.
    with frozen_model(net), torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected_activation = net.layer3(net.layer2(net.layer1(stem)))
    with frozen_model(net), torch.enable_grad():
        leaf = expected_activation.clone().requires_grad_(True)
        out = net.fc(torch.flatten(net.avgpool(net.layer4(leaf)), 1))
        (expected,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), leaf)
    torch.testing.assert_close(activation, expected_activation)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(logits, out.detach())


def _conv_relu_net(inplace: bool, activation: type[torch.nn.Module] = torch.nn.ReLU) -> torch.nn.Module:
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), activation(inplace=inplace),
                               torch.nn.Conv2d(6, 8, 3, padding=1), activation(inplace=inplace),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.ReLU6])
@pytest.mark.parametrize("layer", ["0", "2"])
def test_an_in_place_relu_after_the_layer_changes_neither_activation_nor_gradient(layer, activation):
    # The gradient methods keep a model's in-place ReLUs (faster backward passes); the layer's captured output
    # must still be its own, not the ReLU's. ReLU6 modules get the guided and deconvnet rules through a hook.
    x = 4 * torch.randn(2, 3, 10, 10)  # large enough that some activations pass 6
    targets = torch.tensor([1, 3])
    in_place, out_of_place = _conv_relu_net(True, activation), _conv_relu_net(False, activation)
    got = layer_activation_and_grad(in_place, layer, x, targets, "gradcam")
    expected = layer_activation_and_grad(out_of_place, layer, x, targets, "gradcam")
    assert (got.activation < 0).any()  # the conv's output, before its ReLU
    torch.testing.assert_close(got.activation, expected.activation, rtol=0, atol=0)
    torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=0)
    assert all(m.inplace for m in in_place if isinstance(m, activation))
    # The forward-only methods and L2-CAF keep them too (forward passes ~7% faster).
    for name in ("vanilla_gradient", "gradcam", "fullgrad", "guided_backprop", "deconvolution", "guided_gradcam",
                 "eigencam", "scorecam", "ablationcam", "l2caf_specific", "occlusion"):
        params = {"window": 4, "stride": 2} if name == "occlusion" else {}
        torch.testing.assert_close(methods.get(name, **params).explain(in_place, layer, x, targets).maps,
                                   methods.get(name, **params).explain(out_of_place, layer, x, targets).maps,
                                   rtol=0, atol=0)
    assert all(m.inplace for m in in_place if isinstance(m, activation))


def test_a_captured_layer_keeps_its_own_output_when_the_net_adds_to_it_in_place():
    # torchvision's BasicBlock adds the identity to bn2's output in place (`out += identity`), after the hook.
    net = models.load("resnet18", "random")
    block = net.layer4[1]
    block_inputs: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda _module, inputs: block_inputs.append(inputs[0]))
    with frozen_model(net, keep_inplace=True), capture_layer(net, "layer4.1.bn2") as capture, torch.no_grad():
        net(torch.randn(2, 3, 64, 64))
        handle.remove()
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(block_inputs[0])))))
    torch.testing.assert_close(capture.activation, expected, rtol=1e-6, atol=1e-6)


def test_default_layer_is_the_models_own():
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    for name, params in [("cam", {}), ("gradcam", {}), ("gradcampp", {}), ("layercam", {}),
                         ("scorecam", {"top_channels": 4})]:
        torch.testing.assert_close(methods.get(name, **params).explain(net, None, x).maps,
                                   methods.get(name, **params).explain(net, "features.14", x).maps)


def test_scorecam_parameters_are_checked():
    with pytest.raises(ConfigError, match="'batch_size' must be >= 1"):
        methods.get("scorecam", batch_size=0)
    with pytest.raises(ConfigError, match="'top_channels' must be >= 0"):
        methods.get("scorecam", top_channels=-1)
    with pytest.raises(ConfigError, match="'top_channels' must be int"):
        methods.get("scorecam", top_channels="8")
    with pytest.raises(ConfigError, match="'softmax' must be one of"):
        methods.get("scorecam", softmax="logits")
    with pytest.raises(ConfigError, match="'init' must be one of"):
        methods.get("scorecam", init="one")


def full_resolution_net() -> torch.nn.Module:
    """Two 3x3 convolutions that keep the input's size, then global pooling and a linear head: at layer '3'
    the CAM has the input's resolution, so pytorch-grad-cam's resize to the input is the identity."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()


def test_first_component_is_pytorch_grad_cams_projection_with_the_sign_of_the_channel_sum():
    torch.manual_seed(0)
    weighted = torch.randn(4, 6, 5, 7) + torch.linspace(0, 2, 7)  # a trend along x, so the sum has a direction
    ours = first_component(weighted)
    theirs = torch.from_numpy(get_2d_projection(weighted.numpy()))
    channel_sum = weighted.sum(1)
    for mine, peer, total in zip(ours, theirs, channel_sum, strict=True):
        sign = 1.0 if torch.corrcoef(torch.stack([peer.flatten(), total.flatten()]))[0, 1] >= 0 else -1.0
        torch.testing.assert_close(mine, sign * peer, atol=1e-4, rtol=1e-4)
        assert torch.corrcoef(torch.stack([mine.flatten(), total.flatten()]))[0, 1] > 0


@pytest.mark.parametrize("aug_smooth,eigen_smooth", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam", "scorecam"])
def test_smoothing_options_match_pytorch_grad_cam(monkeypatch, method, aug_smooth, eigen_smooth):
    # The SVD leaves the component's sign open: the peer's projection gets our sign rule (checked against
    # its own projection above), wherever its modules imported the function.
    for module in ("base_cam", "layer_cam"):
        monkeypatch.setattr(f"pytorch_grad_cam.{module}.get_2d_projection",
                            lambda a: first_component(torch.from_numpy(a)).numpy())
    net = full_resolution_net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 4])
    ours = methods.get(method, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                       **({"softmax": "channels"} if method == "scorecam" else {}))
    maps = ours.explain(net, "3", x, targets).maps
    with PEERS[method](net, target_layers=[net[3]]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
                     aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    net.zero_grad(set_to_none=True)
    got = maps if aug_smooth else methods.normalize_maps(maps)
    torch.testing.assert_close(got, torch.from_numpy(theirs), atol=2e-4, rtol=1e-3)


def test_aug_smooth_explains_the_unaugmented_prediction_in_every_augmentation():
    net = full_resolution_net()
    x = torch.randn(3, 3, 12, 12)
    result = methods.get("gradcam", aug_smooth=True).explain(net, "3", x)
    with torch.no_grad():
        predicted = net(x).argmax(1)
    assert torch.equal(result.targets, predicted) and torch.equal(result.predicted, predicted)
    assert result.maps.shape == (3, 12, 12) and 0 <= float(result.maps.min()) and float(result.maps.max()) <= 1
