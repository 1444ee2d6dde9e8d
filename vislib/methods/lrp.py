"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as a modified gradient.

Every tensor between layers carries its relevance divided by its value, `c = R / a`, as its gradient, so the input's
relevance is `x * c`: gradient times input, with each layer's backward pass changed to its rule. In that form most
of the network needs no rule of its own: a sum (residual additions) splits relevance in proportion to its summands
(`R_a = a / (a + b) R`, the LRP-0 rule) and a concatenation hands each part its own, both by their plain gradient;
ReLU passes it unchanged. Layers with weights, batch norms and pooling (max pooling as the map that picks the winner)
get their rule in one of two ways:

- epsilon rule: a hook on the layer's output multiplies its gradient by `z / (z + eps sign z)`, and the layer's own
  (native) backward pass does the rest: `c_j = sum_k w_jk R_k / (z_k + eps sign z_k)`.
- alpha-beta and zB rules need other weights: the layer's output comes from `_RuleGradient`, whose backward pass
  runs the layer's map with the rule's weights on the saved input and returns the gradient that rule defines.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from vislib.errors import LayerError
from vislib.methods.base import Attribution, choose_targets, fast_layout, register
from vislib.methods.gradients import CHANNEL_REDUCTIONS, REDUCTION_HELP, GradientMethod, PixelAttribution
from vislib.methods.hooks import frozen_model
from vislib.models.registry import preprocessing_of
from vislib.params import param

RULES = ("epsilon", "alpha_beta")
FIRST_LAYER_RULES = ("zb", "same")
BATCH_NORM_TREATMENTS = ("fold", "epsilon")
STABILIZER = 1e-9
"""Moves the denominators of the alpha-beta and zB rules away from 0 on their own side (each is a sum of terms of one
sign): it only guards 0/0."""

WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
POOLINGS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# Elementwise activations pass relevance unchanged (`c_in = c_out f(z) / z`). ReLU needs no hook: its gradient is
# exactly that (1 where the output is the input, and 0 where the output, and so its relevance, is 0).
PASSING_ACTIVATIONS = (nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish)
# Modules whose plain gradient is already the right propagation: identities, reshapes, eval-mode dropout, padding.
STRUCTURAL = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten,
              nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
              nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
              nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
              nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)


def modules_without_rule(model: nn.Module) -> list[str]:
    """`name (Type)` of every module LRP has no rule for: one with parameters of its own that is not a convolution,
    linear layer or batch norm (attention, LayerNorm, a custom module), a leaf module of a kind it does not know
    (softmax, sigmoid gates), or a batch norm without running statistics (it normalises by the batch)."""
    found = []
    inside_weighted_layers: set[nn.Module] = set()
    for name, module in model.named_modules():
        if module in inside_weighted_layers:
            continue  # part of a convolution's own forward (a subclass's padding), covered by its rule
        if isinstance(module, WEIGHTED_LAYERS):
            inside_weighted_layers.update(module.modules())
            continue
        if isinstance(module, BATCH_NORMS):
            if module.running_mean is None or module.running_var is None:
                found.append(f"{name} ({type(module).__name__} without running statistics)")
            continue
        if isinstance(module, POOLINGS + PASSING_ACTIVATIONS + STRUCTURAL):
            continue
        if any(True for _ in module.parameters(recurse=False)) or not any(True for _ in module.children()):
            found.append(f"{name or 'the model itself'} ({type(module).__name__})")
    return found


