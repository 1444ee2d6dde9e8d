"""The activation-maximisation engine: pixel images in [0,1], octaves, jitter, blur, regularisers."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vislib.errors import ConfigError, LayerError
from vislib.methods.base import fast_layout
from vislib.models.layout import spatial_view
from vislib.models.registry import preprocessing_of, resolve_layer
from vislib.params import param
from vislib.runlog import Progress


@dataclass(frozen=True)
class EngineSettings:
    """How `optimize` runs; the declared parameters of every method built on the engine."""

    iterations: int = param(64, "optimisation steps per octave", minimum=1)
    lr: float = param(0.05, "step size at the first step", exclusive_minimum=0)
    lr_end: float = param(0.05, "step size at the last step (linear in between)", exclusive_minimum=0)
    lr_decay_every: int = param(0, "instead of lr_end: multiply lr by lr_decay_factor after step 0 and every this "
                                   "many steps (0: off)", minimum=0)
    lr_decay_factor: float = param(0.1, "factor of that step decay", exclusive_minimum=0)
    octaves: int = param(1, "image scales, from small to full size", minimum=1)
    octave_scale: float = param(1.4, "size ratio between octaves", minimum=1)
    jitter: int = param(0, "random shift in pixels at each step", minimum=0)
    scale_jitter: float = param(0.0, "random rescale, as a fraction, at each step", minimum=0, exclusive_maximum=1)
    blur_every: int = param(0, "Gaussian blur every this many steps (0: never)", minimum=0)
    blur_sigma: float = param(0.0, "std of that blur in pixels", minimum=0)
    tv_weight: float = param(0.0, "weight of the total-variation penalty", minimum=0)
    tv_beta: float = param(2.0, "exponent of the total variation")
    decay_weight: float = param(0.0, "weight of the L2 decay of the normalised image", minimum=0)
    alpha_weight: float = param(0.0, "weight of the alpha-norm penalty", minimum=0)
    alpha: float = param(6.0, "exponent of the alpha-norm")
    penalty_reduction: str = param("mean", "penalties (TV, decay, alpha-norm) averaged or summed over each image",
                                   choices=("mean", "sum"))
    grad_pyramid: int = param(0, "levels of the Laplacian-pyramid gradient normalisation (0: off)", minimum=0)
    decorrelate: bool = param(False, "precondition the gradient with the ImageNet colour covariance")
    optimizer: str = param("adam", "adam, normalized gradient descent, or plain SGD",
                           choices=("adam", "normalized", "sgd"))
    momentum: float = param(0.0, "momentum of the normalized and sgd optimizers", minimum=0, exclusive_maximum=1)
    weight_decay: float = param(0.0, "the optimizer's L2 weight decay of the optimised tensor", minimum=0)
    space: str = param("pixels", "optimise the [0,1] pixels, or the model-normalised image (the original codes)",
                       choices=("pixels", "normalized"))
    projection: str = param("clamp", "after each step: clamp pixels to [0,1], also round them to 8 bits, or "
                                     "leave them (results are clamped at the end)", choices=("clamp", "uint8", "none"))


# The plain recipes of pytorch-cnn-visualizations (its file:line per value: tests/featvis/test_recipes.py): no
# jitter, blur, octaves, gradient conditioning or clamping; the model-normalised image is the optimised tensor.
PLAIN_SETTINGS: dict[str, Any] = {
    "octaves": 1, "jitter": 0, "scale_jitter": 0.0, "blur_every": 0, "blur_sigma": 0.0, "tv_weight": 0.0,
    "decay_weight": 0.0, "alpha_weight": 0.0, "grad_pyramid": 0, "decorrelate": False, "lr_decay_every": 0,
    "space": "normalized",
}

# Lucid's square root C of the ImageNet colour covariance. Preconditioning the gradient with
# (C C^T)^(1/2) (= U S U^T for C = U S V^T) moves pixels mostly in brightness and less in hue,
# the way a step in decorrelated colour space would, with less loss of colour than C C^T.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_U, _S, _ = torch.linalg.svd(_COLOUR_SQRT)
_COLOUR_PRECONDITIONER = _U @ torch.diag(_S / _S.max()) @ _U.T


def settings_from(params: dict[str, Any], **overrides: Any) -> EngineSettings:
    """Engine settings from a method's parameters (keys it does not have keep their defaults)."""
    names = {f.name for f in dataclasses.fields(EngineSettings)}
    return EngineSettings(**{**{k: v for k, v in params.items() if k in names}, **overrides})


