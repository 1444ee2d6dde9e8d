"""The gradient family: attributions at input resolution from gradients of the target score."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vislib.methods.base import (
    METHODS,
    Attribution,
    AttributionMethod,
    choose_targets,
    fast_layout,
    register,
)
from vislib.methods.cam import GradCAM, layer_activation_and_grad, layer_or_default
from vislib.methods.hooks import frozen_model
from vislib.methods.postprocess import map_quantiles, to_image_maps
from vislib.models.registry import preprocessing_of
from vislib.params import param, with_defaults


class InputGradient(NamedTuple):
    """The gradient of the explained scores with respect to the input."""

    grad: torch.Tensor  # d score_target / d input, [N,3,H,W]
    logits: torch.Tensor  # [N,K]
    targets: torch.Tensor  # [N], the explained classes


def input_gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None) -> InputGradient:
    """d score_target / d input for a batch in one forward/backward (targets None: the predicted classes)."""
    with frozen_model(model), torch.enable_grad():
        x = fast_layout(images.detach()).requires_grad_(True)
        logits = model(x)
        targets = choose_targets(logits, targets)
        # Images are independent in eval mode, so the gradient of the summed scores is per-image.
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return InputGradient(grad, logits.detach(), targets)


def unperturbed_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits [N,K] of the images, for methods whose gradient passes see only perturbed copies."""
    with frozen_model(model), torch.no_grad():
        return model(fast_layout(images))


