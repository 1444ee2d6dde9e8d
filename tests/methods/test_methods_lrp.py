"""LRP: captum parity, answers worked out by hand, relevance conservation, batch-norm folding, the zB bounds, and
modules without a rule named by the explain call and the config check."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from torch import nn

from vislib import methods, models
from vislib.config import check_config
from vislib.errors import ConfigError, LayerError
from vislib.featvis.fold import fold_batch_norms
from vislib.methods import lrp
from vislib.methods.base import fast_layout
from vislib.methods.lrp import first_layer_bounds
from vislib.preprocessing import Preprocessing

# The same rule on every layer, batch norms as layers of their own: captum's LRP.
CAPTUM_LIKE = {"first_layer": "same", "batch_norm": "epsilon"}


class SmallNet(nn.Module):
    """conv-relu-maxpool-conv-relu-average pool-linear (captum needs torch.flatten in forward, not nn.Flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class SmallVGG(nn.Module):
    """torchvision's VGG layout (in-place ReLUs, adaptive average pooling, dropout in the classifier), small."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 32), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(32, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _demonet_with_statistics() -> nn.Module:
    """The demo net with batch norms that are not identities (random statistics, shifts and scales)."""
    net = models.load("demonet", "random")
    with torch.no_grad():
        for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.uniform_(-0.2, 0.2)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(0.0, 0.2)
    return net


def _captum(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, rule, epsilon: float) -> torch.Tensor:
    """captum's LRP with `rule()` on convolutions and linear layers, the epsilon rule on pooling and batch norms."""
    peer = copy.deepcopy(net)
    for module in peer.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.rule = rule()
        elif isinstance(module, nn.BatchNorm2d | nn.MaxPool2d | nn.AdaptiveAvgPool2d):
            module.rule = EpsilonRule(epsilon)
    return CaptumLRP(peer).attribute(fast_layout(images), target=targets)


@pytest.mark.parametrize("net_name", ["small", "demonet", "vgg_like"])
@pytest.mark.parametrize("rule", ["epsilon", "alpha_beta"])
def test_epsilon_and_alpha1_beta0_match_captum(net_name, rule):
    torch.manual_seed(0)
    net = {"small": SmallNet, "demonet": _demonet_with_statistics, "vgg_like": SmallVGG}[net_name]().eval()
    # captum's alpha1-beta0 keeps the layers' biases whole and never splits the inputs by sign: it is the
    # rule on non-negative inputs with non-negative biases only.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.abs_()
    images = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([0, 4, 2])
    if rule == "epsilon":
        ours = methods.get("lrp", epsilon=0.1, **CAPTUM_LIKE).attribute(net, images, targets)
        theirs = _captum(net, images, targets, lambda: EpsilonRule(epsilon=0.1), 0.1)
    else:
        ours = methods.get("lrp", rule="alpha_beta", alpha=1.0, epsilon=1e-9, **CAPTUM_LIKE).attribute(
            net, images, targets)
        theirs = _captum(net, images, targets, Alpha1_Beta0_Rule, 1e-9)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def _two_layer_net() -> nn.Sequential:
    """y = w2 . relu(W1 x) on the three channels of a one-pixel image, without biases."""
    first, second = nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [2.0, 1.0, -1.0]]))
        second.weight.copy_(torch.tensor([[1.0, -0.5]]))
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()


@pytest.mark.parametrize("params,expected", [
    # eps 0.5: hidden z = (2, 3), y = 0.5; R_hidden = (2, -1.5) * 0.5 / 1 = (1, -0.75);
    # R_x = (2, -1, 1) / 2.5 * 1 + (4, 1, -2) / 3.5 * -0.75.
    ({"epsilon": 0.5}, [-2 / 35, -43 / 70, 29 / 35]),
    # alpha 2, beta 1: R_hidden = (2 * 2/2 * 0.5, -1 * -1.5/-1.5 * 0.5) = (1, -0.5); for hidden unit 1 the
    # products (2, -1, 1) give z+ = 3, z- = -1, for unit 2 (4, 1, -2) give z+ = 5, z- = -2.
    ({"rule": "alpha_beta", "alpha": 2.0}, [4 / 3 - 0.8, -1.0 - 0.2, 2 / 3 + 0.5]),
])
def test_known_answers_of_the_epsilon_and_alpha_beta_rules(params, expected):
    _check_two_layer_answer([2.0, 1.0, 2.0], params, expected)


def test_alpha_beta_splits_products_by_sign_when_inputs_are_negative():
    # x = (3, -1, -1): hidden products (3, 1, -0.5), z+ 4, z- -0.5, and (6, -1, 1), z+ 7, z- -1; hidden (3.5, 6),
    # y = 3.5 - 3 = 0.5, R_hidden = (1, -0.5). The relevance is conserved: it sums to y.
    expected = [1.5 - 6 / 7, 0.5 + 0.5, -1.0 - 1 / 7]
    _check_two_layer_answer([3.0, -1.0, -1.0], {"rule": "alpha_beta", "alpha": 2.0}, expected)
    assert sum(expected) == pytest.approx(0.5)


def _check_two_layer_answer(pixels: list[float], params: dict, expected: list[float]) -> None:
    images = torch.tensor(pixels).view(1, 3, 1, 1)
    relevance = methods.get("lrp", first_layer="same", **params).attribute(_two_layer_net(), images,
                                                                           torch.tensor([0]))
    torch.testing.assert_close(relevance.flatten(), torch.tensor(expected))


