"""The CAM family: maps of a spatial layer's channels, weighted by the head, gradients or scores."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from vislib.errors import LayerError
from vislib.methods import split
from vislib.methods.base import (
    PRECISIONS,
    Attribution,
    AttributionMethod,
    choose_targets,
    fast_layout,
    forward_scores,
    register,
)
from vislib.methods.hooks import LayerCapture, capture_layer, frozen_model
from vislib.methods.postprocess import normalize_maps, upsample_maps
from vislib.models.layout import CHANNELS_FIRST, layer_layout
from vislib.models.registry import resolve_layer
from vislib.params import param


def layer_or_default(model: nn.Module, layer: str | None, method: str) -> str:
    """`layer`, or the model's default layer when `layer` is None or empty."""
    if layer:
        return layer
    default = getattr(model, "vislib_default_layer", "")
    if not default:
        raise LayerError(
            f"method {method!r} needs a layer and the model names no default one; pass a spatial "
            "layer (vislib.models.spatial_layer_names lists them)"
        )
    return default


@contextlib.contextmanager
def layer_handed_on_as_copy(model: nn.Module, layer: str, method: str, leaf: bool) -> Iterator[LayerCapture]:
    """Capture `layer`'s output as its [N,C,h,w] grid and hand the network after it a copy, so an in-place op there
    (an in-place ReLU, densenet's F.relu(features, inplace=True)) leaves the capture alone. With `leaf`, the capture
    is a graph leaf, so a backward pass stops at the layer; without, gradients flow through it to the input."""
    module = resolve_layer(model, layer)
    capture = LayerCapture()

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"method {method!r} needs a layer that outputs a tensor, but {layer!r} outputs "
                f"{type(output).__name__}; pick a layer with a feature map or tokens"
            )
        # The capture is the layer's grid as [N,C,h,w] (tokens and channels-last maps converted), so the gradient
        # with respect to it is the map's gradient.
        layout = layer_layout(model, layer, output) or CHANNELS_FIRST
        spatial = layout.to_spatial(output)
        capture.activation = spatial.detach().requires_grad_(True) if leaf else spatial
        return layout.from_spatial(capture.activation, output)

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


class LayerGradient(NamedTuple):
    """A layer's activation and the gradient of the explained scores with respect to it."""

    activation: torch.Tensor  # [N,C,h,w]
    grad: torch.Tensor  # d score_target / d activation, [N,C,h,w]
    logits: torch.Tensor  # [N,K]
    targets: torch.Tensor  # [N], the explained classes


def layer_activation_and_grad(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor | None,
                              method: str) -> LayerGradient:
    """Activation of `layer` and d score_target / dA in one forward/backward (targets None: predicted)."""
    with (frozen_model(model, keep_inplace=True), layer_handed_on_as_copy(model, layer, method, leaf=True) as capture,
          torch.enable_grad()):
        logits = model(fast_layout(images.detach()))
        activation = capture.spatial(layer, method)
        targets = choose_targets(logits, targets)
        # Images are independent in eval mode, so the gradient of the summed scores is per-image.
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation, allow_unused=True)
    if grad is None:
        raise LayerError(f"the class scores do not depend on layer {layer!r}; pick a layer on the path "
                         "to the classifier")
    return LayerGradient(activation.detach(), grad.detach(), logits.detach(), targets)


@dataclass(frozen=True)
class CAMParams:
    """The options every CAM takes, as pytorch-grad-cam defines its `aug_smooth` and `eigen_smooth`."""

    aug_smooth: bool = param(False, "average the maps of 6 test-time augmentations (horizontal flip x the input "
                             "scaled by 0.9, 1.0, 1.1), each min-max normalised and flipped back: 6x the passes")
    eigen_smooth: bool = param(False, "the map is the weighted activations' projection on their first principal "
                               "component over positions (sign: agreeing with their channel sum) instead of "
                               "that sum")


