"""Fold eval-mode batch norms into the convolutions that feed them, for faster optimisation loops."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vislib.featvis.engine import run, tap_layers

# A folded model computes the same function up to float rounding; more than this relative error
# means a pair was not what the hooks suggested (e.g. the convolution's output also feeds a residual).
_FOLD_TOLERANCE = 1e-4


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batch norm) names where the batch norm's input is that convolution's output, both run once."""
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def on_conv(name: str):
        def hook(_module, _args, output):
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = output

        return hook

    def on_norm(name: str):
        def hook(_module, args):
            calls[name] = calls.get(name, 0) + 1
            inputs[name] = args[0]

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(on_norm(name)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    by_output = {id(tensor): name for name, tensor in outputs.items() if calls[name] == 1}
    return [(by_output[id(tensor)], norm) for norm, tensor in inputs.items()
            if calls[norm] == 1 and id(tensor) in by_output]


def _within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def _changes_a_read_value(pair: tuple[str, str], outputs: Sequence[str], inputs: Sequence[str]) -> bool:
    """Whether folding the pair changes what a read layer sees: the output of a layer that holds the
    convolution but not the batch norm, or the input of one that holds the batch norm but not the convolution."""
    conv, norm = pair
    return (any(_within(conv, layer) and not _within(norm, layer) for layer in outputs)
            or any(_within(norm, layer) and not _within(conv, layer) for layer in inputs))


def _relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm().clamp_min(1e-12))


def _observe(model: nn.Module, sample: torch.Tensor, outputs: Sequence[str],
             inputs: Sequence[str]) -> list[torch.Tensor]:
    """The logits, then the outputs and first inputs of those named layers the forward pass runs."""
    with tap_layers(model, outputs=outputs, inputs=inputs) as taps, torch.no_grad():
        logits = run(model, sample, taps)
    assert logits is not None  # taps without `stop` never end the pass early
    return [logits if isinstance(logits, torch.Tensor) else logits[0],
            *(taps.outputs[name] for name in outputs if name in taps.outputs),
            *(taps.inputs[name] for name in inputs if name in taps.inputs)]


def _folded_copy(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module | None:
    """A deep copy of `model` with `pairs` folded; None when the model cannot be deep-copied."""
    try:
        folded = copy.deepcopy(model)
    except Exception:  # deepcopy fails with many types (locks, non-leaf tensors); folding is only a speed-up
        return None
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)  # as _conv_bn_pairs found them
        fused = fuse_conv_bn_eval(conv, norm)
        for parameter in fused.parameters():
            parameter.requires_grad_(conv.weight.requires_grad)
        for name, module in ((conv_name, fused), (norm_name, nn.Identity())):
            parent, _, attribute = name.rpartition(".")
            setattr(folded.get_submodule(parent), attribute, module)
    return folded


def fold_batch_norms(model: nn.Module, sample: torch.Tensor, outputs: Sequence[str] = (),
                     inputs: Sequence[str] = ()) -> nn.Module:
    """An eval-mode copy of `model` with each BatchNorm2d folded into the Conv2d right before it.

    The batch norm becomes an Identity under its own name, so a hook on it sees what it saw before.
    `outputs` and `inputs` name the layers whose outputs and inputs the caller reads; a pair whose
    folding would change one of those values (a read convolution's output, a read batch norm's
    input, or the same across a container's edge) is left as it is. `sample` is a normalised batch
    the model accepts: one forward pass finds the pairs, another checks that the copy's logits and
    those layers' values match the original's to 1e-4 relative.
    When nothing can be folded, the check fails or the model cannot be copied, `model` itself is
    returned. The original's weights, buffers and training flags are never changed; the copy holds a
    second set of parameters (on the model's device) for as long as the caller keeps it.
    """
    outputs = [name for name in dict.fromkeys(outputs) if name]
    inputs = [name for name in dict.fromkeys(inputs) if name]
    sample = sample[:1]
    modes = [(module, module.training) for module in model.modules()]
    # Eval mode: batch norms then use (and do not update) their running statistics, as the folded copy does.
    model.eval()
    try:
        pairs = [pair for pair in _conv_bn_pairs(model, sample) if not _changes_a_read_value(pair, outputs, inputs)]
        folded = _folded_copy(model, pairs) if pairs else None
        if folded is None:
            return model
        reference, candidate = _observe(model, sample, outputs, inputs), _observe(folded, sample, outputs, inputs)
    finally:
        for module, training in modes:
            module.training = training
    if any(_relative_error(a, b) > _FOLD_TOLERANCE for a, b in zip(reference, candidate, strict=True)):
        return model
    return folded
