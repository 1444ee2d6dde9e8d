"""The gradient family: attributions at input resolution from gradients of the target score."""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from vislib.errors import LayerError
from vislib.methods.base import (
    METHODS,
    Attribution,
    AttributionMethod,
    choose_targets,
    fast_layout,
    register,
)
from vislib.methods.cam import GradCAM, layer_handed_on_as_copy, layer_or_default
from vislib.methods.hooks import frozen_model
from vislib.methods.postprocess import map_quantiles, normalize_maps, to_image_maps, upsample_maps
from vislib.models.registry import preprocessing_of
from vislib.params import param, with_defaults


class InputGradient(NamedTuple):
    """The gradient of the explained scores with respect to the input."""

    grad: torch.Tensor  # d score_target / d input, [N,3,H,W]
    logits: torch.Tensor  # [N,K]
    targets: torch.Tensor  # [N], the explained classes


def input_gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None) -> InputGradient:
    """d score_target / d input for a batch in one forward/backward (targets None: the predicted classes)."""
    with frozen_model(model, keep_inplace=True), torch.enable_grad():
        x = fast_layout(images.detach()).requires_grad_(True)
        logits = model(x)
        targets = choose_targets(logits, targets)
        # Images are independent in eval mode, so the gradient of the summed scores is per-image.
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return InputGradient(grad, logits.detach(), targets)