class WeightedActivations(NamedTuple):
    """A CAM before its channel sum: the layer's activation times the method's weights."""

    weighted: torch.Tensor  # [N,C,h,w]
    targets: torch.Tensor  # [N], the explained classes
    logits: torch.Tensor  # [N,K] of the unperturbed images


def first_component(weighted: torch.Tensor) -> torch.Tensor:
    """Projection [N,h,w] of each image's positions (rows of C values) on their first principal component.

    pytorch-grad-cam's `eigen_smooth`, batched. The SVD fixes the component only up to its sign, so the
    sign is chosen to agree with the plain channel sum (positive correlation), which keeps the map pointing
    where the CAM itself does instead of wherever the solver's sign convention lands.
    """
    n, c, h, w = weighted.shape
    rows = weighted.flatten(2).transpose(1, 2).double()  # [N,hw,C]
    centered = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projection = (centered @ vh[:, 0, :, None])[..., 0]  # [N,hw]
    channel_sum = rows.sum(2)
    agreement = ((projection - projection.mean(1, keepdim=True))
                 * (channel_sum - channel_sum.mean(1, keepdim=True))).sum(1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    return projection.view(n, h, w).to(weighted.dtype)


AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))
"""pytorch-grad-cam's default test-time augmentations: horizontal flip or not, times the input scaled by a factor."""


def augmentation_smoothed(explain: Callable[[torch.Tensor, torch.Tensor | None], Attribution], images: torch.Tensor,
                          targets: torch.Tensor | None) -> Attribution:
    """The mean of `explain`'s min-max normalised maps over AUGMENTATIONS, each flipped back.

    The unaugmented pass runs first and fixes the targets (None: its predicted classes) for the others,
    so every augmentation explains the same class.
    """
    plain = explain(images, targets)
    total = normalize_maps(plain.maps)
    for flip, factor in AUGMENTATIONS:
        if not flip and factor == 1.0:
            continue
        augmented = images.flip(-1) if flip else images
        maps = normalize_maps(explain(augmented * factor, plain.targets).maps)
        total = total + (maps.flip(-1) if flip else maps)
    return Attribution(total / len(AUGMENTATIONS), plain.targets, plain.predicted)


class CAMMethod(AttributionMethod):
    """A class activation map: ReLU of a layer's activation, weighted per channel (or position) and summed
    over channels; every CAM takes `aug_smooth` and `eigen_smooth` (CAMParams)."""

    Params = CAMParams

    @abstractmethod
    def weighted_activations(self, model: nn.Module, layer: str, images: torch.Tensor,
                             targets: torch.Tensor | None) -> WeightedActivations:
        """The activation of `layer` times the method's weights, for a checked batch."""

    def channel_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        """The map before its ReLU, [N,h,w], from the weighted activations."""
        return weighted.sum(1)

    def _maps(self, model: nn.Module, layer: str, images: torch.Tensor,
              targets: torch.Tensor | None) -> Attribution:
        weighted, targets, logits = self.weighted_activations(model, layer, images, targets)
        cam = first_component(weighted) if self.params["eigen_smooth"] else self.channel_sum(weighted)
        return Attribution(torch.relu(cam).float(), targets, logits.argmax(1))

    def _explain(self, model, layer, images, targets) -> Attribution:
        layer = layer_or_default(model, layer, self.name)
        if self.params["aug_smooth"]:
            return augmentation_smoothed(lambda x, t: self._maps(model, layer, x, t), images, targets)
        return self._maps(model, layer, images, targets)


