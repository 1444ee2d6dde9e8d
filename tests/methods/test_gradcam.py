"""Grad-CAM: parity with pytorch-grad-cam, batching, hooks and model state, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislib import methods, models
from vislib.errors import ConfigError, LayerError, VislibError
from vislib.methods.hooks import hook_count


def _reference_native_maps(net, layer_module, x, targets) -> np.ndarray:
    with GradCAM(model=net, target_layers=[layer_module]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        act = cam.activations_and_grads.activations[0].numpy()
        grad = cam.activations_and_grads.gradients[0].numpy()
        return np.maximum(cam.get_cam_image(x, layer_module, None, act, grad, False), 0)


@pytest.mark.parametrize("name,layer,size", [("resnet18", "layer4", 224), ("demonet", "features.14", 64)])
def test_matches_pytorch_grad_cam_after_the_same_normalisation(name, layer, size):
    net = models.load(name, "random")
    x = torch.randn(3, 3, size, size)
    targets = torch.tensor([1, 3, 5])
    ours = methods.get("gradcam").explain(net, layer, x, targets).maps
    theirs = _reference_native_maps(net, models.resolve_layer(net, layer), x, targets)
    np.testing.assert_allclose(methods.normalize_maps(ours).numpy(),
                               methods.normalize_maps(torch.from_numpy(theirs)).numpy(), atol=1e-4)


def test_batch_equals_one_image_at_a_time():
    net = models.load("demonet", "random")
    x = torch.randn(4, 3, 64, 64)
    batched = methods.get("gradcam").explain(net, "features.14", x).maps
    single = torch.cat([methods.get("gradcam").explain(net, "features.14", x[i:i + 1]).maps for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_predicted_class_is_default_target():
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 64, 64)
    result = methods.get("gradcam").explain(net, "features.14", x)
    assert torch.equal(result.targets, net(x).argmax(1))


def test_no_hooks_left_and_model_unchanged_even_after_an_error():
    net = models.load("resnet18", "random")
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    grad_flags = [p.requires_grad for p in net.parameters()]
    inplace = [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    hooks = hook_count(net)
    method = methods.get("gradcam")
    method.explain(net, "layer3", torch.randn(1, 3, 64, 64))
    with pytest.raises(LayerError):
        method.explain(net, "fc", torch.randn(1, 3, 64, 64))
    assert hook_count(net) == hooks
    assert [p.requires_grad for p in net.parameters()] == grad_flags
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == inplace
    assert all(torch.equal(before_state[k], v) for k, v in net.state_dict().items())


def test_bad_input_errors_name_the_thing():
    net = models.load("demonet", "random")
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(LayerError, match="spatial layer.*'fc'"):
        methods.get("gradcam").explain(net, "fc", x)
    with pytest.raises(VislibError, match="target class 9 is outside"):
        methods.get("gradcam").explain(net, "features.14", x, torch.tensor([9]))
    with pytest.raises(ConfigError, match="no parameter 'steps'"):
        methods.get("gradcam", steps=3)
    with pytest.raises(VislibError, match="unknown method 'gradcma'.*Did you mean 'gradcam'"):
        methods.get("gradcma")
