"""Gradient-based CAM variants: HiResCAM, XGrad-CAM, element-wise Grad-CAM, Eigen-CAM, EigenGrad-CAM and Smooth
Grad-CAM++ against pytorch-grad-cam and torchcam at the layer's resolution, on random-weight nets and the trained
demo net."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torchcam.methods
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from threadpoolctl import threadpool_limits

from vislib import methods, models
from vislib.data.dataset import CocoFormatDataset
from vislib.methods.hooks import frozen_model

PGC_PEERS = {"hirescam": pytorch_grad_cam.HiResCAM, "xgradcam": pytorch_grad_cam.XGradCAM,
             "gradcam_elementwise": pytorch_grad_cam.GradCAMElementWise, "eigencam": pytorch_grad_cam.EigenCAM,
             "eigengradcam": pytorch_grad_cam.EigenGradCAM}
# pytorch-grad-cam's modules that import get_2d_projection by name.
PGC_PROJECTING_MODULES = ("base_cam", "hirescam", "grad_cam_elementwise", "eigen_cam", "eigen_grad_cam")
# net: (layer, the layer global pooling and the linear head read); 64 px inputs. resnet18's layer3 is 4x4 (layer4
# would leave Eigen-CAM 4 positions to project).
CASES = {"demonet": ("features.14", "features.14"), "resnet18": ("layer3", "layer4"),
         "trained_demonet": ("features.14", "features.14")}


def full_resolution_net() -> torch.nn.Module:
    """Two 3x3 convolutions that keep the input's size, global pooling and a linear head: at layer '3' the CAM has
    the input's resolution, so pytorch-grad-cam's resize to the input (before its augmentations' mean) is the
    identity."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()


def projection_signed_like_the_channel_sum(batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's own first-component projection, its sign (which the SVD leaves open) chosen as vislib
    chooses it: agreeing with the channel sum."""
    # One BLAS thread: numpy's threads on a small SVD only wait for each other, 100x slower on a busy machine.
    with threadpool_limits(1, user_api="blas"):
        projection = get_2d_projection(batch)
    channel_sum = np.nan_to_num(batch).sum(1)
    agreement = ((projection - projection.mean((1, 2), keepdims=True))
                 * (channel_sum - channel_sum.mean((1, 2), keepdims=True))).sum((1, 2))
    return np.where(agreement[:, None, None] < 0, -projection, projection).astype(np.float32)


@pytest.fixture
def signed_peer_projection(monkeypatch):
    for module in PGC_PROJECTING_MODULES:
        monkeypatch.setattr(f"pytorch_grad_cam.{module}.get_2d_projection", projection_signed_like_the_channel_sum)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> tuple[torch.nn.Module, tuple[str, str], torch.Tensor, torch.Tensor]:
    """A net, its layers (CASES), 3 images and their targets: random weights on noise, or the trained demo net on
    shapes val images with their labels."""
    name = request.param
    torch.manual_seed(0)
    if name != "trained_demonet":
        return models.load(name, "random"), CASES[name], torch.randn(3, 3, 64, 64), torch.tensor([1, 3, 5])
    trained = request.getfixturevalue("trained_demonet")
    net = models.load("demonet", str(trained.checkpoint))
    val = CocoFormatDataset("shapes", trained.shapes_root, "val")
    batch = val.load_batch(val.image_ids()[:3], models.preprocessing_of(net))
    return net, CASES[name], batch.images, batch.labels


def pgc_native_maps(method: str, net: torch.nn.Module, layer: str, x: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's map at layer resolution (their get_cam_image route, before cv2 resizing)."""
    module = models.resolve_layer(net, layer)
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]
    with PGC_PEERS[method](net, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=wanted)
        recorded = cam.activations_and_grads
        grads = recorded.gradients[0].numpy() if recorded.gradients else None
        native = cam.get_cam_image(x, module, wanted, recorded.activations[0].numpy(), grads, False)
    net.zero_grad(set_to_none=True)
    return torch.from_numpy(np.maximum(native, 0))


def assert_same_maps(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and (theirs.amax(dim=(1, 2)) > 0).all()
    torch.testing.assert_close(methods.normalize_maps(ours), methods.normalize_maps(theirs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", sorted(PGC_PEERS))
def test_matches_pytorch_grad_cam(case, signed_peer_projection, method):
    net, (layer, _), x, targets = case
    ours = methods.get(method).explain(net, layer, x, targets).maps
    assert_same_maps(ours, pgc_native_maps(method, net, layer, x, targets))


def test_xgradcam_matches_torchcam(case):
    net, (layer, _), x, targets = case
    with torchcam.methods.XGradCAM(net, layer) as cam:
        theirs = cam(targets.tolist(), net(x), normalized=False)[0].detach()
    net.zero_grad(set_to_none=True)
    assert_same_maps(methods.get("xgradcam").explain(net, layer, x, targets).maps, theirs)


class _GivenNoise:
    """Stands in for torchcam's noise distribution: hands out the given noise draws, one per noisy pass."""

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws = iter(draws)

    def sample(self, size: torch.Size) -> torch.Tensor:
        return next(self.draws).expand(size)


class _TorchcamOnTheInputsActivation(torchcam.methods.SmoothGradCAMpp):
    """torchcam's Smooth Grad-CAM++ with its map drawn on the input's activation, as its docstring's formula and the
    paper define it: its forward hook otherwise keeps the activation of the last noisy copy."""

    def _get_weights(self, *args, **kwargs):
        inputs_activation = list(self.hook_a)
        weights = super()._get_weights(*args, **kwargs)
        self.hook_a = inputs_activation
        return weights


def test_smoothgradcampp_matches_torchcam_with_the_same_noise(case):
    # One noisy copy: torchcam's ReLU term takes the last copy's gradient where vislib takes the mean over the
    # copies, which are the same thing for one copy; more copies are checked against the definition below.
    # The layer the head pools: torchcam's alpha sums A * D3 over positions where the paper (and vislib) multiply
    # D3 at the position by the sum of A, which is the same only where the gradient is constant over positions.
    net, (_, layer), x, targets = case
    explainer = methods.get("smoothgradcampp", samples=1, noise_std=0.5, seed=3)
    ours = explainer.explain(net, layer, x, targets).maps
    with _TorchcamOnTheInputsActivation(net, layer, num_samples=1, std=0.5) as cam:
        cam._distrib = _GivenNoise(explainer.noise(x) * 0.5)
        scores = net(x)
        theirs = cam(targets.tolist(), scores, normalized=False)[0].detach()
    net.zero_grad(set_to_none=True)
    assert_same_maps(ours, theirs)


def test_smoothgradcampp_averages_the_gradient_powers_over_the_noisy_copies():
    """The paper's definition, one image and one noisy copy at a time: Grad-CAM++'s alpha from the mean second and
    third powers of the gradient, times ReLU of the mean gradient, on the input's activation."""
    torch.manual_seed(0)
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 4])
    explainer = methods.get("smoothgradcampp", samples=3, noise_std=0.4, seed=7, batch_size=4)
    ours = explainer.explain(net, "features.10", x, targets).maps
    noise = explainer.noise(x[:1]) * 0.4
    outputs: list[torch.Tensor] = []
    hook = net.features[10].register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    for image, target, mine in zip(x, targets, ours, strict=True):
        with frozen_model(net):
            net(image[None])
            activation = outputs[-1][0].detach()
            grads = []
            for draw in noise:
                score = net((image + draw)[None].requires_grad_(True))[0, target]
                grads.append(torch.autograd.grad(score, outputs[-1])[0][0])
        grads = torch.stack(grads).double()
        grad1, grad2, grad3 = (grads ** power for power in (1, 2, 3))
        alpha = grad2.mean(0) / (2 * grad2.mean(0) + activation.double().sum((1, 2), keepdim=True) * grad3.mean(0)
                                 + 1e-8)
        weights = (alpha * torch.relu(grad1.mean(0))).sum((1, 2))
        expected = torch.relu((weights[:, None, None] * activation).sum(0)).float()
        torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))
    hook.remove()


