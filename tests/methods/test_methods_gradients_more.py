"""DeepLIFT, GradientSHAP, deconvolution, positive/negative saliency, layer guided backprop and FullGrad: parity
with captum and pytorch-grad-cam, completeness, and known answers on hand-built nets."""

from __future__ import annotations

import copy
import types

import captum.attr as ca
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import FullGrad as PgcFullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models.resnet import BasicBlock

from vislib import methods, models
from vislib.errors import LayerError
from vislib.methods.base import fast_layout
from vislib.methods.gradients import bias_layers
from vislib.methods.postprocess import normalize_maps


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    theirs = theirs.detach()
    scale = float(theirs.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=1e-5 * scale)


def _not_inplace(net: nn.Module) -> nn.Module:
    """The peers hook module outputs that an in-place ReLU would overwrite; vislib turns the flags off itself."""
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return net


def _random_batch_norm_statistics(net: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Running statistics and affine parameters drawn at random, so that a zero input does not stay zero."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, nn.BatchNorm2d) and name not in skip:
                for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return net


def _hand_cnn() -> nn.Module:
    """A CNN on which captum's DeepLift rules hold: conv biases, a non-overlapping max pool with a layer between it
    and the next ReLU (captum's hooks on adjacent pool and ReLU modules lose summation-to-delta), ELU and Tanh."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 5)).eval()


def _one_relu_per_use(net: nn.Module) -> nn.Module:
    """A copy of a torchvision resnet whose blocks call a separate ReLU module for each use (captum's DeepLift
    refuses a module used twice); the same computation."""

    def forward(block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
        return block.relu_out(out + (x if block.downsample is None else block.downsample(x)))

    copied = copy.deepcopy(net)
    for module in copied.modules():
        if isinstance(module, BasicBlock):
            module.relu_out = nn.ReLU()
            module.forward = types.MethodType(forward, module)
    return _not_inplace(copied)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """A random resnet18 whose batch-norm statistics past the stem are random too, so that the reference of a zero
    input is non-zero from the first block on and DeepLIFT's multipliers are not the gradient. At the stem's max
    pool, which follows a ReLU, the reference stays 0 (no conv bias, bn1 as initialised): there captum's rule holds."""
    torch.manual_seed(0)
    return _random_batch_norm_statistics(models.load("resnet18", "random"), skip=("bn1",))


def test_deeplift_matches_captum_on_a_hand_built_cnn_with_random_baselines():
    net = _hand_cnn()
    x, baselines = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 3])
    method = methods.get("deeplift")
    # vislib's references are its baseline choices; the rule itself is checked against captum on any reference.
    method.references = lambda _model, _images: baselines
    _close(method.attribute(net, x, targets), ca.DeepLift(net).attribute(x, baselines=baselines, target=targets))


@pytest.mark.parametrize("name", ["demonet", "resnet18"])
def test_deeplift_matches_captum(name, resnet):
    torch.manual_seed(0)
    net = resnet if name == "resnet18" else models.load(name, "random")
    x, targets = fast_layout(torch.randn(2, 3, 32, 32)), torch.tensor([1, 4])
    peer = _one_relu_per_use(net) if name == "resnet18" else _not_inplace(copy.deepcopy(net))
    _close(methods.get("deeplift").attribute(net, x, targets), ca.DeepLift(peer).attribute(x, target=targets))


# resnet18 as torchvision builds it reuses one ReLU module in every block and has overlapping 3x3 max pool windows;
# the demo net's max pools follow ReLUs directly (where captum's DeepLift loses summation-to-delta).
@pytest.mark.parametrize("name,baseline", [("resnet18", "black"), ("demonet", "zero"), ("demonet", "mean"),
                                           ("demonet", "blur")])
def test_deeplift_attributions_add_up_to_the_score_difference(name, baseline, resnet):
    torch.manual_seed(0)
    net = resnet if name == "resnet18" else _random_batch_norm_statistics(models.load(name, "random"))
    x = torch.randn(2, 3, 32, 32)
    method = methods.get("deeplift", baseline=baseline, blur_sigma=2.0)
    result = method.explain(net, None, x)
    with torch.no_grad():
        references = method.references(net, x).expand_as(x)
        scores = net(torch.cat([x, references])).gather(1, result.targets.repeat(2)[:, None])[:, 0]
    expected = scores[:2] - scores[2:]
    assert (expected.abs() > 1e-2).all()
    torch.testing.assert_close(result.maps.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-5)
    assert result.extras["completeness_gap"].abs().max() < 1e-4 * expected.abs().max()


def test_deeplift_on_a_relu_net_is_gradient_times_input_when_every_reference_unit_is_off():
    # With a zero reference and no biases, every reference pre-activation is 0: relu(x)/x is the ReLU's gradient.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x = torch.randn(4, 3, 2, 2)
    wrapped = nn.Sequential(nn.Flatten(), net).eval()
    targets = torch.tensor([0, 1, 2, 0])
    ours = methods.get("deeplift").attribute(wrapped, x, targets)
    _close(ours, methods.get("gradient_x_input").attribute(wrapped, x, targets))


