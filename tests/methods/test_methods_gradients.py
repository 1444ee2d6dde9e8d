"""The gradient family: parity with captum and pytorch-grad-cam, completeness, guided ReLUs, SmoothGrad."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GuidedBackpropReLUModel
from skimage import data as skdata
from torch import nn

from vislib import methods, models
from vislib.errors import ConfigError
from vislib.methods.base import fast_layout
from vislib.methods.gradients import guided_relus, quadrature

PARITY_CASES = [("demonet", "random", 64), ("resnet18", "random", 64), ("efficientnet_lite0", "IMAGENET", 224)]


def photos(size: int) -> torch.Tensor:
    """Two real photographs in [0,1], [2,3,size,size]."""
    images = [torch.from_numpy(skdata.astronaut()), torch.from_numpy(skdata.coffee())]
    return torch.stack([F.interpolate(im.permute(2, 0, 1)[None].float() / 255, size=(size, size),
                                      mode="bilinear", antialias=True)[0] for im in images]).clamp(0, 1)


@pytest.fixture(scope="module", params=PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def case(request):
    """A model, a preprocessed batch of two images and their targets."""
    name, weights, size = request.param
    torch.manual_seed(0)
    net = models.load(name, weights)
    if name == "efficientnet_lite0":
        x = models.preprocessing_of(net).normalize(photos(size))
        with torch.no_grad():
            targets = net(x).argmax(1)
    else:
        x = torch.randn(2, 3, size, size)
        targets = torch.tensor([1, 4])
    # The peers get the memory layout vislib computes in, so both run the same kernels. The layouts'
    # float rounding differs at 1e-6, and on efficientnet_lite0 that flips a ReLU6 gate or two (inputs
    # within 1e-5 of 0 or 6), each of which moves some input gradients by 1% of their maximum.
    return name, net, fast_layout(x), targets


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = theirs.detach()
    scale = float(theirs.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * scale)


def test_vanilla_gradient_matches_captum_saliency(case):
    _, net, x, targets = case
    method = methods.get("vanilla_gradient")
    theirs = ca.Saliency(net).attribute(x, target=targets, abs=False)
    _close(method.attribute(net, x, targets), theirs)
    _close(method.explain(net, None, x, targets).maps, theirs.abs().amax(1))


def test_gradient_x_input_matches_captum(case):
    _, net, x, targets = case
    method = methods.get("gradient_x_input")
    theirs = ca.InputXGradient(net).attribute(x, target=targets)
    _close(method.attribute(net, x, targets), theirs)
    _close(method.explain(net, None, x, targets).maps, theirs.sum(1))


def test_integrated_gradients_matches_captum(case):
    name, net, x, targets = case
    baseline = models.preprocessing_of(net).normalize(torch.zeros_like(x))
    # Both rules captum shares with vislib; one on the large net, whose passes dominate test time.
    for rule in ("riemann_middle",) if name == "efficientnet_lite0" else ("riemann_middle", "gausslegendre"):
        method = methods.get("integrated_gradients", steps=4, baseline="black", rule=rule)
        theirs = ca.IntegratedGradients(net).attribute(x, baselines=baseline, target=targets, n_steps=4,
                                                       method=rule, internal_batch_size=8)
        _close(method.attribute(net, x, targets), theirs)


def test_guided_backprop_matches_captum_and_pytorch_grad_cam(case):
    name, net, x, targets = case
    # captum and pytorch-grad-cam guide nn.ReLU only; efficientnet_lite0 uses ReLU6.
    method = methods.get("guided_backprop", relu6=name != "efficientnet_lite0")
    ours = method.attribute(net, x, targets)
    _close(ours, ca.GuidedBackprop(net).attribute(x, target=targets))
    if name == "efficientnet_lite0":
        return  # without nn.ReLU, pytorch-grad-cam's guided model is the plain gradient captum just checked
    peer = GuidedBackpropReLUModel(net, device="cpu")
    for i in range(len(x)):
        theirs = torch.from_numpy(peer(x[i:i + 1].clone(), int(targets[i]))).permute(2, 0, 1)
        _close(ours[i], theirs)
    net.zero_grad(set_to_none=True)


# vislib's `average` against captum's NoiseTunnel over Saliency: its nt_type and Saliency's `abs`.
NOISE_TUNNEL = {"signed": ("smoothgrad", False), "absolute": ("smoothgrad", True), "squared": ("smoothgrad_sq", False)}


@pytest.mark.parametrize("average", sorted(NOISE_TUNNEL))
def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_seed(case, average):
    name, net, x, targets = case
    if name == "efficientnet_lite0" and average != "signed":
        pytest.skip("one average on the large net, whose passes dominate test time")
    method = methods.get("smoothgrad", samples=4, noise_level=0.1, seed=7, batch_size=8, average=average)
    ours = method.attribute(net, x, targets)
    # vislib draws one noise stack per batch, shared by its images: captum, drawing per call,
    # gets the same noise when it explains one image at a time from the same seed. Its noisy copies
    # come in the default memory layout, so its forward runs them in vislib's (see `case`).
    saliency = ca.Saliency(lambda inputs: net(fast_layout(inputs)))
    nt_type, absolute = NOISE_TUNNEL[average]
    for i in range(len(x)):
        xi = x[i:i + 1]
        torch.manual_seed(7)
        theirs = ca.NoiseTunnel(saliency).attribute(
            xi, nt_type=nt_type, nt_samples=4, stdevs=0.1 * float(xi.max() - xi.min()), target=int(targets[i]),
            abs=absolute)
        _close(ours[i], theirs[0])


@pytest.mark.parametrize("name", ["demonet", "resnet18"])
@pytest.mark.parametrize("baseline", ["zero", "black"])
def test_integrated_gradients_completeness(name, baseline):
    net = models.load(name, "random")
    x = torch.randn(2, 3, 64, 64)
    method = methods.get("integrated_gradients", steps=64, baseline=baseline)
    result = method.explain(net, None, x)
    with torch.no_grad():
        baseline = method.baseline(net, x).expand_as(x)
        scores = net(torch.cat([x, baseline])).gather(1, result.targets.repeat(2)[:, None])[:, 0]
    expected = scores[:2] - scores[2:]
    assert (expected.abs() > 1e-3).all()
    # The map is the attribution summed over channels, so its sum is the attribution's sum.
    total = result.maps.sum(dim=(1, 2))
    torch.testing.assert_close(total, expected, rtol=0.02, atol=0)
    torch.testing.assert_close(result.extras["completeness_gap"], total - expected, rtol=1e-3, atol=1e-5)


def test_integrated_gradients_steps_in_any_batch_size_agree():
    net = models.load("demonet", "random")
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 1, 2])
    big = methods.get("integrated_gradients", steps=10, batch_size=1000).attribute(net, x, targets)
    small = methods.get("integrated_gradients", steps=10, batch_size=4).attribute(net, x, targets)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                  "riemann_trapezoid"])
def test_quadrature_rules_integrate_polynomials(rule):
    alphas, weights = quadrature(rule, 200)
    assert alphas.min() >= 0 and alphas.max() <= 1
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float((weights * alphas ** 2).sum()) == pytest.approx(1 / 3, abs=1e-2)


class _Toy(nn.Module):
    """A two-layer net on [N,3,2,2] images, with its activation given as a module or a function."""

    def __init__(self, activation: str):
        super().__init__()
        self.hidden = nn.Linear(12, 6)
        self.out = nn.Linear(6, 3)
        self.activation = activation
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        h = self.hidden(x.flatten(1))
        h = {"module": self.relu, "function": F.relu, "relu6": self.relu6}[self.activation](h)
        return self.out(h)


@pytest.mark.parametrize("activation", ["module", "function", "relu6"])
def test_guided_backprop_known_answer(activation):
    torch.manual_seed(1)
    net = _Toy(activation).eval()
    with torch.no_grad():
        net.hidden.weight.mul_(4)
    x = torch.randn(4, 3, 2, 2)
    targets = torch.tensor([0, 1, 2, 0])
    pre = net.hidden(x.flatten(1)).detach()
    upper = 6.0 if activation == "relu6" else float("inf")
    assert ((pre > 0) & (pre < upper)).any() and ((pre <= 0) | (pre >= upper)).any()
    upstream = net.out.weight.detach()[targets]
    expected = (upstream.clamp_min(0) * ((pre > 0) & (pre < upper))) @ net.hidden.weight.detach()
    ours = methods.get("guided_backprop").attribute(net, x, targets)
    torch.testing.assert_close(ours.flatten(1), expected)
    assert net.relu.inplace


def test_guided_relus_restore_relu_after_an_error():
    original = F.relu
    net = models.load("demonet", "random")
    with pytest.raises(RuntimeError, match="boom"), guided_relus(net):
        assert F.relu is not original
        raise RuntimeError("boom")
    assert F.relu is original
    assert torch.nn.functional.relu is original


def test_guided_backprop_guides_functional_relus_of_googlenet():
    net = models.load("googlenet", "random")
    x = torch.randn(1, 3, 64, 64)
    targets = torch.tensor([3])
    guided = methods.get("guided_backprop").attribute(net, x, targets).abs()
    plain = methods.get("vanilla_gradient").attribute(net, x, targets).abs()
    # Scaled to a maximum of 1: a random googlenet's gradients are tiny.
    assert not torch.allclose(guided / guided.max(), plain / plain.max(), atol=1e-3)


@pytest.mark.parametrize("arch,layer", [("demonet", "features.14"), ("resnet18", "layer3")])
def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(arch, layer):
    # One forward pass serves both backward passes; at resnet18's layer3 the ReLUs of layer4 lie between the layer
    # and the scores, and Grad-CAM's gradient must pass them as plain ReLUs.
    torch.manual_seed(0)
    net = models.load(arch, "random")
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([2, 5])
    ours = methods.get("guided_gradcam").attribute(net, x, targets, layer)
    cam = methods.get("gradcam").explain(net, layer, x, targets).maps
    guided = methods.get("guided_backprop").attribute(net, x, targets)
    torch.testing.assert_close(ours, guided * methods.to_image_maps(cam, (64, 64))[:, None])


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_gradcam_at_a_relu6_layer_is_guided_backprop_times_gradcam(inplace):
    # The layer is a ReLU6 module, whose guided rule is a forward hook like the layer's capture: the capture must
    # see the rule's output (efficientnet_lite0's default layer, `head_activation`, is one).
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU6(inplace=inplace),
                              torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU6(inplace=inplace),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = 4 * torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 2])
    ours = methods.get("guided_gradcam").attribute(net, x, targets, "3")
    cam = methods.get("gradcam").explain(net, "3", x, targets).maps
    guided = methods.get("guided_backprop").attribute(net, x, targets)
    torch.testing.assert_close(ours, guided * methods.to_image_maps(cam, (12, 12))[:, None])
    assert ours.abs().sum() > 0


def test_smoothgrad_is_seeded_batch_independent_and_without_noise_equals_its_base():
    net = models.load("demonet", "random")
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 3, 5])
    method = methods.get("smoothgrad", base="guided_backprop", samples=5, seed=2, batch_size=6)
    batch = method.attribute(net, x, targets)
    alone = torch.cat([method.attribute(net, x[i:i + 1], targets[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(methods.get("smoothgrad", base="guided_backprop", samples=5, seed=2)
                               .attribute(net, x, targets), batch, rtol=1e-4, atol=1e-7)
    other_seed = methods.get("smoothgrad", base="guided_backprop", samples=5, seed=3).attribute(net, x, targets)
    assert not torch.allclose(other_seed, batch)
    for base in ("vanilla_gradient", "gradient_x_input"):
        quiet = methods.get("smoothgrad", base=base, samples=2, noise_level=0.0)
        torch.testing.assert_close(quiet.explain(net, None, x, targets).maps,
                                   methods.get(base).explain(net, None, x, targets).maps, rtol=1e-4, atol=1e-6)


def test_gradient_method_parameters_are_checked():
    with pytest.raises(ConfigError, match="'base' must be one of"):
        methods.get("smoothgrad", base="gradcam")
    with pytest.raises(ConfigError, match="'noise_level' must be float"):
        methods.get("smoothgrad", noise_level="0.2")
    with pytest.raises(ConfigError, match="'baseline' must be one of"):
        methods.get("integrated_gradients", baseline="white")
    with pytest.raises(ConfigError, match="'rule' must be one of"):
        methods.get("integrated_gradients", rule="simpson")
    with pytest.raises(ConfigError, match="'steps' must be >= 2"):
        methods.get("integrated_gradients", steps=1)
    with pytest.raises(ConfigError, match="'relu6' must be bool"):
        methods.get("guided_backprop", relu6=1)