def test_eigen_cams_are_their_own_eigen_smooth_and_eigencam_ignores_the_target():
    net = models.load("demonet", "random")
    x = torch.randn(2, 3, 32, 32)
    for method in ("eigencam", "eigengradcam"):
        plain = methods.get(method).explain(net, "features.10", x, torch.tensor([0, 1])).maps
        torch.testing.assert_close(methods.get(method, eigen_smooth=True).explain(
            net, "features.10", x, torch.tensor([0, 1])).maps, plain)
    eigencam = methods.get("eigencam")
    torch.testing.assert_close(eigencam.explain(net, "features.10", x, torch.tensor([0, 1])).maps,
                               eigencam.explain(net, "features.10", x, torch.tensor([5, 3])).maps)
    # HiResCAM's terms are EigenGrad-CAM's: its eigen_smooth is EigenGrad-CAM.
    torch.testing.assert_close(methods.get("hirescam", eigen_smooth=True).explain(net, "features.10", x).maps,
                               methods.get("eigengradcam").explain(net, "features.10", x).maps)


@pytest.mark.parametrize("method", sorted(PGC_PEERS))
def test_both_smoothing_options_match_pytorch_grad_cam(signed_peer_projection, method):
    # pytorch-grad-cam's HiResCAM and element-wise Grad-CAM apply eigen_smooth in their own get_cam_image.
    net = full_resolution_net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 4])
    maps = methods.get(method, aug_smooth=True, eigen_smooth=True).explain(net, "3", x, targets).maps
    with PGC_PEERS[method](net, target_layers=[net[3]]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
                     aug_smooth=True, eigen_smooth=True)
    net.zero_grad(set_to_none=True)
    torch.testing.assert_close(maps, torch.from_numpy(theirs), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("name,layer", [("demonet", "features.14"), ("resnet18", "layer4")])
def test_hirescam_and_xgradcam_are_gradcam_where_global_pooling_and_a_linear_head_read_the_layer(name, layer):
    # The gradient is then the same at every position, so the position-wise product sums to Grad-CAM's
    # (Draelos & Carin), and XGrad-CAM's activation-weighted mean gradient is that gradient.
    net = models.load(name, "random")
    x = torch.randn(2, 3, 64, 64)
    gradcam = methods.normalize_maps(methods.get("gradcam").explain(net, layer, x).maps)
    for method in ("hirescam", "xgradcam"):
        torch.testing.assert_close(methods.normalize_maps(methods.get(method).explain(net, layer, x).maps), gradcam,
                                   rtol=0, atol=1e-4)
