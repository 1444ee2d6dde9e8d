"""Fold eval-mode batch norms into the convolutions that feed them, for faster optimisation loops."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# A folded model computes the same function up to float rounding; more than this relative error
# means a pair was not what the hooks suggested (e.g. the convolution's output also feeds a residual).
_FOLD_TOLERANCE = 1e-4


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor, keep: Sequence[str]) -> list[tuple[str, str]]:
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
        if name in keep:
            continue
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d) and not module.training and module.running_mean is not None:
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


def _relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm().clamp_min(1e-12))


def _outputs(model: nn.Module, sample: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """The logits and the outputs of those of `layers` the forward pass runs (callers report the others)."""
    captured: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _a, output, name=name: captured.__setitem__(name, output if isinstance(output, torch.Tensor)
                                                                  else output[0])) for name in layers]
    try:
        with torch.no_grad():
            logits = model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *(captured[name] for name in layers if name in captured)]


def fold_batch_norms(model: nn.Module, sample: torch.Tensor, keep: Sequence[str] = ()) -> nn.Module:
    """A copy of `model` with each eval-mode BatchNorm2d folded into the plain Conv2d right before it.

    The batch norm becomes an Identity under its own name, so hooks on either name still see the
    same values, except for pairs touching a layer in `keep` (layers whose input or output a caller
    reads), which are left as they are. `sample` is a normalised batch the model accepts: it finds the
    pairs and checks that the copy's logits and `keep` layers match the original's. When nothing can be
    folded, or the check fails, `model` itself is returned. The original is never changed.
    """
    keep = [name for name in dict.fromkeys(keep) if name]
    sample = sample[:1]
    pairs = _conv_bn_pairs(model, sample, keep)
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        fused = fuse_conv_bn_eval(conv, norm)
        for parameter in fused.parameters():
            parameter.requires_grad_(conv.weight.requires_grad)
        for name, module in ((conv_name, fused), (norm_name, nn.Identity())):
            parent, _, attribute = name.rpartition(".")
            setattr(folded.get_submodule(parent), attribute, module)
    reference, candidate = _outputs(model, sample, keep), _outputs(folded, sample, keep)
    if any(_relative_error(a, b) > _FOLD_TOLERANCE for a, b in zip(reference, candidate, strict=True)):
        return model
    return folded