def test_grouped_convolutions_on_signed_inputs_equal_their_dense_block_diagonal_form():
    torch.manual_seed(0)
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(6, 4))
    dense = copy.deepcopy(grouped)
    dense[0] = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        dense[0].weight.zero_()
        for channel in range(6):  # output channel c reads input channel c // 2 in the grouped layer
            dense[0].weight[channel, channel // 2] = grouped[0].weight[channel, 0]
        dense[0].bias.copy_(grouped[0].bias)
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    explainer = methods.get("lrp", rule="alpha_beta", alpha=2.0, first_layer="same")
    torch.testing.assert_close(explainer.attribute(grouped.eval(), images, targets),
                               explainer.attribute(dense.eval(), images, targets))


def test_known_answer_of_the_zb_rule_on_the_first_layer():
    net = _two_layer_net()
    net.vislib_preprocessing = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1)  # pixel bounds -1 and 1
    images = torch.tensor([0.5, -0.5, 1.0]).view(1, 3, 1, 1)
    # Hidden z = (1.5, -0.5), y = 1.5, eps 0.5: R_hidden = (1.5 * 1.5 / 2, 0) = (1.125, 0). zB terms
    # x w - l w+ - h w- of unit 1: (0.5 + 1, 0.5 + 1, 0.5 + 0.5), z = 4.
    relevance = methods.get("lrp", epsilon=0.5).attribute(net, images, torch.tensor([0]))
    torch.testing.assert_close(relevance.flatten(), torch.tensor([1.5, 1.5, 1.0]) / 4 * 1.125)


def test_the_zb_bounds_follow_elementwise_maps_before_the_first_layer():
    class Renormalising(nn.Module):
        """googlenet's transform_input in spirit: an elementwise map of the input before the first conv."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(-2 * x + 1)

    net = Renormalising()
    net.vislib_preprocessing = Preprocessing((0.5, 0.25, 0.0), (0.5, 0.25, 1.0), 4)
    low, high = first_layer_bounds(net, torch.zeros(2, 3, 4, 4))
    assert low.shape == high.shape == (1, 3, 4, 4)
    # Pixels 0 and 1 normalise to (-1, -1, 0) and (1, 3, 1); -2 v + 1 flips them.
    torch.testing.assert_close(low[0, :, 0, 0], torch.tensor([-1.0, -5.0, -1.0]))
    torch.testing.assert_close(high[0, :, 0, 0], torch.tensor([3.0, 3.0, 1.0]))


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_relevance_is_conserved_through_residual_sums_and_concatenations(arch):
    torch.manual_seed(0)
    net = models.load(arch, "random")
    with torch.no_grad():  # without biases nothing absorbs relevance but epsilon (batch norms start unbiased)
        for module in net.modules():
            if isinstance(module, nn.Linear):
                module.bias.zero_()
    images = torch.randn(2, 3, 32, 32)
    for params in ({"epsilon": 1e-9}, {"rule": "alpha_beta", "alpha": 2.0, "epsilon": 1e-9}):
        result = methods.get("lrp", **params).explain(net, None, images)
        with torch.no_grad():
            scores = net(images).gather(1, result.targets[:, None])[:, 0]
        assert result.extras["conservation_gap"].abs().max() <= 1e-4 * scores.abs().max(), params
        assert torch.allclose(result.maps.sum(dim=(1, 2)), scores, rtol=1e-4)


def test_nothing_of_a_call_outlives_it():
    net = models.load("demonet", "random")
    for params in ({}, {"rule": "alpha_beta", "alpha": 2.0}):
        methods.get("lrp", **params).explain(net, None, torch.randn(2, 3, 32, 32))
    # The rules' autograd nodes and the hooks' records must not hold each other in a cycle through the graph.
    gc.collect()
    assert not [obj for obj in gc.get_objects() if isinstance(obj, lrp._Propagation)]


@pytest.mark.parametrize("rule", ["epsilon", "alpha_beta"])
def test_folding_batch_norms_equals_lrp_on_the_folded_network(rule):
    torch.manual_seed(0)
    net = _demonet_with_statistics()
    images = torch.randn(2, 3, 32, 32)
    folded_net = fold_batch_norms(net, images)
    assert folded_net is not net
    targets = torch.tensor([1, 3])
    ours = methods.get("lrp", rule=rule, alpha=2.0, batch_norm="fold").attribute(net, images, targets)
    reference = methods.get("lrp", rule=rule, alpha=2.0, batch_norm="epsilon").attribute(folded_net, images,
                                                                                         targets)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


MODEL_WITH_LAYER_NORM = '''
from torch import nn


def build(num_classes: int = 10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4),
                         nn.Linear(4, num_classes))
'''


def test_a_module_without_a_rule_is_named_by_explain_and_by_the_config_check(tmp_path):
    factory = tmp_path / "normed.py"
    factory.write_text(MODEL_WITH_LAYER_NORM)
    net = models.load_spec({"factory": f"{factory}:build", "input_size": 16})
    with pytest.raises(LayerError, match=r"no propagation rule for 4 \(LayerNorm\)"):
        methods.get("lrp").explain(net, None, torch.randn(1, 3, 16, 16))
    config = {"datasets": {"shapes": {"kind": "shapes", "params": {}}},
              "models": {"mine": {"factory": f"{factory}:build", "input_size": 16}},
              "methods": {"lrp": {}, "gradients": {"method": "gradient_x_input"}}, "metrics": {"pointing_game": {}},
              "experiments": {"e": {"dataset": "shapes", "models": {"mine": ["0"]}, "methods": ["gradients"],
                                    "metrics": ["pointing_game"]}}}
    check_config(config)
    config["experiments"]["e"]["methods"] = ["gradients", "lrp"]
    with pytest.raises(ConfigError, match=r"experiments.e.models.mine: method 'lrp': LRP has no propagation rule "
                                          r"for 4 \(LayerNorm\)"):
        check_config(config)