def test_gradient_shap_matches_captum_given_the_same_draws(monkeypatch):
    torch.manual_seed(0)
    net = models.load("demonet", "random")
    x, targets = fast_layout(torch.randn(2, 3, 32, 32)), torch.tensor([1, 4])
    method = methods.get("gradient_shap", samples=4, stdev=0.2, seed=5)
    ours = method.attribute(net, x, targets)
    baselines, alphas, noise = method.draws(net, x)
    # vislib shares its draws between images, so captum gets them one image at a time: its draw of baseline
    # indices, of noise and of the points on the paths, in that order.
    monkeypatch.setattr(np.random, "choice", lambda population, size: np.arange(size))
    monkeypatch.setattr(torch, "normal", lambda mean, std: noise.clone())
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: alphas.double().numpy())
    for i in range(len(x)):
        theirs = ca.GradientShap(net).attribute(x[i:i + 1], baselines=baselines, target=int(targets[i]),
                                                n_samples=4, stdevs=0.2)
        _close(ours[i], theirs[0])


def test_gradient_shap_adds_up_to_the_score_difference_in_expectation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    method = methods.get("gradient_shap", baseline="zero", samples=512, batch_size=1024)
    result = method.explain(net, None, x)
    with torch.no_grad():
        scores = net(torch.cat([x, torch.zeros_like(x[:1])]))
    expected = scores[:2].gather(1, result.targets[:, None])[:, 0] - scores[2, result.targets]
    torch.testing.assert_close(result.maps.sum(dim=(1, 2)), expected, rtol=0.03, atol=0)


def test_gradient_shap_is_seeded_and_independent_of_its_batch_size():
    net = models.load("demonet", "random")
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    big = methods.get("gradient_shap", samples=3, stdev=0.1, batch_size=1000).attribute(net, x, targets)
    small = methods.get("gradient_shap", samples=3, stdev=0.1, batch_size=2).attribute(net, x, targets)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-7)
    other_seed = methods.get("gradient_shap", samples=3, stdev=0.1, seed=1).attribute(net, x, targets)
    assert not torch.allclose(other_seed, big)


@pytest.mark.parametrize("name", ["demonet", "resnet18"])
def test_deconvolution_matches_captum(name, resnet):
    torch.manual_seed(0)
    net = resnet if name == "resnet18" else models.load(name, "random")
    x, targets = fast_layout(torch.randn(2, 3, 32, 32)), torch.tensor([1, 4])
    _close(methods.get("deconvolution").attribute(net, x, targets), ca.Deconvolution(net).attribute(x, target=targets))


class _Toy(nn.Module):
    """A two-layer net on [N,3,2,2] images with a ReLU between."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.hidden = nn.Linear(12, 6)
        self.out = nn.Linear(6, 3)
        with torch.no_grad():
            self.hidden.weight.mul_(4)

    def forward(self, x):
        return self.out(F.relu(self.hidden(x.flatten(1))))


def test_deconvolution_known_answer_ignores_the_forward_pass():
    net = _Toy().eval()
    x, targets = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    pre = net.hidden(x.flatten(1))
    assert (pre > 0).any() and (pre <= 0).any()
    # The ReLU passes the positive part of its incoming gradient wherever its input was.
    expected = net.out.weight.detach()[targets].clamp_min(0) @ net.hidden.weight.detach()
    torch.testing.assert_close(methods.get("deconvolution").attribute(net, x, targets).flatten(1), expected)


def _original_positive_negative_saliency(gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-cnn-visualizations' get_positive_negative_saliency (misc_functions.py), on one [3,H,W] gradient."""
    return np.maximum(0, gradient) / gradient.max(), np.maximum(0, -gradient) / -gradient.min()


def test_positive_and_negative_saliency_known_answer_on_a_linear_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, targets = torch.randn(2, 3, 2, 2), torch.tensor([2, 0])
    weights = net[1].weight.detach()[targets].view(2, 3, 2, 2)  # the gradient of a linear model
    positive = methods.get("positive_saliency").attribute(net, x, targets)
    negative = methods.get("negative_saliency").attribute(net, x, targets)
    torch.testing.assert_close(positive, weights.clamp_min(0) / weights.amax(dim=(1, 2, 3), keepdim=True))
    torch.testing.assert_close(negative, (-weights).clamp_min(0) / -weights.amin(dim=(1, 2, 3), keepdim=True))
    # A gradient without negative values has an all-zero negative map (the original divides by a positive minimum).
    with torch.no_grad():
        net[1].weight.abs_()
    assert methods.get("negative_saliency").explain(net, None, x, targets).maps.abs().max() == 0


@pytest.mark.parametrize("gradient", ["vanilla", "guided"])
def test_positive_and_negative_saliency_match_the_original_formula(gradient):
    torch.manual_seed(0)
    net = models.load("demonet", "random")
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    base = methods.get("vanilla_gradient" if gradient == "vanilla" else "guided_backprop").attribute(net, x, targets)
    positive = methods.get("positive_saliency", gradient=gradient).attribute(net, x, targets)
    negative = methods.get("negative_saliency", gradient=gradient).attribute(net, x, targets)
    for i in range(len(x)):
        expected_positive, expected_negative = _original_positive_negative_saliency(base[i].numpy())
        torch.testing.assert_close(positive[i], torch.from_numpy(expected_positive))
        torch.testing.assert_close(negative[i], torch.from_numpy(expected_negative))


