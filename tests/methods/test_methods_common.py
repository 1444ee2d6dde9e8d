"""Every attribution method on every architecture: shapes, batching, model state, hooks and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislib import methods, models
from vislib.errors import ConfigError, LayerError, VislibError
from vislib.methods.gradients import GradientMethod
from vislib.methods.hooks import hook_count

ARCHITECTURES = ["demonet", "resnet18", "densenet121", "googlenet", "vgg16", "alexnet"]
# Every registered method goes through the contract; a new registration is tested without editing this file.
ALL_METHODS = methods.METHODS.names()
INPUT_RESOLUTION = [m for m in ALL_METHODS if issubclass(methods.METHODS[m], GradientMethod)]
LAYER_RESOLUTION = [m for m in ALL_METHODS if m not in INPUT_RESOLUTION]
CAM_METHODS = ["cam", "gradcam", "gradcampp", "layercam", "scorecam"]
# Small settings keep the matrix quick; the defaults are exercised on the demo net below.
QUICK = {"scorecam": {"top_channels": 8}, "integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2},
         "l2caf_oblivious": {"max_iters": 10}, "l2caf_specific": {"max_iters": 10}}
# Perturbation settings whose signed maps get both signs on the random demo net (with 32 px windows or 4
# superpixels every perturbation lowers its predicted class's logit there).
QUICK |= {"occlusion": {"window": 30, "stride": 30}, "rise": {"masks": 8},
          "lime": {"samples": 8, "segments": "grid", "superpixels": 9},
          "kernel_shap": {"samples": 8, "segments": "grid", "superpixels": 9}}
QUICK |= {"smoothgradcampp": {"samples": 1}}
QUICK |= {"gradient_shap": {"samples": 2}}
QUICK |= {"ablationcam": {"top_channels": 4}, "sscam": {"top_channels": 2, "samples": 2},
          "iscam": {"top_channels": 2, "steps": 2}}
NO_POOL_LINEAR_HEAD = {"vgg16", "alexnet"}  # CAM needs global pooling + one linear layer


def test_the_contract_covers_both_l2caf_variants_and_the_cam_family():
    assert {"l2caf_oblivious", "l2caf_specific", *CAM_METHODS} <= set(LAYER_RESOLUTION)
    assert {"vanilla_gradient", "smoothgrad", "integrated_gradients"} <= set(INPUT_RESOLUTION)


def snapshot(net: torch.nn.Module) -> dict:
    """Everything a method could leave changed: hooks, grad and in-place flags, mode, weights, F.relu."""
    return {
        "hooks": hook_count(net),
        "grad": [p.requires_grad for p in net.parameters()],
        "inplace": [(name, m.inplace) for name, m in net.named_modules() if hasattr(m, "inplace")],
        "training": [m.training for m in net.modules()],
        "relu": F.relu,
        "grads": sum(p.grad is not None for p in net.parameters()),
    }


def assert_unchanged(net: torch.nn.Module, before: dict, state: dict[str, torch.Tensor]) -> None:
    assert snapshot(net) == before
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request):
    """A random-weight model, its state dict and its pristine snapshot."""
    torch.manual_seed(0)
    net = models.load(request.param, "random")
    return request.param, net, {k: v.clone() for k, v in net.state_dict().items()}, snapshot(net)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_on_every_architecture(arch, method):
    name, net, state, before = arch
    x = torch.randn(2, 3, 64, 64)
    explainer = methods.get(method, **QUICK.get(method, {}))
    if method == "cam" and name in NO_POOL_LINEAR_HEAD:
        with pytest.raises(LayerError, match="global average"):
            explainer.explain(net, None, x)
    else:
        result = explainer.explain(net, None, x)
        assert result.maps.dtype == torch.float32 and result.maps.ndim == 3 and len(result.maps) == 2
        if method in INPUT_RESOLUTION:
            assert result.maps.shape[1:] == (64, 64)
        assert torch.isfinite(result.maps).all()
        with torch.no_grad():
            predicted = net(x).argmax(1)
        assert torch.equal(result.targets, predicted) and torch.equal(result.predicted, predicted)
    assert_unchanged(net, before, state)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_batch_gives_the_maps_of_its_images_one_at_a_time(method):
    net = models.load("demonet", "random")
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 4, 2])
    explainer = methods.get(method, **QUICK.get(method, {}))
    batch = explainer.explain(net, None, x, targets).maps
    single = torch.cat([explainer.explain(net, None, x[i:i + 1], targets[i:i + 1]).maps for i in range(3)])
    scale = float(batch.abs().max())
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_defaults_run_on_the_demo_net(method):
    net = models.load("demonet", "random")
    result = methods.get(method).explain(net, None, torch.randn(2, 3, 64, 64))
    assert torch.isfinite(result.maps).all() and result.maps.abs().sum() > 0


@pytest.mark.parametrize("method", ALL_METHODS)
def test_model_is_unchanged_after_an_error_inside_the_method(method):
    net = models.load("demonet", "random")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = snapshot(net)
    x = torch.randn(2, 3, 64, 64)
    explainer = methods.get(method, **QUICK.get(method, {}))
    calls = []
    handle = net.fc.register_forward_hook(lambda _module, _inputs, _output: calls.append(1))
    try:
        explainer.explain(net, None, x)
    finally:
        handle.remove()
    last = len(calls)

    def fail_on_last_forward(_module, _inputs, _output):
        # The method's last pass runs with every context it holds (hooks, guided ReLUs, frozen flags).
        calls.append(1)
        if len(calls) == last:
            raise RuntimeError("boom")

    calls.clear()
    handle = net.fc.register_forward_hook(fail_on_last_forward)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explainer.explain(net, None, x)
    finally:
        handle.remove()
    assert_unchanged(net, before, state)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if methods.METHODS[m].uses_layer])
def test_layer_methods_reject_non_spatial_and_unknown_layers(method):
    net = models.load("resnet18", "random")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = snapshot(net)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(LayerError, match="spatial layer, but 'fc'"):
        methods.get(method).explain(net, "fc", x)
    with pytest.raises(LayerError, match="unknown layer.*'layer9'"):
        methods.get(method).explain(net, "layer9", x)
    assert_unchanged(net, before, state)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_targets_outside_the_class_range_are_refused(method):
    net = models.load("demonet", "random")
    with pytest.raises(VislibError, match="target class 6 is outside the model's range 0..5"):
        methods.get(method).explain(net, None, torch.randn(2, 3, 64, 64), torch.tensor([0, 6]))


@pytest.mark.parametrize("method,params,message", [
    ("scorecam", {"batch_size": "32"}, "'batch_size' must be int"),
    ("scorecam", {"top_channels": 2.5}, "'top_channels' must be int"),
    ("integrated_gradients", {"steps": 3.5}, "'steps' must be int"),
    ("integrated_gradients", {"baseline": 0}, "'baseline' must be str"),
    ("smoothgrad", {"samples": "4"}, "'samples' must be int"),
    ("smoothgrad", {"seed": True}, "'seed' must be int"),
    ("guided_backprop", {"relu6": "yes"}, "'relu6' must be bool"),
    ("gradcam", {"layer": "layer4"}, "no parameter 'layer'"),
])
def test_parameters_of_the_wrong_type_are_refused(method, params, message):
    with pytest.raises(ConfigError, match=message):
        methods.get(method, **params)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cuda_gives_the_cpu_maps(method):
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([1, 2])
    explainer = methods.get(method, **QUICK.get(method, {}))
    cpu = explainer.explain(net, None, x, targets).maps
    gpu = explainer.explain(net.cuda(), None, x.cuda(), targets.cuda()).maps
    if method == "smoothgrad":  # CUDA draws other noise from the same seed
        assert gpu.shape == cpu.shape and torch.isfinite(gpu).all()
        return
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * float(cpu.abs().max()))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_maps_declared_unsigned_are_never_negative_and_signed_ones_carry_both_signs(method):
    net = models.load("demonet", "random")
    explainer = methods.get(method, **QUICK.get(method, {}))
    maps = explainer.explain(net, None, torch.randn(3, 3, 64, 64)).maps
    if explainer.maps_are_signed():
        assert (maps < 0).any() and (maps > 0).any()
    else:
        assert (maps >= 0).all()


def test_display_maps_keep_zero_for_signed_maps_and_clip_outliers():
    maps = torch.linspace(-1, 1, 400).reshape(1, 20, 20)
    maps[0, 0, 0] = -50.0  # one outlier that would wash out the rest
    signed = methods.to_display_maps(maps, (20, 20), signed=True)
    assert signed.min() == -1 and signed.max() <= 1
    assert torch.equal(torch.sign(signed), torch.sign(maps))
    assert signed[0, 19, 19] > 0.9  # the largest ordinary value is near the top of the scale, not squashed to ~0.02
    unsigned = methods.to_display_maps(maps.abs(), (20, 20), signed=False)
    assert unsigned.shape == (1, 20, 20) and unsigned.min() == 0 and unsigned.max() == 1
    assert (unsigned > 0.5).float().mean() > 0.2
