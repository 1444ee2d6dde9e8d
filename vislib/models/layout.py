"""Where a layer's output keeps its spatial grid, and that grid as a [N,C,h,w] map.

Convolutions output [N,C,H,W]. Swin's blocks (torchvision's and timm's) and ConvNeXt's inner layers work
channels-last, [N,H,W,C]. Vision transformers (ViT, DeiT) output tokens [N,P+h*w,C]: P prefix tokens (class,
distillation, register tokens), then the patch grid row by row. Every layer-reading method sees such an output
as [N,C,h,w] through `Layout.to_spatial`, a view of it, so the gradient with respect to the map is the gradient
with respect to the grid tokens: what pytorch-grad-cam's `reshape_transform` does to activations and gradients.

Each layer's layout is found once, when `models.load` finishes a model (`probe_layers`): from its output shape on
one square image, where a convolution's map is square in its last two dimensions and a channels-last one in its
middle two, and, for tokens, from the prefix count the model declares.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from vislib.errors import LayerError


class Layout(ABC):
    """How a layer's output holds its spatial grid."""

    @abstractmethod
    def to_spatial(self, output: torch.Tensor) -> torch.Tensor:
        """The grid of `output` as a [N,C,h,w] view (prefix tokens left out); gradients flow through it."""

    @abstractmethod
    def from_spatial(self, spatial: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """A [N,C,h,w] map back in this layout, with the prefix tokens of `output`.

        Always a new tensor, never a view of `spatial`: the network after the layer may change it in place.
        """

    @abstractmethod
    def masked(self, output: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """`output` with its grid multiplied by `masks` [N,1,h,w], prefix tokens unchanged, in this layout."""

    @abstractmethod
    def describe(self) -> str:
        """A few words for listings; empty for the plain [N,C,H,W] layout."""


@dataclass(frozen=True)
class ChannelsFirst(Layout):
    """[N,C,H,W], a convolution's output."""

    def to_spatial(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def from_spatial(self, spatial: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return spatial.clone()

    def masked(self, output: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return output * masks

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class ChannelsLast(Layout):
    """[N,H,W,C], as Swin's blocks and ConvNeXt's inner layers work."""

    def to_spatial(self, output: torch.Tensor) -> torch.Tensor:
        return output.permute(0, 3, 1, 2)

    def from_spatial(self, spatial: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return spatial.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)

    def masked(self, output: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return output * masks.permute(0, 2, 3, 1)

    def describe(self) -> str:
        return "channels-last"


@dataclass(frozen=True)
class Tokens(Layout):
    """[N,P+h*w,C]: `prefix` tokens, then a square grid of patch tokens row by row (a vision transformer)."""

    prefix: int

    def to_spatial(self, output: torch.Tensor) -> torch.Tensor:
        grid = output[:, self.prefix:]
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1] or side < 1:
            raise LayerError(f"a token output of shape {tuple(output.shape)} with {self.prefix} prefix tokens leaves "
                             f"{grid.shape[1]} tokens, not a square grid; give the model square images of its "
                             "input size")
        return grid.unflatten(1, (side, side)).permute(0, 3, 1, 2)

    def from_spatial(self, spatial: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return torch.cat((output[:, :self.prefix], spatial.flatten(2).transpose(1, 2)), 1)

    def masked(self, output: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        weights = masks.flatten(2).transpose(1, 2)
        return torch.cat((output[:, :self.prefix], output[:, self.prefix:] * weights), 1)

    def describe(self) -> str:
        return f"tokens, {self.prefix} prefix"


CHANNELS_FIRST = ChannelsFirst()
CHANNELS_LAST = ChannelsLast()


def prefix_token_count(model: nn.Module) -> int | None:
    """How many tokens come before the patch grid, as the model declares it; None where it declares nothing.

    timm's vision transformers say so in `num_prefix_tokens` (2 for a distilled DeiT, more with register tokens);
    torchvision's hold their class token as a `class_token` parameter [1,P,C]. A model that wraps one (a user's
    factory) declares it through the wrapped module.
    """
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        token = getattr(module, "class_token", None)
        if isinstance(token, torch.Tensor) and token.ndim == 3:
            return int(token.shape[1])
    return None


def _token_prefix(count: int, declared: int | None) -> int | None:
    """The prefix of `count` tokens before a square grid of side > 1: the model's own count where the rest is such a
    grid, else the tokens left over below the largest square, if fewer than its side (a few class, distillation or
    register tokens before a grid; anything else is no grid)."""
    if declared is not None and count - declared > 1 and math.isqrt(count - declared) ** 2 == count - declared:
        return declared
    side = math.isqrt(count)
    leftover = count - side * side
    return leftover if side > 1 and leftover < side else None


def layout_of_shape(shape: tuple[int, ...], prefix_tokens: int | None) -> Layout | None:
    """The layout of an output of `shape` on one square image (batch 1), or None where it holds no grid of side > 1.

    A 4-D map square in its last two dimensions is [N,C,H,W] (a square in all three is taken as that too); one
    square in its middle two is channels-last. A 3-D output [1,T,C] is tokens. Outputs whose first dimension is not
    the batch of one (a Swin's windows, stacked along it) hold no grid of the image.
    """
    if len(shape) == 4 and shape[0] == 1:
        _, first, height, width = shape
        if height == width > 1:
            return CHANNELS_FIRST
        if first == height > 1:
            return CHANNELS_LAST
    if len(shape) == 3 and shape[0] == 1:
        prefix = _token_prefix(shape[1], prefix_tokens)
        if prefix is not None:
            return Tokens(prefix)
    return None


def _runtime_layout(model: nn.Module, output: torch.Tensor) -> Layout | None:
    """The layout of an output of a layer no probe saw: [N,C,H,W] for 4-D, tokens for 3-D with a square grid."""
    if output.ndim == 4:
        return CHANNELS_FIRST
    if output.ndim == 3:
        prefix = _token_prefix(output.shape[1], prefix_token_count(model))
        return Tokens(prefix) if prefix is not None else None
    return None


LAYOUTS_ATTRIBUTE = "vislib_layer_layouts"


def layer_layout(model: nn.Module, layer: str, output: torch.Tensor) -> Layout | None:
    """How `layer`'s `output` holds a spatial grid, or None where it holds none.

    A model loaded by `models.load` carries the layouts its probe found; a layer not among them is [N,C,H,W] if its
    output is 4-D (it may have a grid at this input size and none at the probe's). A model that carries no layouts
    (built outside vislib) is read from the output's dimensions alone.
    """
    probed: Mapping[str, Layout] | None = getattr(model, LAYOUTS_ATTRIBUTE, None)
    if probed is None:
        return _runtime_layout(model, output)
    if layer in probed:
        return probed[layer]
    return CHANNELS_FIRST if output.ndim == 4 else None


def spatial_view(model: nn.Module, layer: str, output: torch.Tensor) -> torch.Tensor:
    """`layer`'s output as a [N,C,h,w] view where it holds a grid; unchanged where it holds none."""
    layout = layer_layout(model, layer, output)
    return layout.to_spatial(output) if layout is not None else output


@dataclass
class LayerProbe:
    """What one forward pass on a square image tells about a model's layers."""

    layouts: dict[str, Layout]  # the layers whose output holds a grid, in the order they finish
    shapes: dict[str, tuple[int, ...]]  # the [C,h,w] shape of each one's grid
    driving: set[str] | None  # those whose grid the class scores depend on; None when not computed

    def default_layer(self) -> str:
        """The last layer, among those with the final grid's shape, whose grid the class scores depend on.

        In a CNN that is the last layer with a spatial output (the outermost block that finishes last, e.g.
        torchvision's `layer4`). In a vision transformer whose head reads only the class token, the tokens after the
        last block's attention never reach the scores (their gradients are 0), so the default is the last block's
        first norm (`encoder_layer_11.ln_1`, timm's `blocks.11.norm1`): pytorch-grad-cam's recipe. '' without a grid.
        """
        if not self.layouts:
            return ""
        names = list(self.layouts)
        final = self.shapes[names[-1]]
        candidates = [name for name in names if self.shapes[name] == final]
        if self.driving is not None:
            driving = [name for name in candidates if name in self.driving]
            candidates = driving or candidates
        return candidates[-1]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def probe_image(input_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded noise image [1,3,S,S] for shape probes.

    Not zeros: a blank image through a randomly initialised deep net (densenet169) leaves denormal floats, which
    made one CPU forward pass 80x slower (8 s instead of 0.1 s).
    """
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, input_size, input_size, generator=generator).to(device)


def probe_layers(model: nn.Module, input_size: int, gradients: bool = False) -> LayerProbe:
    """Run one seeded noise image of `input_size` and find each layer's layout; with `gradients`, also which grids
    the class scores depend on (a backward pass from a seeded random mix of the features the head reads)."""
    output_shapes: dict[str, tuple[int, ...]] = {}
    # Outputs and inputs are kept only for the backward pass: without it, a large model's would be held for nothing.
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, object] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_module, args, output, name=name):
            if isinstance(output, torch.Tensor):
                output_shapes.pop(name, None)
                output_shapes[name] = tuple(output.shape)
                if gradients:
                    outputs.pop(name, None)
                    outputs[name] = output
                    inputs[name] = args[0] if args else None

        handles.append(module.register_forward_hook(record))
    image = probe_image(input_size, model_device(model))
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.set_grad_enabled(gradients):
            logits = model(image.requires_grad_(gradients))
    finally:
        for handle in handles:
            handle.remove()
    prefix = prefix_token_count(model)
    layouts: dict[str, Layout] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in output_shapes.items():
        layout = layout_of_shape(shape, prefix)
        if layout is not None:
            layouts[name] = layout
            shapes[name] = tuple(layout.to_spatial(torch.empty(shape, device="meta")).shape[1:])
    if not gradients:
        return LayerProbe(layouts, shapes, None)
    scores = _head_input(logits if isinstance(logits, torch.Tensor) else logits[0], outputs, inputs)
    tracked = [name for name in layouts if outputs[name].requires_grad]
    if not (tracked and scores.requires_grad):
        return LayerProbe(layouts, shapes, None)
    mix = torch.randn(scores.shape, generator=generator).to(scores.device, scores.dtype)
    grads = torch.autograd.grad((scores * mix).sum(), [outputs[name] for name in tracked], allow_unused=True)
    driving = {name for name, grad in zip(tracked, grads, strict=True)
               if grad is not None and bool(layouts[name].to_spatial(grad).abs().amax() > 0)}
    return LayerProbe(layouts, shapes, driving)


def _head_input(logits: torch.Tensor, outputs: Mapping[str, torch.Tensor],
                inputs: Mapping[str, object]) -> torch.Tensor:
    """What the layer that outputs the logits reads (the features the classifier sees), else the logits.

    Dependencies are read from these features rather than from the scores: a freshly initialised head may be all
    zeros (torchvision's ViT), which would hide every one.
    """
    for name, output in outputs.items():
        features = inputs[name]
        if output is logits and isinstance(features, torch.Tensor) and features.requires_grad:
            return features
    return logits