class _GradientWeightedCAM(CAMMethod):
    """A CAM computed from one forward/backward pass: a per-method mix of activations and gradients."""

    @staticmethod
    @abstractmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Weighted activations [N,C,h,w] from the layer activation and its gradient, both [N,C,h,w]."""

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        activation, grad, logits, targets = layer_activation_and_grad(model, layer, images, targets, self.name)
        return WeightedActivations(self.combine(activation, grad), targets, logits)


@register
class GradCAM(_GradientWeightedCAM):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean(dy/dA_k) A_k)."""

    name = "gradcam"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The activation weighted by the spatial mean of its gradient."""
        return grad.mean(dim=(2, 3), keepdim=True) * activation


@register
class GradCAMPlusPlus(_GradientWeightedCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): channel weights from higher-order gradient terms."""

    name = "gradcampp"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The activation weighted by sum_ij alpha_ij ReLU(dy/dA_ij) (eq. 19 of the paper)."""
        grad2 = grad.pow(2)
        grad3 = grad2 * grad
        activation_sum = activation.sum(dim=(2, 3), keepdim=True)
        # The small constant keeps alpha finite where the gradient vanishes, as the reference code does.
        alpha = grad2 / (2 * grad2 + activation_sum * grad3 + 1e-6)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(grad) * alpha).sum(dim=(2, 3), keepdim=True) * activation


@register
class LayerCAM(_GradientWeightedCAM):
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(dy/dA_k) * A_k), weights per position."""

    name = "layercam"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The activation weighted position-wise by its positive gradient."""
        return torch.relu(grad) * activation


@register
class HiResCAM(_GradientWeightedCAM):
    """HiResCAM (Draelos & Carin 2020): ReLU(sum_k dy/dA_k * A_k), the gradient times the activation per position."""

    name = "hirescam"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The activation weighted position-wise by its gradient."""
        return grad * activation


XGRADCAM_EPS = 1e-7
"""Added to each channel's activation sum, as pytorch-grad-cam does (torchcam adds 1e-8)."""