def unperturbed_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits [N,K] of the images, for methods whose gradient passes see only perturbed copies."""
    with frozen_model(model, keep_inplace=True), torch.no_grad():
        return model(fast_layout(images))


def _clamp(ctx, x: torch.Tensor, upper: float | None, inplace: bool) -> torch.Tensor:
    """ReLU (upper None) or ReLU6 of `x`, in place where the caller asked (an in-place nn.ReLU or F.relu call)."""
    if inplace:
        ctx.mark_dirty(x)
        return x.clamp_min_(0) if upper is None else x.clamp_(0, upper)
    return x.clamp_min(0) if upper is None else x.clamp(0, upper)


class GuidedSwitch:
    """Whether guided ReLUs backpropagate guided or as plain ReLUs, read at each backward pass: the forward values
    are the same, so one forward pass serves a plain backward pass and a guided one (guided Grad-CAM)."""

    def __init__(self) -> None:
        self.guided = True


class _GuidedClamp(torch.autograd.Function):
    """ReLU (or ReLU6) whose backward passes only positive gradients where the input is in the open range (as a
    plain ReLU's while its switch is off)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, inplace: bool, switch: GuidedSwitch) -> torch.Tensor:
        ctx.upper, ctx.switch = upper, switch
        out = _clamp(ctx, x, upper, inplace)
        # The output is in the open range exactly where the input is, so saving it lets the clamp run in place.
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (out,) = ctx.saved_tensors
        passed = grad_output.clamp_min(0) if ctx.switch.guided else grad_output
        # ReLU's and ReLU6's own backward kernels zero the gradient outside (0, upper) in one fused
        # pass, twice as fast as building a mask and multiplying.
        if ctx.upper is None:
            return torch.ops.aten.threshold_backward(passed, out, 0), None, None, None
        return torch.ops.aten.hardtanh_backward(passed, out, 0.0, ctx.upper), None, None, None


class _DeconvClamp(torch.autograd.Function):
    """ReLU (or ReLU6) whose backward passes the positive part of the incoming gradient, whatever the input was
    (Zeiler and Fergus's deconvnet: the reconstruction is rectified, not gated by the forward pass)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, inplace: bool) -> torch.Tensor:
        return _clamp(ctx, x, upper, inplace)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad_output.clamp_min(0), None, None


Clamp = Callable[[torch.Tensor, "float | None", bool], torch.Tensor]
"""clamp(input, upper bound or None, in place): a ReLU (or ReLU6) forward with its own backward."""


@contextlib.contextmanager
def guided_relus(model: nn.Module, relu6: bool = True, switch: GuidedSwitch | None = None) -> Iterator[None]:
    """While active, every ReLU (and, with `relu6`, every nn.ReLU6 of `model`) backpropagates guided (while
    `switch`, if given, is on)."""
    switch = switch or GuidedSwitch()
    with relus_backpropagating(model, lambda x, upper, inplace: _GuidedClamp.apply(x, upper, inplace, switch),
                               relu6):
        yield


@contextlib.contextmanager
def relus_backpropagating(model: nn.Module, clamp: Clamp, relu6: bool = True) -> Iterator[None]:
    """While active, every ReLU (and, with `relu6`, every nn.ReLU6 of `model`) runs as `clamp`.

    nn.ReLU modules call torch.nn.functional.relu, and some networks call it directly (torchvision's
    googlenet and densenet), so patching that one function covers both, including a module reused
    several times (torchvision's resnet blocks). The patch is process-wide while the block runs; a call with
    inplace=True clamps in place, as the ReLU it replaces. nn.ReLU6 modules get the rule through a forward hook
    that replaces their output, with their own clamp out of place for the block.
    """
    original = F.relu

    def patched_relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return clamp(input, None, inplace)

    def patched_relu6(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
                      ) -> torch.Tensor:
        assert isinstance(module, nn.ReLU6)  # the hook is registered on ReLU6 modules only
        return clamp(inputs[0], float(module.max_val), False)

    relu6_modules = [m for m in model.modules() if relu6 and isinstance(m, nn.ReLU6)]
    # The hook replaces the module's output, so the module's own clamp must not run in place: its backward would
    # then gate the gradient too (harmless for the guided rule, wrong for the deconvnet's, which must not gate).
    in_place = [m for m in relu6_modules if m.inplace]
    for m in in_place:
        m.inplace = False
    # First among the module's hooks, so a hook that captures the layer's output (a CAM's) sees the rule's.
    handles = [m.register_forward_hook(patched_relu6, prepend=True) for m in relu6_modules]
    F.relu = patched_relu
    try:
        yield
    finally:
        F.relu = original
        for handle in handles:
            handle.remove()
        for m in in_place:
            m.inplace = True


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
        """Guided gradient [N,3,H,W] scaled by Grad-CAM of `layer`, normalised and upsampled.

        One forward pass through guided ReLUs (their forward is ReLU's) serves both backward passes: Grad-CAM's to
        the layer with the guidance switched off, then the guided one to the input.
        """
        layer = layer_or_default(model, layer, self.name)
        switch = GuidedSwitch()
        with (frozen_model(model, keep_inplace=True),
              layer_handed_on_as_copy(model, layer, self.name, leaf=False) as capture,
              guided_relus(model, self.params["relu6"], switch), torch.enable_grad()):
            x = fast_layout(images.detach()).requires_grad_(True)
            logits = model(x)
            activation = capture.spatial(layer, self.name)
            targets = choose_targets(logits, targets)
            # Images are independent in eval mode, so the gradient of the summed scores is per-image.
            score = logits.gather(1, targets[:, None]).sum()
            switch.guided = False
            (layer_grad,) = torch.autograd.grad(score, activation, retain_graph=True, allow_unused=True)
            if layer_grad is None:
                raise LayerError(f"the class scores do not depend on layer {layer!r}; pick a layer on the path "
                                 "to the classifier")
            switch.guided = True
            (guided,) = torch.autograd.grad(score, x)
        cam = to_image_maps(torch.relu(GradCAM.combine(activation.detach(), layer_grad).sum(1)),
                            tuple(images.shape[-2:]))
        return PixelAttribution(guided * cam[:, None].to(guided.dtype), targets, logits.detach())


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


@register
class Deconvolution(GradientMethod):
    """Deconvnet (Zeiler and Fergus 2014): the input gradient with every ReLU's backward passing the positive
    part of the incoming gradient, whatever the ReLU's input was."""

    name = "deconvolution"
    Params = GuidedParams

    def runs_on_torchscript(self) -> bool:
        """No: the ReLUs of the Python model are patched."""
        return False

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """The deconvnet's reconstruction [N,3,H,W] of the target score (signed)."""
        with relus_backpropagating(model, _DeconvClamp.apply, self.params["relu6"]):
            grad, logits, targets = input_gradient(model, images, targets)
        return PixelAttribution(grad, targets, logits)


SALIENCY_GRADIENTS = ("vanilla", "guided")


@dataclass(frozen=True)
class SignedSaliencyParams(ReductionParams):
    """Parameters of the positive and negative saliency maps."""

    gradient: str = param("vanilla", "the gradient split by its sign: vanilla (d score / d input) or guided "
                          "(guided backprop, as pytorch-cnn-visualizations applies it)", choices=SALIENCY_GRADIENTS)


class _SignedSaliency(GradientMethod):
    """One sign of the input gradient, divided by the gradient's extreme value of that sign over the whole image
    (pytorch-cnn-visualizations' get_positive_negative_saliency)."""

    Params = SignedSaliencyParams
    sign: ClassVar[float] = 1.0

    def runs_on_torchscript(self) -> bool:
        """Only on the vanilla gradient: guided ReLUs patch the Python model."""
        return self.params["gradient"] == "vanilla"

    def maps_are_signed(self) -> bool:
        """Never: the attribution is one sign's magnitude."""
        return False

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """max(0, sign * g) / max(sign * g) per image [N,3,H,W] in [0,1]; 0 where g has no value of that sign."""
        with guided_relus(model) if self.params["gradient"] == "guided" else contextlib.nullcontext():
            grad, logits, targets = input_gradient(model, images, targets)
        part = (self.sign * grad).clamp_min(0)
        peak = part.amax(dim=(1, 2, 3), keepdim=True)
        # The original divides by a peak <= 0 too (inf or a sign flip); no value of that sign is a zero map here.
        return PixelAttribution(part / torch.where(peak > 0, peak, 1.0), targets, logits)


@register
class PositiveSaliency(_SignedSaliency):
    """Positive saliency: max(0, g) / max(g) of the input gradient g (pytorch-cnn-visualizations)."""

    name = "positive_saliency"
    sign = 1.0


@register
class NegativeSaliency(_SignedSaliency):
    """Negative saliency: max(0, -g) / -min(g) of the input gradient g (pytorch-cnn-visualizations)."""

    name = "negative_saliency"
    sign = -1.0


class ChannelGradient(NamedTuple):
    """The guided gradient of one channel's activation per image, and the channels it was taken of."""

    grad: torch.Tensor  # [N,3,H,W]
    channels: torch.Tensor  # [N], the backpropagated channel of each image
    logits: torch.Tensor  # [N,K]
    targets: torch.Tensor  # [N]


@register
class LayerGuidedBackprop(GradientMethod):
    """Guided backpropagation of one channel of a layer (pytorch-cnn-visualizations'
    layer_activation_with_guided_backprop): the guided gradient of sum |A_k| over the channel's positions."""

    name = "layer_guided_backprop"
    uses_layer = True

    @dataclass(frozen=True)
    class Params(GuidedParams):
        channel: int = param(-1, "channel k of the layer whose summed |activation| is backpropagated; -1: each "
                             "image's most active channel (the largest sum of |A_k|)", minimum=-1)

    def runs_on_torchscript(self) -> bool:
        """No: it reads a layer and guides the Python model's ReLUs."""
        return False

    def channel_gradient(self, model: nn.Module, layer: str | None, images: torch.Tensor,
                         targets: torch.Tensor | None) -> ChannelGradient:
        """The guided gradient [N,3,H,W] of sum |A_k| for `channel` k (or each image's most active one)."""
        layer = layer_or_default(model, layer, self.name)
        with (frozen_model(model, keep_inplace=True),
              layer_handed_on_as_copy(model, layer, self.name, leaf=False) as capture,
              guided_relus(model, self.params["relu6"]), torch.enable_grad()):
            x = fast_layout(images.detach()).requires_grad_(True)
            logits = model(x)
            activation = capture.spatial(layer, self.name)
            targets = choose_targets(logits, targets)
            strength = activation.abs().sum(dim=(2, 3))  # [N,C]
            channel = self.params["channel"]
            if channel >= strength.shape[1]:
                raise LayerError(f"method {self.name!r}: layer {layer!r} has {strength.shape[1]} channels, so channel "
                                 f"{channel} does not exist; pick one of 0..{strength.shape[1] - 1} or -1 (each "
                                 "image's most active channel)")
            channels = (strength.detach().argmax(1) if channel < 0
                        else torch.full_like(targets, channel))
            # Images are independent in eval mode, so the gradient of the summed objectives is per-image.
            (grad,) = torch.autograd.grad(strength.gather(1, channels[:, None]).sum(), x)
        return ChannelGradient(grad, channels, logits.detach(), targets)

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Guided gradient [N,3,H,W] of the channel's summed |activation| (signed); `targets` are checked and
        returned but do not change it."""
        grad, _, logits, targets = self.channel_gradient(model, layer, images, targets)
        return PixelAttribution(grad, targets, logits)

    def _explain(self, model, layer, images, targets) -> Attribution:
        grad, channels, logits, targets = self.channel_gradient(model, layer, images, targets)
        return Attribution(self.reduce(grad).float(), targets, logits.argmax(1), extras={"channel": channels})


RESCALE_EPS = 1e-10
"""Where |x - x0| is below this, a nonlinearity passes its plain gradient instead of DeepLIFT's multiplier
(captum's DeepLift default), where the quotient would be 0/0."""


class _RescaleReLU(torch.autograd.Function):
    """ReLU whose backward passes DeepLIFT's multiplier (relu(x) - relu(x0)) / (x - x0) to the images' rows.

    The tensor holds the images' rows first (`n` of them) and then their references (one shared row or one per
    image); the references get no gradient: they only say where each unit stood at the baseline.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, n: int) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.n = n
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        x, x0 = z[:ctx.n], z[ctx.n:]
        grad = grad_output[:ctx.n]
        delta_in = x - x0
        plain = torch.ops.aten.threshold_backward(grad, x, 0)
        rescaled = torch.where(delta_in.abs() < RESCALE_EPS, plain,
                               grad * (x.clamp_min(0) - x0.clamp_min(0)) / delta_in)
        return torch.cat([rescaled, torch.zeros_like(x0)]), None


class _RescaleElementwise(torch.autograd.Function):
    """An elementwise activation module's output whose backward passes (f(x) - f(x0)) / (x - x0)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, output: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor],
                n: int) -> torch.Tensor:
        ctx.save_for_backward(z, output)
        ctx.function, ctx.n = function, n
        return output.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        z, output = ctx.saved_tensors
        x, x0 = z[:ctx.n], z[ctx.n:]
        grad = grad_output[:ctx.n]
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (plain,) = torch.autograd.grad(ctx.function(leaf), leaf, grad)
        delta_in = x - x0
        rescaled = torch.where(delta_in.abs() < RESCALE_EPS, plain,
                               grad * (output[:ctx.n] - output[ctx.n:]) / delta_in)
        return torch.cat([rescaled, torch.zeros_like(x0)]), None, None, None


class _RescaleMaxPool(torch.autograd.Function):
    """2-D max pooling whose backward gives each window's output difference y - y0 to one input position.

    Where the image's maximum is at least the reference's, the image's part max(y, y0) - y0 goes to the image's
    argmax; the rest, y - max(y, y0), to the reference's argmax (captum's DeepLift rule); each position's multiplier
    is what it received over x - x0, so the window's contributions add up to y - y0. Positions that receive from
    several overlapping windows add them up, as the pooling's gradient does.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, pool: tuple, n: int) -> torch.Tensor:
        output, indices = torch.ops.aten.max_pool2d_with_indices(z, *pool)
        ctx.save_for_backward(z, output, indices)
        ctx.pool, ctx.n = pool, n
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        z, output, indices = ctx.saved_tensors
        n = ctx.n
        x, x0 = z[:n], z[n:]
        grad, y, y0 = grad_output[:n], output[:n], output[n:]
        image_argmax, reference_argmax = indices[:n], indices[n:].expand_as(y).contiguous()

        def unpool(values: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
            return torch.ops.aten.max_pool2d_with_indices_backward(values, x, *ctx.pool, argmax)

        top = torch.maximum(y, y0)
        moved = unpool(grad * (top - y0), image_argmax) + unpool(grad * (y - top), reference_argmax)
        delta_in = x - x0
        rescaled = torch.where(delta_in.abs() < RESCALE_EPS, unpool(grad, image_argmax), moved / delta_in)
        return torch.cat([rescaled, torch.zeros_like(x0)]), None, None


RESCALED_MODULES = (nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SiLU,
                    nn.GELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid)
"""Elementwise activation modules DeepLIFT rescales (nn.ReLU6 is a Hardtanh; nn.ReLU goes through F.relu)."""


@contextlib.contextmanager
def rescale_rules(model: nn.Module, images: int, rows: int) -> Iterator[None]:
    """While active, `model`'s ReLUs, max poolings and elementwise activations backpropagate DeepLIFT's Rescale
    multipliers on batches of `rows` rows: `images` images followed by their references.

    As for guided ReLUs, torch.nn.functional.relu and max_pool2d are patched process-wide (module and functional
    calls alike, reused modules included) and activation modules (RESCALED_MODULES) get a forward hook. A call on a
    tensor that does not hold the batch's rows first runs unchanged.
    """
    original_relu, original_max_pool2d = F.relu, F.max_pool2d

    def holds_rows(tensor: torch.Tensor) -> bool:
        return tensor.ndim > 0 and tensor.shape[0] == rows

    def rescale_relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return _RescaleReLU.apply(input, images) if holds_rows(input) else original_relu(input, inplace)

    def rescale_max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                           ceil_mode: bool = False, return_indices: bool = False):
        if return_indices or input.ndim != 4 or not holds_rows(input):
            # Typed loosely: return_indices passes through, and the overloads of max_pool2d split on its value.
            unchanged: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = original_max_pool2d
            return unchanged(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                       return_indices=return_indices)
        pool = (list(_pair(kernel_size)), list(_pair(stride if stride else kernel_size)), list(_pair(padding)),
                list(_pair(dilation)), bool(ceil_mode))
        return _RescaleMaxPool.apply(input, pool, images)

    def rescale_module(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
        z = inputs[0] if inputs else None
        if not (isinstance(z, torch.Tensor) and isinstance(output, torch.Tensor) and holds_rows(z)
                and output.shape == z.shape):
            return None
        return _RescaleElementwise.apply(z, output, module.forward, images)

    handles = [m.register_forward_hook(rescale_module) for m in model.modules() if isinstance(m, RESCALED_MODULES)]
    F.relu, F.max_pool2d = rescale_relu, rescale_max_pool2d
    try:
        yield
    finally:
        F.relu, F.max_pool2d = original_relu, original_max_pool2d
        for handle in handles:
            handle.remove()


DEEPLIFT_BASELINES = ("zero", "black", "mean", "blur")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of [N,C,H,W] blurred by a Gaussian of std `sigma` pixels (truncated at 3 sigma, edges
    replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    across = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(across, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class Decomposition(NamedTuple):
    """DeepLIFT's attribution with the scores it decomposes."""

    values: torch.Tensor  # [N,3,H,W], summing to scores - reference_scores
    targets: torch.Tensor  # [N]
    logits: torch.Tensor  # [N,K] of the images
    reference_scores: torch.Tensor  # [N], the target's score at each image's reference


@register
class DeepLIFT(GradientMethod):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017): (x - x0) times multipliers that replace each
    nonlinearity's derivative by (f(x) - f(x0)) / (x - x0), so the attributions add up to f(x) - f(x0)."""

    name = "deeplift"

    @dataclass(frozen=True)
    class Params:
        baseline: str = param("zero", "reference x0: zeros in input space, black pixels, each image's mean colour, "
                              "or the image blurred", choices=DEEPLIFT_BASELINES)
        blur_sigma: float = param(10.0, "std in pixels of the Gaussian blur of the 'blur' baseline",
                                  exclusive_minimum=0)
        # The signed sum keeps summation-to-delta: the map's total is the attributions' total.
        channel_reduction: str = param("signed_sum", REDUCTION_HELP, choices=CHANNEL_REDUCTIONS)

    def runs_on_torchscript(self) -> bool:
        """No: the nonlinearities of the Python model are patched."""
        return False

    def references(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The references x0: [1,3,H,W] shared by every image ('zero', 'black') or [N,3,H,W] ('mean', 'blur')."""
        how = self.params["baseline"]
        if how == "zero":
            return torch.zeros_like(images[:1])
        if how == "black":
            return preprocessing_of(model).normalize(torch.zeros_like(images[:1]))
        if how == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        return gaussian_blur(images, self.params["blur_sigma"])

    def decompose(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None) -> Decomposition:
        """One forward pass of the images and their references together, one backward pass of the images' scores."""
        references = self.references(model, images).to(images.dtype)
        n = images.shape[0]
        with frozen_model(model), rescale_rules(model, n, n + len(references)), torch.enable_grad():
            x = fast_layout(images.detach()).requires_grad_(True)
            logits = model(torch.cat([x, fast_layout(references)]))
            targets = choose_targets(logits[:n], targets)
            # Images are independent in eval mode, so the gradient of the summed scores is per-image.
            (multipliers,) = torch.autograd.grad(logits[:n].gather(1, targets[:, None]).sum(), x)
        logits = logits.detach()
        reference_scores = logits[n:].expand(n, -1).gather(1, targets[:, None])[:, 0]  # a shared row: n copies
        return Decomposition((images - references) * multipliers, targets, logits[:n], reference_scores)

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Signed attribution [N,3,H,W] whose sum is f(x) - f(x0) per image."""
        values, targets, logits, _ = self.decompose(model, images, targets)
        return PixelAttribution(values, targets, logits)

    def _explain(self, model, layer, images, targets) -> Attribution:
        values, targets, logits, reference_scores = self.decompose(model, images, targets)
        gap = values.sum(dim=(1, 2, 3)) - (logits.gather(1, targets[:, None])[:, 0] - reference_scores)
        return Attribution(self.reduce(values).float(), targets, logits.argmax(1),
                           extras={"completeness_gap": gap.float()})


SHAP_BASELINES = ("uniform", "zero", "black")


class ShapDraws(NamedTuple):
    """GradientSHAP's random draws, shared by every image."""

    baselines: torch.Tensor  # [S,3,H,W] in input space
    alphas: torch.Tensor  # [S], the point of each sample on its path
    noise: torch.Tensor  # [S,3,H,W], added to the image (already scaled by `stdev`)


@register
class GradientSHAP(GradientMethod):
    """GradientSHAP (Lundberg and Lee 2017, captum's GradientShap): the mean over samples of (x + e - b) times
    the gradient at b + a (x + e - b), with b drawn from a baseline distribution, a ~ U(0,1), e ~ N(0, stdev^2)."""

    name = "gradient_shap"

    @dataclass(frozen=True)
    class Params:
        baseline: str = param("uniform", "distribution of the baselines b: uniform random pixels, or always zeros in "
                              "input space, or always black pixels", choices=SHAP_BASELINES)
        samples: int = param(16, "samples (baseline, point on the path, noise) per image", minimum=1)
        stdev: float = param(0.0, "std of the Gaussian noise added to the image in each sample, in the model's "
                             "input space (captum's stdevs)", minimum=0)
        seed: int = param(0, "seed of the draws")
        batch_size: int = param(64, "samples per backward pass (samples times images)", minimum=1)
        # The signed sum keeps completeness in expectation: the map's total estimates f(x) - E[f(b)].
        channel_reduction: str = param("signed_sum", REDUCTION_HELP, choices=CHANNEL_REDUCTIONS)

    def draws(self, model: nn.Module, images: torch.Tensor) -> ShapDraws:
        """The `samples` draws from `seed`, shared by every image of any batch, so an image's map does not depend on
        its batch. They are drawn on the CPU, so every device gets the same ones."""
        samples, shape = self.params["samples"], (self.params["samples"], *images.shape[1:])
        generator = torch.Generator().manual_seed(self.params["seed"])
        alphas = torch.rand(samples, generator=generator)
        pixels = torch.rand(shape, generator=generator)
        noise = torch.randn(shape, generator=generator) * self.params["stdev"]
        if self.params["baseline"] == "zero":
            baselines = torch.zeros(shape)
        else:
            baselines = preprocessing_of(model).normalize(pixels if self.params["baseline"] == "uniform"
                                                          else torch.zeros(shape))
        return ShapDraws(*(t.to(images.device, images.dtype) for t in (baselines, alphas, noise)))

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Signed attribution [N,3,H,W] whose sum estimates f(x) - E[f(b)] (with stdev 0)."""
        logits = unperturbed_logits(model, images)
        targets = choose_targets(logits, targets)
        baselines, alphas, noise = self.draws(model, images)
        n = images.shape[0]
        per_pass = max(1, self.params["batch_size"] // max(n, 1))
        total = torch.zeros_like(images)
        for start in range(0, len(alphas), per_pass):
            chunk = slice(start, start + per_pass)
            delta = images[:, None] + noise[None, chunk] - baselines[None, chunk]  # [N,s,3,H,W]
            points = baselines[None, chunk] + alphas[None, chunk, None, None, None] * delta
            s = delta.shape[1]
            grad = input_gradient(model, points.flatten(0, 1), targets.repeat_interleave(s)).grad
            total += (delta * grad.view_as(delta)).sum(1)
        return PixelAttribution(total / len(alphas), targets, logits)


FULLGRAD_NORMALIZATIONS = ("channel", "layer")


class BiasLayer(NamedTuple):
    """A layer whose output carries a bias per channel."""

    name: str
    module: nn.Module
    bias: torch.Tensor  # [C]


def bias_layers(model: nn.Module) -> list[BiasLayer]:
    """Every nn.Conv2d with a bias and every nn.BatchNorm2d, with its bias: in eval mode a batch norm is
    y = g (x - m) / s + b, whose bias is b - g m / s (also without affine parameters, g = 1 and b = 0)."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            layers.append(BiasLayer(name, module, module.bias.detach()))
        elif isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None or module.running_var is None:
                raise LayerError(f"method 'fullgrad': batch norm {name!r} keeps no running statistics, so in eval "
                                 "mode it normalises with each batch's own and has no fixed bias; use a model whose "
                                 "batch norms track running statistics, or another gradient method")
            scale = torch.rsqrt(module.running_var + module.eps)
            if module.weight is not None:
                scale = scale * module.weight.detach()
            shift = module.bias.detach() if module.bias is not None else torch.zeros_like(scale)
            layers.append(BiasLayer(name, module, shift - module.running_mean * scale))
    return layers


@register
class FullGrad(GradientMethod):
    """FullGrad (Srinivas and Fleuret 2019): psi(|x * d y / d x|) plus, for every conv and batch-norm layer, the
    sum over its channels of psi(|b_c * d y / d z_c|), psi min-max rescaling and upsampling to the input."""

    name = "fullgrad"

    @dataclass(frozen=True)
    class Params:
        normalize: str = param("channel", "what psi rescales to [0,1] on its own: every channel map (the paper's "
                               "equation and pytorch-grad-cam) or each layer's (and the input term's) maps together "
                               "(the authors' code)", choices=FULLGRAD_NORMALIZATIONS)

    def runs_on_torchscript(self) -> bool:
        """No: it reads every bias layer of the Python model."""
        return False

    def reduction(self) -> str:
        """The channel sum: the map is the sum of the rescaled terms."""
        return "signed_sum"

    def maps_are_signed(self) -> bool:
        """Never: every term is rescaled to [0,1]."""
        return False

    def rescaled(self, terms: torch.Tensor) -> torch.Tensor:
        """psi's rescaling of |terms| [N,C,h,w] to [0,1]: per channel or per image (`normalize`)."""
        n, c, h, w = terms.shape
        per = (n * c, h, w) if self.params["normalize"] == "channel" else (n, c * h, w)
        return normalize_maps(terms.abs().reshape(per)).view(n, c, h, w)

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """The input term [N,3,H,W] plus the bias terms' map spread evenly over the channels (so the channel sum
        is the FullGrad map)."""
        layers = bias_layers(model)
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        grads: dict[int, torch.Tensor] = {}

        def keep_output(bias: torch.Tensor) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                index = len(outputs)
                outputs.append((output, bias))
                # A tensor hook receives the gradient of the value it was registered on, even where an in-place
                # op (densenet's F.relu(inplace=True) after its last norm) changes the tensor afterwards.
                output.register_hook(lambda grad: grads.__setitem__(index, grad))
            return hook

        handles = [module.register_forward_hook(keep_output(bias)) for _, module, bias in layers]
        try:
            grad, logits, targets = input_gradient(model, images, targets)
        finally:
            for handle in handles:
                handle.remove()
        size = (images.shape[-2], images.shape[-1])
        bias_map = torch.zeros(images.shape[0], *size, device=images.device, dtype=torch.float32)
        for index, (_, bias) in enumerate(outputs):
            if index in grads:  # a layer the score does not depend on has no gradient and no term
                # Rescaling per channel then summing is linear in the upsampling, so one upsampling per layer.
                channel_sum = self.rescaled(grads[index] * bias.to(grads[index].dtype)[None, :, None, None]).sum(1)
                bias_map += upsample_maps(channel_sum, size)
        values = self.rescaled(grad * images) + (bias_map / images.shape[1])[:, None].to(images.dtype)
        return PixelAttribution(values, targets, logits)