_PLAIN_CONVOLUTIONS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def linear_map(module: nn.Module, inputs: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The map of a convolution or linear layer `module` with other weights, as its forward pass computes it."""
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return F.linear(inputs, weight, bias)
    if forward in _PLAIN_CONVOLUTIONS:
        return cast(nn.Conv2d, module)._conv_forward(inputs, weight, bias)
    # A subclass with a forward of its own (e.g. TensorFlow-style "same" padding before F.conv2d): run it with the
    # weights swapped. Its hooks fire; `_Propagation.inside_rule` makes vislib's own ignore the call.
    swapped: dict[str, Any] = {"weight": weight, "bias": bias}  # a bias of None turns the module's off
    return torch.func.functional_call(module, swapped, (inputs,))


def transposed_map(module: nn.Module, inputs: torch.Tensor, weight: torch.Tensor,
                   grad: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to `inputs` of `linear_map(module, inputs, weight, ...)` for the output gradient
    `grad`: the transposed map, run without the forward pass the map's autograd graph would need."""
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return grad @ weight
    if forward in _PLAIN_CONVOLUTIONS:
        conv = cast(nn.Conv2d, module)
        if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
            return torch.ops.aten.convolution_backward(
                grad, inputs, weight, None, conv.stride, conv.padding, conv.dilation, False,
                [0] * len(conv.stride), conv.groups, [True, False, False])[0]
    with torch.enable_grad():
        leaf = inputs.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(linear_map(module, leaf, weight, None), leaf, grad)
    return gradient


def _forget_weight(owner: weakref.ref[WeightParts], key: int) -> None:
    """Drop a dead weight's parts (the finalizer holds the owner weakly, so a weight outliving it keeps nothing)."""
    parts = owner()
    if parts is not None:
        parts.parts.pop(key, None)


class WeightParts:
    """Positive and negative parts of a model's weights, kept between calls while a weight is unchanged.

    Clamping anew allocates fresh memory each call, which costs more than the clamp: on alexnet (CPU, batch 8) the
    alpha-beta rule spent 340 ms per call on clamps, most of it in the 37M-weight first linear layer, where captum's
    in-place clamps took 24 ms. Computed weights (batch norms folded in) are clamped each call.
    """

    def __init__(self) -> None:
        # By id: a tensor cannot be a WeakKeyDictionary key (its == is elementwise). An entry goes with its weight.
        self.parts: dict[int, dict[str, tuple[int, int, torch.Tensor]]] = {}

    def part(self, weight: torch.Tensor, signs: tuple[str, ...]) -> torch.Tensor:
        """The `positive` or `negative` part of `weight`, or several parts side by side along the input channels
        (for inputs of both signs, stacked likewise)."""
        if not isinstance(weight, nn.Parameter):
            return _parts(weight, signs)
        # The version counter moves with every in-place change (an optimiser step), the data pointer with a move
        # to another device.
        stamp = (weight._version, weight.data_ptr())
        if id(weight) not in self.parts:
            self.parts[id(weight)] = {}
            weakref.finalize(weight, _forget_weight, weakref.ref(self), id(weight))
        kept = self.parts[id(weight)]
        key = ",".join(signs)
        if key not in kept or kept[key][:2] != stamp:
            kept[key] = (*stamp, _parts(weight.detach(), signs))
        return kept[key][2]


def _parts(weight: torch.Tensor, signs: tuple[str, ...]) -> torch.Tensor:
    clamped = [weight.clamp(min=0) if sign == "positive" else weight.clamp(max=0) for sign in signs]
    return clamped[0] if len(clamped) == 1 else torch.cat(clamped, dim=1)


def folded(weight: torch.Tensor, bias: torch.Tensor | None,
           norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution or linear layer followed by the eval-mode batch norm `norm`, as one layer."""
    assert norm.running_mean is not None and norm.running_var is not None  # checked by modules_without_rule
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale if bias is None else (bias - norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return weight * scale.view(-1, *([1] * (weight.ndim - 1))), shift


def epsilon_scale(output: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`z / (z + eps sign z)` with sign 0 = +1: the factor the epsilon rule puts on a layer's output gradient."""
    stabilized = torch.where(output >= 0, output + epsilon, output - epsilon)
    return torch.div(output, stabilized, out=stabilized)


@dataclass(eq=False)
class _Unit:
    """One linear map a rule applies to: a convolution or linear layer, with the batch norm that reads its output
    folded in (`batch_norm: fold`)."""

    module: nn.Module  # the convolution or linear layer whose forward computes the map
    name: str
    source: torch.Tensor  # the map's input
    weight: torch.Tensor
    bias: torch.Tensor | None
    first: bool  # the network's first such map: the zB rule's (`first_layer: zb`)
    # What the hook handed on (a batch norm reading it folds this unit), held weakly: that tensor's autograd node
    # holds this unit, and the cycle, through the graph, is one Python's cycle collector cannot see.
    output: weakref.ref[torch.Tensor] | None = None
    value: torch.Tensor | None = None  # the map's output, kept apart from what later in-place ops change
    scale: torch.Tensor | None = None  # the epsilon rule's factor on the output gradient
    folded: bool = False  # a batch norm took this unit over: its own rule must not apply


def _unit_output_gradient(unit: _Unit, grad: torch.Tensor) -> torch.Tensor | None:
    """Tensor hook of an epsilon-rule unit's output; a folded unit passes its gradient on untouched."""
    return None if unit.folded or unit.scale is None else grad * unit.scale


class _RuleGradient(torch.autograd.Function):
    """The unit's output in the forward pass; in the backward pass, the gradient its rule defines for its source
    (alpha-beta) or none, the zB rule handing its relevance to `_Propagation.input_relevance` instead."""

    @staticmethod
    def forward(ctx: Any, source: torch.Tensor, propagation: _Propagation, unit: _Unit) -> torch.Tensor:
        ctx.save_for_backward(source)
        ctx.propagation, ctx.unit = propagation, unit
        assert unit.value is not None
        # A copy: later in-place ops (a residual `+=`, an in-place ReLU) change what is handed on, not the value
        # the rule reads.
        return unit.value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (source,) = ctx.saved_tensors
        return ctx.propagation.source_gradient(ctx.unit, source, grad), None, None


class _PassRelevance(torch.autograd.Function):
    """An activation's output; its backward pass hands the relevance to the pre-activation unchanged."""

    @staticmethod
    def forward(ctx: Any, pre_activation: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(torch.where(pre_activation != 0, output / pre_activation, 0.0))
        return output.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _FirstLayerReached(Exception):
    """Ends the bounds probe at the first convolution or linear layer: nothing after it is needed."""


def first_layer_bounds(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise lowest and highest input [1,...] of the network's first convolution or linear layer over all
    images with pixels in [0,1]: that layer's input for a black and for a white image.

    Where the layer reads the images this is the normalised 0 and 1 of each channel; the elementwise maps some
    networks apply first (torchvision's pretrained googlenet re-normalises its input) are followed exactly.
    """
    height, width = images.shape[-2:]
    extremes = torch.stack([torch.zeros(3, height, width), torch.ones(3, height, width)]).to(images)
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])
        raise _FirstLayerReached

    handles = [m.register_forward_pre_hook(capture) for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)]
    try:
        with torch.no_grad():
            model(fast_layout(preprocessing_of(model).normalize(extremes)))
    except _FirstLayerReached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise LayerError("first_layer 'zb': the model ran no convolution or linear layer; use first_layer: same")
    black, white = captured[0][:1], captured[0][1:]
    return torch.minimum(black, white), torch.maximum(black, white)


class _Propagation:
    """The hooks of one explained batch and what they record."""

    def __init__(self, model: nn.Module, params: dict[str, Any], images: torch.Tensor,
                 bounds: tuple[torch.Tensor, torch.Tensor] | None, weight_parts: WeightParts) -> None:
        self.weight_parts = weight_parts
        self.names = {module: name for name, module in model.named_modules()}
        self.rule: str = params["rule"]
        self.epsilon: float = params["epsilon"]
        self.alpha: float = params["alpha"]
        self.fold = params["batch_norm"] == "fold"
        self.images = images
        self.bounds = bounds
        self.first_pending = bounds is not None
        self.units: dict[int, _Unit] = {}
        self.input_relevance: torch.Tensor | None = None  # what the zB rule gives the first layer's input
        # True while a rule runs a layer's map itself, whose hooks then fire (linear_map's functional call).
        self.inside_rule = False

    def register(self, model: nn.Module) -> list[RemovableHandle]:
        """Forward hooks on every module that has a rule; the caller removes them."""
        handles = []
        for module in model.modules():
            if isinstance(module, WEIGHTED_LAYERS):
                handles.append(module.register_forward_hook(self.on_weighted))
            elif isinstance(module, BATCH_NORMS):
                handles.append(module.register_forward_hook(self.on_batch_norm))
            elif isinstance(module, POOLINGS):
                handles.append(module.register_forward_hook(self.on_pooling))
            elif isinstance(module, PASSING_ACTIVATIONS):
                handles.append(module.register_forward_hook(self.on_activation))
        return handles

    def on_weighted(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                    output: torch.Tensor) -> torch.Tensor | None:
        if self.inside_rule:
            return None
        first, self.first_pending = self.first_pending, False
        weight = cast(torch.Tensor, module.weight)
        bias = cast(torch.Tensor | None, module.bias)
        return self.apply_rule(_Unit(module, self.names[module], inputs[0], weight, bias, first), output)

    def on_batch_norm(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                      output: torch.Tensor) -> torch.Tensor | None:
        if self.inside_rule:
            return None
        producer = self.units.get(id(inputs[0]))
        if self.fold and producer is not None and producer.output is not None and producer.output() is inputs[0]:
            producer.folded, producer.scale = True, None
            weight, bias = folded(producer.weight, producer.bias, cast(nn.modules.batchnorm._BatchNorm, module))
            unit = _Unit(producer.module, f"{producer.name} + {self.names[module]}", producer.source, weight, bias,
                         producer.first)
            return self.apply_rule(unit, output)
        self.epsilon_rule(output)
        return None

    def on_pooling(self, _module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        if not self.inside_rule and isinstance(output, torch.Tensor):
            self.epsilon_rule(output)

    def on_activation(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...],
                      output: torch.Tensor) -> torch.Tensor | None:
        if self.inside_rule or not inputs[0].requires_grad:
            return None
        return _PassRelevance.apply(inputs[0], output)

    def epsilon_rule(self, output: torch.Tensor) -> None:
        """The epsilon rule on a layer without a rule choice (pooling, a batch norm not folded)."""
        if output.requires_grad:
            scale = epsilon_scale(output.detach(), self.epsilon)
            output.register_hook(lambda grad: grad * scale)

    def apply_rule(self, unit: _Unit, output: torch.Tensor) -> torch.Tensor:
        """Hand on `output` with `unit`'s rule attached to its backward pass."""
        if unit.first and unit.source.numel() != self.images.numel():
            raise LayerError(
                f"first_layer 'zb': the first convolution or linear layer, {unit.name!r}, reads a tensor of shape "
                f"{tuple(unit.source.shape)}, not the images {tuple(self.images.shape)} or a reshape of them, so the "
                "relevance the zB rule gives it cannot be handed to the pixels; use first_layer: same")
        if unit.first or self.rule == "alpha_beta":
            unit.value = output.detach()
            result = _RuleGradient.apply(unit.source, self, unit)
        else:
            result = output
            if output.requires_grad:
                unit.scale = epsilon_scale(output.detach(), self.epsilon)
                output.register_hook(functools.partial(_unit_output_gradient, unit))
        unit.output = weakref.ref(result)
        self.units[id(result)] = unit
        return result

    def source_gradient(self, unit: _Unit, source: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """The backward pass of a `_RuleGradient` unit: its source's gradient (relevance / value)."""
        assert unit.value is not None
        relevance = grad * unit.value
        self.inside_rule = True
        try:
            if unit.first:
                self.zb_rule(unit, source, relevance)
                return None
            return self.alpha_beta_rule(unit, source, relevance)
        finally:
            self.inside_rule = False

    def alpha_beta_rule(self, unit: _Unit, source: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """`c_j = sum_k alpha (a_j w_jk)+ / (a_j z+_k) R_k - beta (a_j w_jk)- / (a_j z-_k) R_k`, with
        `z+_k = sum_j (a_j w_jk)+ + b_k+` and `z-_k` likewise (Bach et al. 2015, eq. 60); beta = alpha - 1."""
        beta = self.alpha - 1
        bias = unit.bias
        # Inputs after a ReLU are never negative: then a product's sign is its weight's. Otherwise a negative
        # input's products have the opposite signs of its weights.
        signed = bool((source < 0).any())
        gradient = self.part_gradient(unit, source, signed, "positive", self.alpha * relevance,
                                      None if bias is None else bias.clamp(min=0))
        if beta:
            gradient = gradient - self.part_gradient(unit, source, signed, "negative", beta * relevance,
                                                     None if bias is None else bias.clamp(max=0))
        return gradient

    def part_gradient(self, unit: _Unit, source: torch.Tensor, signed: bool, sign: str, relevance: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        """`d z_s / d a . (R / z_s)` for `z_s` the sum of the products `a_j w_jk` of sign `sign` (and the bias's part
        of that sign): the input gradient one term of the alpha-beta rule gives."""
        module, weight = unit.module, unit.weight
        # The stabiliser moves z_s away from 0 on its own side: all its terms have one sign.
        stabilizer = STABILIZER if sign == "positive" else -STABILIZER
        if not signed:
            same = self.weight_parts.part(weight, (sign,))
            z = linear_map(module, source, same, bias)
            return transposed_map(module, source, same, relevance / z.add_(stabilizer))
        other = "negative" if sign == "positive" else "positive"
        positive_inputs, negative_inputs = source.clamp(min=0), source.clamp(max=0)
        if isinstance(module, nn.Linear) or cast(nn.Conv2d, module).groups == 1:
            # Both input signs as one map, inputs and weights side by side along the input channels: one call
            # each way instead of two (the first convolution, which reads signed pixels, runs 1.7x faster).
            channels = -1 if isinstance(module, nn.Linear) else 1
            stacked = torch.cat([positive_inputs, negative_inputs], dim=channels)
            both = self.weight_parts.part(weight, (sign, other))
            z = linear_map(module, stacked, both, bias)
            for_positive, for_negative = transposed_map(module, stacked, both, relevance / z.add_(stabilizer)).chunk(
                2, dim=channels)
        else:
            same, opposite = self.weight_parts.part(weight, (sign,)), self.weight_parts.part(weight, (other,))
            z = linear_map(module, positive_inputs, same, bias) + linear_map(module, negative_inputs, opposite, None)
            share = relevance / z.add_(stabilizer)
            for_positive = transposed_map(module, source, same, share)
            for_negative = transposed_map(module, source, opposite, share)
        return torch.where(source >= 0, for_positive, for_negative)

    def zb_rule(self, unit: _Unit, source: torch.Tensor, relevance: torch.Tensor) -> None:
        """`R_j = sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) / z_k R_k` with `l`, `h` the input's bounds (Montavon et
        al. 2017, 2019): the relevance of the first layer's input, added to `input_relevance`.

        With `c+ = W+^T (R / z)` and `c- = W-^T (R / z)` that is `(x - l) c+ + (x - h) c-`, since `W = W+ + W-`.
        """
        assert self.bounds is not None and unit.value is not None
        low, high = self.bounds
        module, weight, bias = unit.module, unit.weight, unit.bias
        positive_weight = self.weight_parts.part(weight, ("positive",))
        negative_weight = self.weight_parts.part(weight, ("negative",))
        # z = W x - W+ l - W- h: the bias cancels (the layer's z minus its positive and negative parts', Montavon et
        # al.'s recipe); W x is the layer's output less its bias, and the bounds' terms are the same for every image.
        weighted_inputs = unit.value
        if bias is not None:
            weighted_inputs = weighted_inputs - (bias if isinstance(module, nn.Linear)
                                                 else bias.view(-1, *([1] * (unit.value.ndim - 2))))
        z = (weighted_inputs - linear_map(module, low, positive_weight, None)
             - linear_map(module, high, negative_weight, None))
        share = relevance / z.add_(STABILIZER)  # z >= 0: a sum of non-negative terms
        gained = ((source - low) * transposed_map(module, source, positive_weight, share)
                  + (source - high) * transposed_map(module, source, negative_weight, share)).detach()
        self.input_relevance = gained if self.input_relevance is None else self.input_relevance + gained


@register
class LRP(GradientMethod):
    """Layer-wise relevance propagation: the target logit redistributed layer by layer down to the pixels."""

    name = "lrp"

    @dataclass(frozen=True)
    class Params:
        rule: str = param("epsilon", "rule of the convolution and linear layers: epsilon (LRP-eps) or alpha_beta "
                          "(LRP-alpha-beta, beta = alpha - 1)", choices=RULES)
        epsilon: float = param(0.01, "the epsilon rule's stabiliser, added with z's sign to its denominators z; "
                               "under either rule also on pooling and on batch norms not folded",
                               exclusive_minimum=0)
        alpha: float = param(1.0, "alpha_beta's alpha (weight of positive contributions); beta = alpha - 1",
                             minimum=1)
        first_layer: str = param("zb", "rule of the first convolution or linear layer: zb (bounded by the pixel "
                                 "range, Montavon et al.) or same (the `rule`)", choices=FIRST_LAYER_RULES)
        batch_norm: str = param("fold", "fold (into the convolution or linear layer it reads, which then gets the "
                                "rule as one layer) or epsilon (an affine layer of its own with the epsilon rule, "
                                "as captum)", choices=BATCH_NORM_TREATMENTS)
        channel_reduction: str = param("signed_sum", REDUCTION_HELP, choices=CHANNEL_REDUCTIONS)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.weight_parts = WeightParts()

    def runs_on_torchscript(self) -> bool:
        """No: the rules hook the Python model's layers."""
        return False

    def check_model(self, model: nn.Module) -> None:
        """Raise LayerError naming the modules LRP has no rule for."""
        unknown = modules_without_rule(model)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise LayerError(
                f"LRP has no propagation rule for {shown}; it handles convolutions, linear layers, batch "
                "norms, pooling, the activations ReLU, ReLU6/Hardtanh, LeakyReLU, ELU, SiLU, GELU, Tanh and "
                "Hardswish, dropout, padding and reshapes (and sums and concatenations in forward code). Use a "
                "gradient method (gradient_x_input, integrated_gradients) on this model")

    def relevance(self, model: nn.Module, images: torch.Tensor,
                  targets: torch.Tensor | None) -> tuple[PixelAttribution, torch.Tensor]:
        """Input relevance [N,3,H,W] of the target logits, and its conservation gap per image (sum of the
        relevance minus the target logit)."""
        self.check_model(model)
        with frozen_model(model), torch.enable_grad():
            inputs = fast_layout(images.detach()).requires_grad_(True)
            bounds = first_layer_bounds(model, inputs) if self.params["first_layer"] == "zb" else None
            propagation = _Propagation(model, self.params, inputs, bounds, self.weight_parts)
            handles = propagation.register(model)
            try:
                logits = model(inputs)
                targets = choose_targets(logits, targets)
                scores = logits.gather(1, targets[:, None])[:, 0]
                (grad,) = torch.autograd.grad(scores.sum(), inputs, allow_unused=True)
            finally:
                for handle in handles:
                    handle.remove()
                # The units hold their inputs, whose autograd nodes hold the units' rules, which hold this object:
                # a cycle through the autograd graph, which Python's cycle collector cannot see.
                propagation.units.clear()
        relevance = inputs.detach() * grad if grad is not None else torch.zeros_like(inputs)
        if propagation.input_relevance is not None:
            # The layers before the first one are elementwise or reshapes (checked): relevance passes them as is.
            relevance = relevance + propagation.input_relevance.reshape(relevance.shape)
        gap = relevance.sum(dim=(1, 2, 3)) - scores.detach()
        return PixelAttribution(relevance, targets, logits.detach()), gap

    def pixel_attribution(self, model, images, targets, layer=None) -> PixelAttribution:
        """Input relevance [N,3,H,W] (signed; sums to about the target logit)."""
        return self.relevance(model, images, targets)[0]

    def _explain(self, model, layer, images, targets) -> Attribution:
        (values, targets, logits), gap = self.relevance(model, images, targets)
        return Attribution(self.reduce(values).float(), targets, logits.argmax(1),
                           extras={"conservation_gap": gap.float()})