@register
class XGradCAM(_GradientWeightedCAM):
    """XGrad-CAM (Fu et al. 2020): channel weights sum_ij(dy/dA_kij * A_kij) / sum_ij A_kij."""

    name = "xgradcam"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The activation weighted by its gradient's mean under the channel's own activation distribution."""
        activation_sum = activation.sum(dim=(2, 3), keepdim=True)
        weights = (grad * activation).sum(dim=(2, 3), keepdim=True) / (activation_sum + XGRADCAM_EPS)
        return weights * activation


@register
class GradCAMElementWise(_GradientWeightedCAM):
    """Element-wise Grad-CAM (pytorch-grad-cam's GradCAMElementWise): ReLU(sum_k ReLU(dy/dA_k * A_k))."""

    name = "gradcam_elementwise"

    @staticmethod
    def combine(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The positive part of the gradient times the activation, per position."""
        return torch.relu(grad * activation)


class _FirstComponentCAM(CAMMethod):
    """A CAM whose map is always the first principal component of its weighted activations, so `eigen_smooth`
    computes the same map."""

    def channel_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        """The first principal component over positions (sign: agreeing with the channel sum)."""
        return first_component(weighted)


@register
class EigenCAM(_FirstComponentCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the layer's activation; forward
    pass only, the same map for every class."""

    name = "eigencam"

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        with frozen_model(model, keep_inplace=True), capture_layer(model, layer) as capture, torch.no_grad():
            logits = model(fast_layout(images))
        activation = capture.spatial(layer, self.name)
        return WeightedActivations(activation, choose_targets(logits, targets), logits)


@register
class EigenGradCAM(_FirstComponentCAM, HiResCAM):
    """EigenGrad-CAM (pytorch-grad-cam's EigenGradCAM): the first principal component of dy/dA * A, HiResCAM's
    terms before their sum."""

    name = "eigengradcam"


SMOOTH_GRADCAMPP_EPS = 1e-8
"""Added to the denominator of alpha, as torchcam does."""


@register
class SmoothGradCAMPlusPlus(CAMMethod):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with the gradient's powers averaged over noisy inputs."""

    name = "smoothgradcampp"

    @dataclass(frozen=True)
    class Params(CAMParams):
        samples: int = param(4, "noisy copies of each image", minimum=1)
        noise_std: float = param(0.3, "standard deviation of the Gaussian noise added to the model's input "
                                 "(after its normalisation), as torchcam's std", minimum=0)
        seed: int = param(0, "seed of the noise, shared by every image")
        batch_size: int = param(32, "noisy images per forward/backward pass", minimum=1)

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise [samples,3,H,W] from `seed`, shared by every image of any batch.

        Sharing one draw makes an image's map independent of which images share its batch; drawing it on the
        CPU makes it independent of the device too.
        """
        generator = torch.Generator().manual_seed(self.params["seed"])
        noise = torch.randn((self.params["samples"], *images.shape[1:]), generator=generator)
        return noise.to(images.device, images.dtype)

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        with frozen_model(model, keep_inplace=True), capture_layer(model, layer) as capture, torch.no_grad():
            logits = model(fast_layout(images))
        activation = capture.spatial(layer, self.name).detach()
        targets = choose_targets(logits, targets)
        mean_grad, mean_grad2, mean_grad3 = self._mean_gradient_powers(model, layer, images, targets, activation)
        # Grad-CAM++'s alpha (eq. 19 of its paper) with each power of the gradient averaged over the noisy copies,
        # the numerator being the mean second power (torchcam's correction of the paper's first power).
        activation_sum = activation.sum(dim=(2, 3), keepdim=True)
        alpha = mean_grad2 / (2 * mean_grad2 + activation_sum * mean_grad3 + SMOOTH_GRADCAMPP_EPS)
        weights = (alpha * torch.relu(mean_grad)).sum(dim=(2, 3), keepdim=True)
        return WeightedActivations(weights * activation, targets, logits)

    def _mean_gradient_powers(self, model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor,
                              activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means over the noisy copies of dy/dA, (dy/dA)^2 and (dy/dA)^3, each shaped as `activation` [N,C,h,w]."""
        n, samples = images.shape[0], self.params["samples"]
        noise = self.noise(images) * self.params["noise_std"]
        rows = torch.arange(n, device=images.device).repeat_interleave(samples)
        draws = torch.arange(samples, device=images.device).repeat(n)
        sums = [torch.zeros_like(activation) for _ in range(3)]
        step = self.params["batch_size"]
        # Noisy copies of all images are batched together; index_add_ adds each image's copies in their order.
        for start in range(0, n * samples, step):
            image_ids, draw_ids = rows[start:start + step], draws[start:start + step]
            noisy = images[image_ids] + noise[draw_ids]
            grad = layer_activation_and_grad(model, layer, noisy, targets[image_ids], self.name).grad
            grad2 = grad * grad
            for total, power in zip(sums, (grad, grad2, grad2 * grad), strict=True):
                total.index_add_(0, image_ids, power)
        mean_grad, mean_grad2, mean_grad3 = (total / samples for total in sums)
        return mean_grad, mean_grad2, mean_grad3


def _linear_head(model: nn.Module, layer: str, activation: torch.Tensor,
                 logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps global pooling averages, from `activation`, and the weight of the linear layer that maps their
    average to the logits.

    The pooled maps are the layer's output or, where the net applies a ReLU between the layer and the pooling
    (densenet's `F.relu(features)`), its positive part; whichever reproduces the logits is taken.
    """
    channels = activation.shape[1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels
               and m.out_features == logits.shape[1]]
    if linears:
        head = linears[-1]
        weight = head.weight.detach()
        bias = head.bias.detach() if head.bias is not None else torch.zeros_like(logits[0])
        scale = logits.abs().amax().clamp_min(1.0)
        for pooled in (activation, activation.clamp_min(0)):
            predicted = pooled.mean(dim=(2, 3)) @ weight.T + bias
            if torch.allclose(predicted, logits, rtol=1e-3, atol=1e-4 * float(scale)):
                return pooled, weight
    raise LayerError(
        f"method 'cam' needs a layer whose global average feeds the final linear layer directly; "
        f"on {getattr(model, 'vislib_name', type(model).__name__)} layer {layer!r} does not. "
        "Use the last convolutional stage before global pooling, or method 'gradcam', which generalises CAM"
    )


@register
class CAM(CAMMethod):
    """CAM (Zhou et al. 2016): ReLU(sum_k w_k^c A_k) with w the final linear layer's weights."""

    name = "cam"

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        with frozen_model(model, keep_inplace=True), capture_layer(model, layer) as capture, torch.no_grad():
            logits = model(fast_layout(images))
        activation = capture.spatial(layer, self.name)
        targets = choose_targets(logits, targets)
        pooled, weight = _linear_head(model, layer, activation, logits)
        return WeightedActivations(weight[targets][:, :, None, None] * pooled, targets, logits)


SCORECAM_SOFTMAX = ("classes", "channels")
SCORECAM_INIT = ("zeros", "ones")


def top_channels(activation: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N,k] of each image's channels of largest mean absolute activation; every channel [N,C] when `k`
    is 0 or at least the channel count.

    A channel left out of a perturbation-scored CAM changes the map by its weight error times its activation,
    so the channels to score are those of largest magnitude, whatever their sign (layers before a ReLU).
    """
    n, c = activation.shape[:2]
    if k == 0 or k >= c:
        return torch.arange(c, device=activation.device).expand(n, c)
    return activation.abs().mean(dim=(2, 3)).topk(k, dim=1).indices


class MaskVariants(NamedTuple):
    """How a Score-CAM variant changes each normalised mask M [H,W] before scoring it: variant v scores
    `scales[v] * M + offsets[v]` (a missing part leaves M as it is), and the channel's score is the mean over
    the `copies` variants."""

    copies: int
    scales: torch.Tensor | None = None  # [copies]
    offsets: torch.Tensor | None = None  # [copies,H,W]


@register
class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al. 2020): channels weighted by the target's score on the input masked by each."""

    name = "scorecam"

    @dataclass(frozen=True)
    class Params(CAMParams):
        batch_size: int = param(32, "masked images per forward pass", minimum=1)
        top_channels: int = param(0, "score only the most active channels (0: every channel, exact)", minimum=0)
        softmax: str = param("classes", "channel weight: the target's probability on the masked input (softmax "
                             "over classes: the paper, pytorch-cnn-visualizations) or the softmax over channels "
                             "of its logits (pytorch-grad-cam)", choices=SCORECAM_SOFTMAX)
        init: str = param("zeros", "value the weighted sum starts from before the ReLU: zeros (the paper) or "
                          "ones (pytorch-cnn-visualizations)", choices=SCORECAM_INIT)
        precision: str = param("float32", "number format of the masked forward passes: float32, or bfloat16 "
                               "under autocast (faster on GPUs with bfloat16 tensor cores; docs/methods.md gives "
                               "the difference it makes)", choices=PRECISIONS)

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        with frozen_model(model, keep_inplace=True), torch.no_grad():
            with capture_layer(model, layer) as capture:
                logits = model(fast_layout(images))
            activation = capture.spatial(layer, self.name)
            targets = choose_targets(logits, targets)
            channels = top_channels(activation, self.params["top_channels"])
            scores = self._masked_scores(model, images, targets, activation, channels)
            # Channels left unscored get the lowest score of the scored ones. They are the weakest
            # channels, and a channel's masked score tends to grow with its activation, so the
            # scored set's mean weight (dominated by its best channels) would overweight them all.
            fill = scores.amin(dim=1, keepdim=True)
            all_scores = fill.expand(-1, activation.shape[1]).scatter(1, channels, scores)
            weights = self.weights(all_scores, activation)
        return WeightedActivations(weights[:, :, None, None] * activation, targets, logits)

    def channel_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        """The weighted sum, started from `init`."""
        cam = weighted.sum(1)
        return cam + 1 if self.params["init"] == "ones" else cam

    def weights(self, scores: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """Channel weights [N,C] from the masked scores [N,C] (target probabilities or logits, by `softmax`).

        `classes`: the probabilities themselves, 0 for a constant channel, which the paper's code and
        pytorch-cnn-visualizations skip (its mask, all zeros after min-max, carries no region).
        `channels`: their softmax over the channels, as pytorch-grad-cam computes it.
        """
        if self.params["softmax"] == "channels":
            return torch.softmax(scores, dim=1)
        flat = activation.flatten(2)
        constant = flat.amax(dim=2) == flat.amin(dim=2)
        return scores.masked_fill(constant, 0.0)

    def mask_variants(self, images: torch.Tensor) -> MaskVariants | None:
        """How each mask is varied before scoring (SS-CAM's noise, IS-CAM's scales); None: scored as it is."""
        return None

    def _masked_scores(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       activation: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Target score [N,k] of each image masked by each of its selected channels (upsampled, normalised,
        then varied by `mask_variants` and averaged over the variants): its probability (`softmax` over
        classes) or its logit (`softmax` over channels, applied later)."""
        n, k = channels.shape
        variants = self.mask_variants(images)
        count = 1 if variants is None else variants.copies
        # One row per image, channel and variant, the variants of a mask next to each other.
        index = torch.arange(n * k * count, device=images.device)
        rows = index // (k * count)
        cols = channels.reshape(-1).repeat_interleave(count)
        scores = torch.empty(len(index), device=images.device)
        height, width = images.shape[-2:]
        size = (height, width)
        step = self.params["batch_size"]
        probabilities = self.params["softmax"] == "classes"
        # Masks are built per chunk: all N*k of them at image size would not fit in memory.
        for start in range(0, len(index), step):
            r, c = rows[start:start + step], cols[start:start + step]
            masks = normalize_maps(upsample_maps(activation[r, c], size))
            if variants is not None:
                variant = index[start:start + step] % count
                if variants.scales is not None:
                    masks = variants.scales[variant, None, None] * masks
                if variants.offsets is not None:
                    masks = masks + variants.offsets[variant]
            logits = forward_scores(model, images[r] * masks[:, None].to(images.dtype), self.params["precision"])
            if probabilities:
                logits = torch.softmax(logits, dim=1)
            scores[start:start + step] = logits.gather(1, targets[r][:, None])[:, 0]
        return scores.view(n, k, count).mean(2)


@register
class SSCAM(ScoreCAM):
    """SS-CAM (Wang et al. 2020): Score-CAM with each channel's score averaged over its mask plus Gaussian noise."""

    name = "sscam"

    @dataclass(frozen=True)
    class Params(ScoreCAM.Params):
        softmax: str = param("channels", "channel weight: the softmax over channels of the target's mean logit "
                             "over the noisy masks (torchcam's definition) or its mean probability (softmax "
                             "over classes, as Score-CAM's definition)", choices=SCORECAM_SOFTMAX)
        samples: int = param(35, "noisy copies of each mask, their scores averaged (torchcam's default)", minimum=1)
        noise_std: float = param(2.0, "standard deviation of the Gaussian noise added to each mask, whose values "
                                 "span [0,1] (torchcam's default)", minimum=0)
        seed: int = param(0, "seed of the noise: one draw shared by every channel of every image")

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise [samples,H,W] from `seed`, shared by every mask of every image.

        One draw for all makes an image's map independent of which images share its batch; across the channels
        of an image it compares every channel under the same noise, which leaves each channel's expected score
        as independent draws would.
        """
        generator = torch.Generator(device=images.device).manual_seed(self.params["seed"])
        return torch.randn((self.params["samples"], *images.shape[-2:]), generator=generator, device=images.device)

    def mask_variants(self, images: torch.Tensor) -> MaskVariants:
        """The mask plus each noise sample, scaled to `noise_std`."""
        return MaskVariants(self.params["samples"], offsets=self.params["noise_std"] * self.noise(images))


ISCAM_SCALES = ("cumulative", "linear")


@register
class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al. 2020): Score-CAM with each channel's score averaged over scaled copies of its mask."""

    name = "iscam"

    @dataclass(frozen=True)
    class Params(ScoreCAM.Params):
        softmax: str = param("channels", "channel weight: the softmax over channels of the target's mean logit "
                             "over the scaled masks (torchcam's definition) or its mean probability (softmax "
                             "over classes, as Score-CAM's definition)", choices=SCORECAM_SOFTMAX)
        steps: int = param(10, "scaled copies of each mask, their scores averaged (torchcam's default)", minimum=1)
        scales: str = param("cumulative", "the mask's scale at step i of N: cumulative, sum_{j<=i} j/N (torchcam; "
                            "up to (N+1)/2), or linear, i/N (a Riemann sum along the straight path from no mask "
                            "to the mask)", choices=ISCAM_SCALES)

    def step_scales(self, device: torch.device) -> torch.Tensor:
        """The scale [steps] of the mask at each step."""
        steps = self.params["steps"]
        i = torch.arange(1, steps + 1, dtype=torch.float64)
        scales = i * (i + 1) / (2 * steps) if self.params["scales"] == "cumulative" else i / steps
        return scales.to(device=device, dtype=torch.float32)

    def mask_variants(self, images: torch.Tensor) -> MaskVariants:
        """The mask times each step's scale."""
        return MaskVariants(self.params["steps"], scales=self.step_scales(images.device))


@register
class AblationCAM(CAMMethod):
    """Ablation-CAM (Desai & Ramaswamy 2020): channel k weighted by (y - y_k) / y, y_k the target's logit with the
    layer's channel k set to zero."""

    name = "ablationcam"

    @dataclass(frozen=True)
    class Params(CAMParams):
        batch_size: int = param(32, "ablated copies of the layer's output per forward pass", minimum=1)
        top_channels: int = param(0, "ablate only the most active channels, the others weighted 0 (0: every "
                                  "channel, exact)", minimum=0)

    def weighted_activations(self, model, layer, images, targets) -> WeightedActivations:
        with frozen_model(model, keep_inplace=True), torch.no_grad():
            tail, activation, logits = split.cut_after(model, layer, images, self.name)
            targets = choose_targets(logits, targets)
            channels = top_channels(activation, self.params["top_channels"])
            # At least float32: a drop is a small difference of two logits, which half precision would lose.
            precision = torch.promote_types(logits.dtype, torch.float32)
            score = logits.gather(1, targets[:, None]).to(precision)  # [N,1]
            with tail.attached():
                ablated = self._ablated_scores(tail, targets, activation, channels, precision)
            # A channel left unablated is taken to change nothing: its weight is 0 (pytorch-grad-cam's rule).
            drops = torch.zeros(activation.shape[:2], dtype=precision, device=score.device).scatter(
                1, channels, score - ablated)
            # A score of exactly 0 leaves the ratio undefined; the drops themselves then give the map.
            weights = drops / torch.where(score == 0, torch.ones_like(score), score)
        return WeightedActivations(weights[:, :, None, None].to(activation.dtype) * activation, targets, logits)

    def _ablated_scores(self, tail: split.GraphTail | split.HookTail, targets: torch.Tensor,
                        activation: torch.Tensor, channels: torch.Tensor, precision: torch.dtype) -> torch.Tensor:
        """Target logit [N,k] of each image with each of its selected channels of the layer zeroed.

        Each ablated copy is the first pass's activation with one channel zeroed, fed to the net after the layer
        (where fx can trace the model; otherwise the whole net runs with the layer's output replaced), so it
        differs from the image's own pass by that channel alone.
        """
        n, k = channels.shape
        device = activation.device
        rows = torch.arange(n, device=device).repeat_interleave(k)
        cols = channels.reshape(-1)
        scores = torch.empty(n * k, dtype=precision, device=device)
        step = self.params["batch_size"]
        for start in range(0, n * k, step):
            r, c = rows[start:start + step], cols[start:start + step]
            ablated = activation[r]  # advanced indexing: a copy, safe to change
            ablated[torch.arange(len(r), device=device), c] = 0
            tail.select(r)
            logits = tail.replaced(ablated)
            scores[start:start + step] = logits.gather(1, targets[r][:, None])[:, 0]
        return scores.view(n, k)
