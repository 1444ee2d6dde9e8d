"""The net cut after a layer (`vislib.methods.split`): the tail gives the whole net's logits with the layer's
output masked or replaced, on the fx path and on the hook path, for every kind of graph the cut has to handle."""

from __future__ import annotations

import pytest
import torch

from vislib import models
from vislib.errors import LayerError
from vislib.methods import split
from vislib.methods.hooks import frozen_model, hook_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = [
    ("resnet18", "layer4.1.conv1"),  # the residual branch crosses the cut
    ("efficientnet_lite0", "_blocks.10"),  # x.size(0) from the input crosses the cut, recomputed
    ("googlenet", "inception5b"),  # avgpool, flatten, dropout, fc
    ("demonet", "features.14"),
    ("densenet121", "features"),  # the tail starts with a functional in-place ReLU
    ("alexnet", "features.10"),  # an in-place ReLU module follows the cut
]


def _hooked_logits(net, layer: str, x: torch.Tensor, change) -> torch.Tensor:
    handle = models.resolve_layer(net, layer).register_forward_hook(lambda _m, _i, out: change(out))
    try:
        with torch.no_grad():
            return net(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("path", ["fx", "hook"])
@pytest.mark.parametrize("arch,layer", CASES, ids=[case[0] for case in CASES])
def test_the_tail_gives_the_whole_net_with_the_layer_output_masked_or_replaced(monkeypatch, arch, layer, path):
    if path == "hook":
        monkeypatch.setattr(split, "graph_split", lambda *args: "forced for the test")
    torch.manual_seed(0)
    net = models.load(arch, "random")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    before = hook_count(net)
    # In-place activations kept, as L2-CAF and Ablation-CAM run the cut.
    with frozen_model(net, keep_inplace=True):
        tail, activation, logits = split.cut_after(net, layer, x, "ablationcam")
        assert tail.path == path
        cached = activation.clone()
        masks = torch.randn(3, 1, *activation.shape[-2:])
        replacement = torch.randn_like(activation)
        masked_reference = _hooked_logits(net, layer, x, lambda out: out * masks)
        replaced_reference = _hooked_logits(net, layer, x, lambda out: replacement.to(out.dtype))
        torch.testing.assert_close(logits, _hooked_logits(net, layer, x, lambda out: out), rtol=1e-4, atol=1e-5)
        with torch.no_grad(), tail.attached():
            torch.testing.assert_close(tail(masks), masked_reference, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(tail.replaced(replacement), replaced_reference, rtol=1e-4, atol=1e-5)
            rows = torch.tensor([2, 0, 2])
            tail.select(rows)
            torch.testing.assert_close(tail(masks[rows]), masked_reference[rows], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(tail.replaced(replacement[rows]), replaced_reference[rows], rtol=1e-4,
                                       atol=1e-5)
    torch.testing.assert_close(activation, cached, rtol=0, atol=0)
    assert hook_count(net) == before


@pytest.mark.parametrize("path", ["fx", "hook"])
def test_a_layer_that_runs_twice_is_refused_by_name(monkeypatch, path):
    if path == "hook":
        monkeypatch.setattr(split, "graph_split", lambda *args: "forced for the test")
    net = models.load("resnet18", "random")
    # A torchvision BasicBlock applies its one ReLU module twice.
    with frozen_model(net), pytest.raises(LayerError, match=r"'layer1.0.relu' runs more than once \(2 times\) in "
                                                            r"one forward pass, so method 'ablationcam'"):
        split.cut_after(net, "layer1.0.relu", torch.randn(1, 3, 32, 32), "ablationcam")


class _InPlaceAfterACrossingRead(torch.nn.Module):
    """A net whose tail reads a value from before the cut that an in-place LeakyReLU then changes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.cut = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.leaky = torch.nn.LeakyReLU(0.1, inplace=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.stem(x)
        late = self.cut(early)
        mixed = late * early  # reads `early` before the LeakyReLU changes it
        return self.head((mixed + self.leaky(early)).mean((2, 3)))


def test_a_value_an_in_place_module_changes_after_the_tail_read_it_reaches_the_tail_unchanged():
    torch.manual_seed(0)
    net = _InPlaceAfterACrossingRead().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
    with frozen_model(net, keep_inplace=True):
        tail, activation, logits = split.cut_after(net, "cut", x, "l2caf_specific")
        assert tail.path == "fx" and tail.crossing_all
        torch.testing.assert_close(logits, expected)
        with torch.no_grad(), tail.attached():
            torch.testing.assert_close(tail(torch.ones(2, 1, *activation.shape[-2:])), expected)
    assert net.leaky.inplace
