"""Batch-norm folding: same function, original untouched, pairs that are not plain conv->BN left alone."""

import threading

import pytest
import torch
from torch import nn

from vislib import models
from vislib.featvis.fold import fold_batch_norms


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm statistics and an affine map far from the identity, so folding matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator))
            module.running_var.copy_(torch.rand(count, generator=generator) * 3 + 0.2)
            module.weight.data.copy_(torch.randn(count, generator=generator))
            module.bias.data.copy_(torch.randn(count, generator=generator))
    return model.eval()


def _norms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.fixture
def demonet():
    torch.manual_seed(0)
    return _with_running_stats(models.load("demonet"))


def test_folded_demonet_computes_the_same_function_and_leaves_the_original(demonet):
    state = {k: v.clone() for k, v in demonet.state_dict().items()}
    folded = fold_batch_norms(demonet, torch.randn(1, 3, 64, 64), outputs=["features.10"])
    assert folded is not demonet
    assert _norms(folded) == [] and isinstance(folded.features[1], nn.Identity)
    assert _norms(demonet) == ["features.1", "features.5", "features.9", "features.13"]
    assert all(torch.equal(v, state[k]) for k, v in demonet.state_dict().items())
    assert folded.vislib_preprocessing is not None
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        expected, actual = demonet(images), folded(images)
        inner_expected = demonet.features[:11](images)
        inner_actual = folded.features[:11](images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(inner_actual, inner_expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("read", [{"outputs": ["features.4"]}, {"inputs": ["features.5"]}])
def test_a_value_folding_would_change_is_not_folded(demonet, read):
    folded = fold_batch_norms(demonet, torch.randn(1, 3, 64, 64), **read)
    assert _norms(folded) == ["features.5"]
    assert isinstance(folded.features[4], nn.Conv2d) and folded.features[4].bias is None


class _ConvFeedsTwo(nn.Module):
    """The convolution's output feeds the batch norm and a skip connection: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return (self.norm(y) + y).mean((2, 3))


class _WithUnusedBranch(nn.Module):
    """A conv -> BN pair, and a module the forward pass never runs (like GoogLeNet's eval-mode aux heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.norm(self.conv(x)).mean((2, 3))


def test_a_kept_layer_the_forward_pass_never_runs_does_not_stop_folding():
    model = _with_running_stats(_WithUnusedBranch())
    folded = fold_batch_norms(model, torch.randn(1, 3, 8, 8), outputs=["unused"], inputs=["unused"])
    assert isinstance(folded.norm, nn.Identity)


class _NormFirst(nn.Module):
    """Batch norm before the convolution (DenseNet's order): nothing to fold into."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(self.norm(x)).mean((2, 3))


@pytest.mark.parametrize("build", [_ConvFeedsTwo, _NormFirst])
def test_models_whose_batch_norm_cannot_be_folded_are_returned_as_they_are(build):
    model = _with_running_stats(build())
    assert fold_batch_norms(model, torch.randn(1, 3, 8, 8)) is model


class _NormInsideReadBlock(nn.Module):
    """conv -> post = (BN, ReLU): a caller reading post's input reads the convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.post = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self.post(self.conv(x)).mean((2, 3))


def test_a_pair_split_by_a_read_layer_is_folded_only_where_the_read_value_stays():
    model = _with_running_stats(_NormInsideReadBlock())
    assert fold_batch_norms(model, torch.randn(1, 3, 8, 8), inputs=["post"]) is model
    assert isinstance(fold_batch_norms(model, torch.randn(1, 3, 8, 8), outputs=["post"]).post[0], nn.Identity)


def test_a_read_batch_norm_output_is_the_same_after_folding(demonet):
    images = torch.randn(3, 3, 64, 64)
    folded = fold_batch_norms(demonet, images, outputs=["features.5"])
    assert isinstance(folded.features[5], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded.features[:6](images), demonet.features[:6](images), rtol=1e-4, atol=1e-4)


def test_a_training_mode_model_is_folded_into_an_eval_copy_and_left_unchanged(demonet):
    demonet.train()
    demonet.features[5].eval()
    state = {k: v.clone() for k, v in demonet.state_dict().items()}
    folded = fold_batch_norms(demonet, torch.randn(1, 3, 64, 64))
    assert _norms(folded) == [] and not folded.training
    assert all(torch.equal(v, state[k]) for k, v in demonet.state_dict().items())
    assert [m.training for m in demonet.modules()] == [m is not demonet.features[5] for m in demonet.modules()]


class _Locked(nn.Module):
    """A model holding something deepcopy cannot copy."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.lock = threading.Lock()

    def forward(self, x):
        return self.norm(self.conv(x)).mean((2, 3))


def test_a_model_that_cannot_be_copied_is_returned_as_it_is():
    model = _with_running_stats(_Locked())
    assert fold_batch_norms(model, torch.randn(1, 3, 8, 8)) is model


def test_folding_keeps_parameter_grad_flags(demonet):
    folded = fold_batch_norms(demonet, torch.randn(1, 3, 64, 64))
    assert all(p.requires_grad for p in folded.parameters())
    for p in demonet.parameters():
        p.requires_grad_(False)
    frozen = fold_batch_norms(demonet, torch.randn(1, 3, 64, 64))
    assert not any(p.requires_grad for p in frozen.parameters())