class _GuidedClamp(torch.autograd.Function):
    """ReLU (or ReLU6) whose backward passes only positive gradients where the input is in the open range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp_min(0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        positive = grad_output.clamp_min(0)
        # ReLU's and ReLU6's own backward kernels zero the gradient outside (0, upper) in one fused
        # pass, twice as fast as building a mask and multiplying.
        if ctx.upper is None:
            return torch.ops.aten.threshold_backward(positive, x, 0), None
        return torch.ops.aten.hardtanh_backward(positive, x, 0.0, ctx.upper), None


@contextlib.contextmanager
def guided_relus(model: nn.Module, relu6: bool = True) -> Iterator[None]:
    """While active, every ReLU (and, with `relu6`, every nn.ReLU6 of `model`) backpropagates guided.

    nn.ReLU modules call torch.nn.functional.relu, and some networks call it directly (torchvision's
    googlenet and densenet), so patching that one function covers both, including a module reused
    several times (torchvision's resnet blocks). The patch is process-wide while the block runs,
    and a call with inplace=True returns a new tensor (every caller uses the returned value).
    """
    original = F.relu

    def guided_relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return _GuidedClamp.apply(input, None)

    def guided_relu6(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
                     ) -> torch.Tensor:
        assert isinstance(module, nn.ReLU6)  # the hook is registered on ReLU6 modules only
        return _GuidedClamp.apply(inputs[0], float(module.max_val))

    handles = [m.register_forward_hook(guided_relu6) for m in model.modules()
               if relu6 and isinstance(m, nn.ReLU6)]
    F.relu = guided_relu
    try:
        yield
    finally:
        F.relu = original
        for handle in handles:
            handle.remove()


CHANNEL_REDUCTIONS = ("max_abs", "sum_abs_clip99", "signed_sum")
CLIP_QUANTILE = 0.99
"""`sum_abs_clip99` caps each map at this quantile of its values (pytorch-cnn-visualizations' grayscale)."""


def reduce_channels(attribution: torch.Tensor, how: str) -> torch.Tensor:
    """The map [N,H,W] of a per-pixel attribution [N,3,H,W], by one of CHANNEL_REDUCTIONS.

    - `max_abs`: the largest absolute value over the channels (Simonyan et al. 2014's saliency map).
    - `sum_abs_clip99`: the sum of absolute values over the channels, capped at each map's 99th
      percentile; min-max normalised afterwards (`normalize_maps`) it is exactly
      pytorch-cnn-visualizations' `convert_to_grayscale` (and PAIR saliency's VisualizeImageGrayscale).
    - `signed_sum`: the sum over the channels, signed.
    """
    if how == "max_abs":
        return attribution.abs().amax(dim=1)
    if how == "signed_sum":
        return attribution.sum(dim=1)
    if how == "sum_abs_clip99":
        total = attribution.abs().sum(dim=1)
        cap = map_quantiles(total, CLIP_QUANTILE)
        return torch.minimum(total, cap[:, :, None])
    raise ValueError(f"unknown channel reduction {how!r}; expected one of {CHANNEL_REDUCTIONS}")


REDUCTION_HELP = ("RGB attribution -> map: max_abs (max |a| over channels), sum_abs_clip99 (sum |a|, capped at "
                  "the 99th percentile: pytorch-cnn-visualizations' grayscale) or signed_sum")


@dataclass(frozen=True)
class ReductionParams:
    """The parameter every gradient method shares: how its RGB attribution becomes one map."""

    channel_reduction: str = param("max_abs", REDUCTION_HELP, choices=CHANNEL_REDUCTIONS)


SignedSumParams = with_defaults(ReductionParams, channel_reduction="signed_sum")


class PixelAttribution(NamedTuple):
    """A per-pixel attribution with the classes it explains."""

    values: torch.Tensor  # [N,3,H,W]
    targets: torch.Tensor  # [N], the explained classes
    logits: torch.Tensor  # [N,K] of the unperturbed images


class GradientMethod(AttributionMethod):
    """A method whose per-pixel attribution [N,3,H,W] is reduced over channels to the map."""

    uses_layer = False
    Params = ReductionParams

    @abstractmethod
    def pixel_attribution(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None,
                          layer: str | None = None) -> PixelAttribution:
        """Per-pixel attribution of `targets` [N] (None: the predicted classes) for a preprocessed batch."""

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None,
                  layer: str | None = None) -> torch.Tensor:
        """Per-pixel attribution [N,3,H,W] of `targets` [N] (None: the predicted classes)."""
        return self.pixel_attribution(model, images, targets, layer).values

    def reduction(self) -> str:
        """How the per-pixel attribution becomes the map (one of CHANNEL_REDUCTIONS)."""
        return self.params["channel_reduction"]

    def reduce(self, attribution: torch.Tensor) -> torch.Tensor:
        """The map [N,H,W] of a per-pixel attribution [N,3,H,W] (`channel_reduction`)."""
        return reduce_channels(attribution, self.reduction())

    def maps_are_signed(self) -> bool:
        """Signed where the channels are summed with their signs (the attributions all carry one)."""
        return self.reduction() == "signed_sum"

    def _explain(self, model, layer, images, targets) -> Attribution:
        values, targets, logits = self.pixel_attribution(model, images, targets, layer)
        return Attribution(self.reduce(values).float(), targets, logits.argmax(1))


@register
class VanillaGradient(GradientMethod):
    """Saliency (Simonyan et al. 2014): d score / d input, the map max |.| over channels (the paper's)."""

    name = "vanilla_gradient"

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Input gradient [N,3,H,W] (signed)."""
        grad, logits, targets = input_gradient(model, images, targets)
        return PixelAttribution(grad, targets, logits)


@dataclass(frozen=True)
class GuidedParams(ReductionParams):
    """Parameters of the guided-backpropagation methods."""

    relu6: bool = param(True, "treat ReLU6 as a guided ReLU too (the MobileNet/EfficientNet activation)")


@register
class GuidedBackprop(GradientMethod):
    """Guided backpropagation (Springenberg et al. 2015): input gradient through guided ReLUs."""

    name = "guided_backprop"
    Params = GuidedParams

    def runs_on_torchscript(self) -> bool:
        """No: guided ReLUs patch the Python model's activations."""
        return False

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Guided input gradient [N,3,H,W] (signed)."""
        with guided_relus(model, self.params["relu6"]):
            grad, logits, targets = input_gradient(model, images, targets)
        return PixelAttribution(grad, targets, logits)


@register
class GuidedGradCAM(GradientMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM map."""

    name = "guided_gradcam"
    uses_layer = True
    Params = GuidedParams

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Guided gradient [N,3,H,W] scaled by Grad-CAM of `layer`, normalised and upsampled."""
        layer = layer_or_default(model, layer, self.name)
        activation, grad, logits, targets = layer_activation_and_grad(model, layer, images, targets, self.name)
        cam = to_image_maps(torch.relu(GradCAM.combine(activation, grad).sum(1)), tuple(images.shape[-2:]))
        guided = GuidedBackprop(relu6=self.params["relu6"]).attribute(model, images, targets)
        return PixelAttribution(guided * cam[:, None].to(guided.dtype), targets, logits)


@register
class GradientXInput(GradientMethod):
    """Gradient x input (Shrikumar et al. 2016): input times its gradient, summed over channels."""

    name = "gradient_x_input"
    Params = SignedSumParams

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Input times input gradient [N,3,H,W] (signed, in the model's input space)."""
        grad, logits, targets = input_gradient(model, images, targets)
        return PixelAttribution(images * grad, targets, logits)


QUADRATURE_RULES = ("riemann_middle", "riemann_left", "riemann_right", "riemann_trapezoid", "gausslegendre")
BASELINES = ("zero", "black")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha in [0,1] and weights (summing to 1) of a `steps`-point rule for the path integral."""
    if rule == "gausslegendre":
        nodes, gauss_weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * gauss_weights)
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (torch.arange(steps, dtype=torch.float64) + offset) / steps, weights


@register
class IntegratedGradients(GradientMethod):
    """Integrated gradients (Sundararajan et al. 2017): (x - x') times the path-averaged gradient."""

    name = "integrated_gradients"
    # The midpoint rule is the default: a ReLU network's gradient jumps along the path, and
    # Gauss-Legendre's end-clustered nodes then miss the middle (6% completeness gap vs 0.4%
    # at 64 steps on a random resnet18 with a black baseline).
    @dataclass(frozen=True)
    class Params:
        steps: int = param(32, "points on the path from the baseline to the image", minimum=2)
        baseline: str = param("zero", "x': zeros in input space, or black pixels", choices=BASELINES)
        rule: str = param("riemann_middle", "quadrature rule along the path", choices=QUADRATURE_RULES)
        batch_size: int = param(64, "path points per backward pass", minimum=1)
        # The signed sum keeps completeness: the map's total is the attributions' total.
        channel_reduction: str = param("signed_sum", REDUCTION_HELP, choices=CHANNEL_REDUCTIONS)

    def baseline(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The baseline x' [1,3,H,W], the same for every image: zeros in input space ('zero') or black
        pixels ('black')."""
        zeros = torch.zeros_like(images[:1])
        return preprocessing_of(model).normalize(zeros) if self.params["baseline"] == "black" else zeros

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Signed attribution [N,3,H,W] whose sum approximates f(x) - f(x') per image."""
        logits = unperturbed_logits(model, images)
        targets = choose_targets(logits, targets)
        baseline = self.baseline(model, images)
        alphas, weights = (t.to(images.device, images.dtype) for t in quadrature(self.params["rule"],
                                                                                 self.params["steps"]))
        n = images.shape[0]
        delta = images - baseline
        per_pass = max(1, self.params["batch_size"] // max(n, 1))
        path_grad = torch.zeros_like(images)
        # All images advance along their paths together: one pass takes several steps of every image.
        for start in range(0, len(alphas), per_pass):
            a = alphas[start:start + per_pass, None, None, None, None]
            points = (baseline + a * delta).flatten(0, 1)
            grad = input_gradient(model, points, targets.repeat(len(a))).grad.view(len(a), *images.shape)
            path_grad += (weights[start:start + per_pass, None, None, None, None] * grad).sum(0)
        return PixelAttribution(delta * path_grad, targets, logits)

    def _explain(self, model, layer, images, targets) -> Attribution:
        values, targets, logits = self.pixel_attribution(model, images, targets)
        # One pass of one image: every image has the same baseline.
        baseline_scores = unperturbed_logits(model, self.baseline(model, images))[0, targets]
        gap = values.sum(dim=(1, 2, 3)) - (logits.gather(1, targets[:, None])[:, 0] - baseline_scores)
        return Attribution(self.reduce(values).float(), targets, logits.argmax(1),
                           extras={"completeness_gap": gap.float()})


SMOOTHABLE = ("vanilla_gradient", "guided_backprop", "gradient_x_input", "integrated_gradients")
SMOOTHGRAD_AVERAGES = ("signed", "absolute", "squared")


@register
class SmoothGrad(GradientMethod):
    """SmoothGrad (Smilkov et al. 2017): a gradient method's attribution averaged over noisy copies."""

    name = "smoothgrad"
    @dataclass(frozen=True)
    class Params:
        base: str = param("vanilla_gradient", "the gradient method averaged", choices=SMOOTHABLE)
        samples: int = param(16, "noisy copies per image", minimum=1)
        noise_level: float = param(0.15, "noise std as a fraction of the image's value range", minimum=0)
        seed: int = param(0, "seed of the noise (with each image's content)")
        batch_size: int = param(64, "noisy copies per backward pass", minimum=1)
        average: str = param("signed", "what is averaged over the noisy copies: the base attribution (signed: the "
                             "paper, both originals), its absolute value or its square", choices=SMOOTHGRAD_AVERAGES)
        channel_reduction: str = param("base", "the base method's channel reduction, or one of its choices",
                                       choices=("base", *CHANNEL_REDUCTIONS))

    def __init__(self, **params) -> None:
        super().__init__(**params)
        base = METHODS[self.params["base"]]()
        assert isinstance(base, GradientMethod)  # the `base` choices (SMOOTHABLE) are gradient methods only
        self.base = base

    def reduction(self) -> str:
        """`channel_reduction`, with `base` resolved to the base method's (default) reduction."""
        how = self.params["channel_reduction"]
        return self.base.reduction() if how == "base" else how

    def runs_on_torchscript(self) -> bool:
        """As its base method."""
        return self.base.runs_on_torchscript()

    def maps_are_signed(self) -> bool:
        """Signed where a signed average is summed with its signs."""
        return self.params["average"] == "signed" and super().maps_are_signed()

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise [samples,3,H,W] from `seed`, shared by every image of any batch.

        Sharing one draw makes an image's map independent of which images share its batch.
        """
        generator = torch.Generator(device=images.device).manual_seed(self.params["seed"])
        return torch.randn((self.params["samples"], *images.shape[1:]), generator=generator,
                           device=images.device, dtype=images.dtype)

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Mean base attribution [N,3,H,W] (or its absolute value or square: `average`) over noisy inputs
        (std noise_level * (max - min) per image)."""
        logits = unperturbed_logits(model, images)
        targets = choose_targets(logits, targets)
        n = images.shape[0]
        std = self.params["noise_level"] * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
        noise = self.noise(images)
        per_pass = max(1, self.params["batch_size"] // max(n, 1))
        total = torch.zeros_like(images)
        for start in range(0, len(noise), per_pass):
            chunk = noise[start:start + per_pass]
            noisy = (images[:, None] + std[:, None, None, None, None] * chunk[None]).flatten(0, 1)
            attribution = self.base.attribute(model, noisy, targets.repeat_interleave(len(chunk)), layer)
            if self.params["average"] == "absolute":
                attribution = attribution.abs()
            elif self.params["average"] == "squared":
                attribution = attribution * attribution
            total += attribution.view(n, len(chunk), *images.shape[1:]).sum(1)
        return PixelAttribution(total / len(noise), targets, logits)