def blur_kernel_size(sigma: float) -> int:
    """Odd kernel size for `sigma`, by imgaug's rule (so ported schedules blur the same)."""
    factor = 3.3 if sigma < 3.0 else (2.9 if sigma < 5.0 else 2.6)
    size = int(max(factor * sigma, 5))
    return size + 1 if size % 2 == 0 else size


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a [N,C,H,W] batch with reflect borders; sigma <= 1e-3 leaves it unchanged."""
    if sigma <= 1e-3:
        return images
    k = min(blur_kernel_size(sigma), 2 * (min(images.shape[-2:]) // 2) - 1)
    if k < 3:
        return images
    # Imported here: the Snakefile imports this module (through vislib.config) and torchvision would add
    # seconds to every Snakemake start.
    from torchvision.transforms.v2 import functional as TF

    return TF.gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])


def spatial_size(images: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a [..., H, W] tensor."""
    height, width = images.shape[-2:]
    return (height, width)


def gradient_of(pixels: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left on `pixels` (RuntimeError if it left none)."""
    grad = pixels.grad
    if grad is None:
        raise RuntimeError("the backward pass left no gradient on the pixels")
    return grad


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a [N,C,H,W] batch (antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def reduce_per_image(values: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean or sum of each item of a [N,...] batch."""
    flat = values.flatten(1)
    return flat.sum(1) if reduction == "sum" else flat.mean(1)


def total_variation(images: torch.Tensor, beta: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Per-image mean (or sum) of ((dI/dy)^2 + (dI/dx)^2)^(beta/2) over the H and W axes of [N,C,H,W]."""
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    squared = dy ** 2 + dx ** 2
    # The small offset keeps the gradient finite at flat regions when beta < 2.
    tv = squared if beta == 2.0 else (squared + 1e-8) ** (beta / 2)
    return reduce_per_image(tv, reduction)


def _rms(images: torch.Tensor) -> torch.Tensor:
    """Root mean square of each item of a batch, shaped [N,1,1,1] for broadcasting."""
    return images.pow(2).flatten(1).mean(1).sqrt()[:, None, None, None]


def laplacian_normalize(grad: torch.Tensor, levels: int) -> torch.Tensor:
    """Give each level of a [N,C,H,W] gradient's Laplacian pyramid unit RMS per image, then recombine.

    Raw pixel gradients are dominated by high frequencies; equalising the levels lets coarse
    structure form (the "lapnorm" of the DeepDream notebook).
    """
    bands = []
    current = grad
    for _ in range(levels - 1):
        h, w = current.shape[-2:]
        if min(h, w) < 4:
            break
        low = resize(current, ((h + 1) // 2, (w + 1) // 2))
        bands.append(current - resize(low, (h, w)))
        current = low
    bands.append(current)
    # A band far weaker than the whole gradient is mostly rounding noise: amplify it at most 100x.
    floor = (1e-2 * _rms(grad)).clamp_min(1e-20)
    result = bands[-1] / torch.maximum(_rms(bands[-1]), floor)
    for band in reversed(bands[:-1]):
        band = band / torch.maximum(_rms(band), floor)
        result = resize(result, spatial_size(band)) + band
    return result


def condition_gradient(grad: torch.Tensor, decorrelate: bool, pyramid: int) -> torch.Tensor:
    """Precondition a pixel gradient [N,3,H,W]: colour decorrelation and/or Laplacian-pyramid normalisation."""
    if decorrelate:
        grad = torch.einsum("ij,njhw->nihw", _COLOUR_PRECONDITIONER.to(grad), grad)
    if pyramid:
        grad = laplacian_normalize(grad, pyramid)
    return grad


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Canvas sizes from the smallest octave to `size`, each `scale` times the previous."""
    h, w = size
    return [(max(8, round(h / scale ** k)), max(8, round(w / scale ** k))) for k in range(octaves - 1, -1, -1)]


class _StopForward(Exception):
    """Raised by a tap hook once every tapped layer ran, to skip the rest of the network."""


class LayerTaps:
    """Outputs and inputs of named layers from the last forward pass."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def output(self, layer: str) -> torch.Tensor:
        """The output of `layer`; LayerError when the forward pass did not reach it."""
        if layer not in self.outputs:
            raise LayerError(f"layer {layer!r} was not reached in the forward pass; pick a layer the model runs")
        return self.outputs[layer]

    def input(self, layer: str) -> torch.Tensor:
        """The first input of `layer`; LayerError when the forward pass did not reach it."""
        if layer not in self.inputs:
            raise LayerError(f"layer {layer!r} was not reached in the forward pass; pick a layer the model runs")
        return self.inputs[layer]


@contextlib.contextmanager
def tap_layers(model: nn.Module, outputs: Sequence[str] = (), inputs: Sequence[str] = (),
               stop: bool = False) -> Iterator[LayerTaps]:
    """Record outputs/inputs of layers on each forward; `stop` ends the pass once all were recorded.

    An output that holds a spatial grid is recorded as its [N,C,h,w] view (`vislib.models.spatial_view`).

    Hooks are removed on exit, even on errors. Use `run` to call the model under `stop`.
    """
    modules = {name: resolve_layer(model, name) for name in (*outputs, *inputs)}
    taps = LayerTaps()
    wanted = len(set(outputs)) + len(set(inputs))

    def done() -> bool:
        return len(taps.outputs) + len(taps.inputs) == wanted

    def on_output(name: str) -> Callable:
        def hook(_module, _args, output):
            taps.calls[name] = taps.calls.get(name, 0) + 1
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            # A vision transformer's tokens and a channels-last map are read as [N,C,h,w], as every method reads them.
            taps.outputs[name] = spatial_view(model, name, tensor)
            if stop and done():
                raise _StopForward

        return hook

    def on_input(name: str) -> Callable:
        def hook(_module, args):
            taps.inputs[name] = args[0]
            if stop and done():
                raise _StopForward

        return hook

    handles = [modules[name].register_forward_hook(on_output(name)) for name in dict.fromkeys(outputs)]
    handles += [modules[name].register_forward_pre_hook(on_input(name)) for name in dict.fromkeys(inputs)]
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()


def run(model: nn.Module, inputs: torch.Tensor,
        taps: LayerTaps) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """Forward `inputs` after clearing `taps`; the model's output (the logits, or a tuple that starts with
    them for models with auxiliary heads), or None when a tap stopped the pass early."""
    taps.outputs.clear()
    taps.inputs.clear()
    taps.calls.clear()
    try:
        return model(fast_layout(inputs))
    except _StopForward:
        return None


def probe_layer(model: nn.Module, layer: str, sample: torch.Tensor) -> tuple[tuple[int, ...], bool]:
    """Output shape of `layer` for `sample`, and whether it runs exactly once per forward.

    Only a layer that runs once can end the forward pass early without changing which call is seen.
    """
    with tap_layers(model, outputs=[layer]) as taps, torch.no_grad():
        run(model, sample, taps)
        shape = tuple(taps.output(layer).shape)
    return shape, taps.calls.get(layer) == 1


Objective = Callable[[torch.Tensor], torch.Tensor]
"""objective(normalised batch [N,3,h,w]) -> per-image loss [N] to minimise."""


def regularizers(optimised: torch.Tensor, normalised: torch.Tensor, settings: EngineSettings) -> torch.Tensor:
    """Per-image TV (of the optimised tensor: pixels, or the normalised image), L2 decay and alpha-norm (model
    space, i.e. around the mean colour), each averaged or summed over the image (`penalty_reduction`)."""
    reduction = settings.penalty_reduction
    total = torch.zeros(optimised.shape[0], dtype=optimised.dtype, device=optimised.device)
    if settings.tv_weight:
        total = total + settings.tv_weight * total_variation(optimised, settings.tv_beta, reduction)
    if settings.decay_weight:
        total = total + settings.decay_weight * reduce_per_image(normalised.pow(2), reduction)
    if settings.alpha_weight:
        total = total + settings.alpha_weight * reduce_per_image(normalised.abs().pow(settings.alpha), reduction)
    return total


def learning_rate(settings: EngineSettings, step: int) -> float:
    """The step size at 0-based `step` of an octave: linear from lr to lr_end, or lr times lr_decay_factor
    once after step 0 and again after every lr_decay_every steps (the original inversion's `i % 40 == 0`)."""
    if settings.lr_decay_every:
        return settings.lr * settings.lr_decay_factor ** math.ceil(step / settings.lr_decay_every)
    fraction = step / max(1, settings.iterations - 1)
    return settings.lr + (settings.lr_end - settings.lr) * fraction


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0,1] rounded to the nearest 8-bit value (the uint8 image the original codes kept)."""
    return torch.round(pixels.clamp(0, 1) * 255) / 255


def make_optimizer(tensor: torch.Tensor, settings: EngineSettings) -> torch.optim.Optimizer:
    """Adam, or SGD (for 'normalized' and 'sgd'), with the settings' momentum and weight decay."""
    if settings.optimizer == "adam":
        return torch.optim.Adam([tensor], lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD([tensor], lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def _jitter(images: torch.Tensor, settings: EngineSettings, generator: torch.Generator) -> torch.Tensor:
    """Random shift (and rescale) shared by the whole batch, so each image's result is batch-independent."""
    if settings.jitter:
        dy, dx = torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=generator).tolist()
        images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if settings.scale_jitter:
        factor = 1.0 + settings.scale_jitter * (2 * torch.rand((), generator=generator).item() - 1)
        h, w = images.shape[-2:]
        images = F.interpolate(images, size=(max(8, round(h * factor)), max(8, round(w * factor))),
                               mode="bilinear", align_corners=False)
    return images


def optimize(model: nn.Module, objective: Objective, init: torch.Tensor, settings: EngineSettings,
             seed: int, base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise objective + regularisers over a [N,3,H,W] pixel batch in [0,1], octave by octave.

    Returns the final images [N,3,H,W] (clamped to [0,1]) and the per-image loss curve [octaves*iterations, N].
    With `base` (deep dream) each octave starts from the base image at that size plus the detail
    added so far; without it the previous octave's image is upscaled. The optimised tensor is the pixels or,
    with space 'normalized', the model-normalised image (as in the original codes; blur is linear, so it is the
    same in either space, and the projection acts on the pixels).
    """
    preprocessing = preprocessing_of(model)
    generator = torch.Generator().manual_seed(seed)
    normalized_space = settings.space == "normalized"

    def to_space(pixels: torch.Tensor) -> torch.Tensor:
        return preprocessing.normalize(pixels) if normalized_space else pixels

    def to_pixels(tensor: torch.Tensor) -> torch.Tensor:
        return preprocessing.denormalize(tensor) if normalized_space else tensor

    sizes = octave_sizes(spatial_size(init), settings.octaves, settings.octave_scale)
    images = resize(init, sizes[0]).clamp(0, 1)
    curve = []
    progress = Progress(len(sizes) * settings.iterations, "featvis", unit="steps")
    for k, size in enumerate(sizes):
        if k:
            if base is None:
                images = resize(images, size)
            else:
                detail = images - resize(base, sizes[k - 1])
                images = resize(base, size) + resize(detail, size)
            if settings.projection != "none":
                images = images.clamp(0, 1)
        optimised = to_space(images).detach().clone().requires_grad_(True)
        # "normalized": plain descent on the gradient divided by its per-image mean magnitude; unlike
        # Adam it keeps the gradient's spectrum, so high frequencies are not boosted to full step.
        optimizer = make_optimizer(optimised, settings)
        for i in range(settings.iterations):
            progress.update()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, i)
            with torch.enable_grad():
                normalised = optimised if normalized_space else preprocessing.normalize(optimised)
                view = _jitter(normalised, settings, generator)
                per_image = objective(view) + regularizers(optimised, normalised, settings)
                optimizer.zero_grad(set_to_none=True)
                # Images are independent, so the gradient of the sum is each image's own gradient.
                per_image.sum().backward()
            grad = condition_gradient(gradient_of(optimised), settings.decorrelate, settings.grad_pyramid)
            if settings.optimizer == "normalized":
                grad /= grad.abs().flatten(1).mean(1).clamp_min(1e-12)[:, None, None, None]
            optimised.grad = grad
            optimizer.step()
            with torch.no_grad():
                # The last step is never blurred, so the result keeps the detail the objective asked for.
                if settings.blur_every and (i + 1) % settings.blur_every == 0 and i + 1 < settings.iterations:
                    optimised.copy_(gaussian_blur(optimised, settings.blur_sigma))
                if settings.projection == "clamp" and not normalized_space:
                    optimised.clamp_(0, 1)
                elif settings.projection != "none":
                    pixels = to_pixels(optimised).clamp(0, 1)
                    optimised.copy_(to_space(quantize(pixels) if settings.projection == "uint8" else pixels))
            curve.append(per_image.detach().float())
        images = to_pixels(optimised.detach())
    images = quantize(images) if settings.projection == "uint8" else images.clamp(0, 1)
    return images.float(), check_finite(torch.stack(curve))


def check_finite(curve: torch.Tensor) -> torch.Tensor:
    """The loss curve [T,N] if every value is finite; else a ConfigError naming the first step that was not."""
    finite = torch.isfinite(curve).all(1)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0, 0])
        raise ConfigError(
            f"featvis: the loss became {curve[step][~torch.isfinite(curve[step])][0].item()} at step {step + 1} of "
            f"{curve.shape[0]}: the steps are too large for this model and layer; lower lr (the original recipes' "
            "step sizes were tuned for the models of the original code)")
    return curve