class _Layered(nn.Module):
    """1x1 convolutions, so each pixel's guided gradient is a product of small matrices."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1 = nn.Conv2d(3, 5, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.relu(self.conv1(x))).mean(dim=(2, 3)))


def test_layer_guided_backprop_known_answer():
    net = _Layered().eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        pre = net.conv1(x)
        activation = net.conv2(F.relu(pre))
    w1, w2 = net.conv1.weight.detach()[:, :, 0, 0], net.conv2.weight.detach()[:, :, 0, 0]
    assert (pre > 0).any() and (pre <= 0).any() and (activation > 0).any() and (activation < 0).any()

    def expected(channels: torch.Tensor) -> torch.Tensor:
        # d sum|A_k| / dA_k = sign(A_k); through conv2, then the guided ReLU (positive gradient, positive input).
        upstream = activation[torch.arange(2), channels].sign()[:, None] * w2[channels][:, :, None, None]
        guided = upstream.clamp_min(0) * (pre > 0)
        return torch.einsum("njhw,jc->nchw", guided, w1)

    result = methods.get("layer_guided_backprop", channel=2, channel_reduction="signed_sum").explain(net, "conv2", x)
    torch.testing.assert_close(result.maps, expected(torch.tensor([2, 2])).sum(1))
    most_active = activation.abs().sum(dim=(2, 3)).argmax(1)
    auto = methods.get("layer_guided_backprop")
    torch.testing.assert_close(auto.attribute(net, x, None, "conv2"), expected(most_active))
    assert torch.equal(auto.explain(net, "conv2", x).extras["channel"], most_active)
    with pytest.raises(LayerError, match="'conv2' has 4 channels, so channel 4 does not exist"):
        methods.get("layer_guided_backprop", channel=4).explain(net, "conv2", x)


def _fullgrad_net(stride: int = 2) -> nn.Module:
    """Conv biases, a batch norm with random statistics and a conv of `stride` (2: its maps are upsampled). The last
    layer is scaled by 1e4: pytorch-grad-cam divides each channel by max + 1e-7, an absolute epsilon that weighs
    channels spanning less than ~1e-5 less than 1, while FullGrad's rescaling (and vislib's) is scale-free."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, stride=stride), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    _random_batch_norm_statistics(net)
    with torch.no_grad():
        net[-1].weight.mul_(1e4)
    return net


def _full_gradients(net: nn.Module, x: torch.Tensor, target: int
                    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The score, its input gradient and (gradient at the layer's output, bias) of every bias layer."""
    outputs = []
    handles = [module.register_forward_hook(lambda _m, _i, output: outputs.append(output))
               for _, module, _ in bias_layers(net)]
    x = x.detach().requires_grad_(True)
    score = net(x)[0, target]
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(score, [x, *outputs])
    return score, grads[0], [(grad, bias) for grad, (_, _, bias) in zip(grads[1:], bias_layers(net), strict=True)]


def test_fullgrad_matches_pytorch_grad_cam():
    net = _fullgrad_net()
    x, targets = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    ours = normalize_maps(methods.get("fullgrad").explain(net, None, x, targets).maps)
    theirs = PgcFullGrad(net, [])(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    net.zero_grad(set_to_none=True)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=1e-4)


def test_fullgrad_biases_complete_the_full_gradient_decomposition():
    # In a ReLU net, score = x . d score/dx + sum over every bias b of b . d score/db: the batch norm's bias is
    # the effective one, b - gamma mean / sqrt(var + eps).
    net = _fullgrad_net()
    x, target = torch.randn(1, 3, 16, 16), 3
    score, input_grad, layers = _full_gradients(net, x, target)
    total = (input_grad * x).sum() + net[-1].bias[target]
    for grad, bias in layers:
        total = total + (grad * bias[None, :, None, None]).sum()
    torch.testing.assert_close(total, score, rtol=1e-4, atol=1e-3)


def test_fullgrad_layer_normalisation_is_the_authors_post_processing():
    # The authors' _postProcess: |.|, minus each image's minimum, over each image's maximum (+ 1e-6), on a layer's
    # whole [C,h,w] tensor; every layer keeps the input's resolution here, so nothing is upsampled.
    net = _fullgrad_net(stride=1)
    x, target = torch.randn(1, 3, 16, 16), 2

    def post_process(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.abs() - tensor.abs().min()
        return tensor / (tensor.max() + 1e-6)

    _, input_grad, layers = _full_gradients(net, x, target)
    expected = post_process(input_grad * x).sum(1)
    for grad, bias in layers:
        expected = expected + post_process(grad * bias[None, :, None, None]).sum(1)
    ours = methods.get("fullgrad", normalize="layer").explain(net, None, x, torch.tensor([target])).maps
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-4, atol=1e-4)
