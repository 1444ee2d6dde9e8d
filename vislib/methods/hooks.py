"""Context managers that hook a layer or guard a model, always releasing what they took."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from vislib.errors import LayerError
from vislib.models.layout import spatial_view
from vislib.models.registry import resolve_layer


@runtime_checkable
class _HasInplace(Protocol):
    """A module with an `inplace` flag (ReLU, Hardtanh, Dropout, ...)."""

    inplace: bool


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off parameter grads and in-place activations for the block; restore both afterwards.

    In-place ReLUs would overwrite a hooked activation that autograd still needs.
    """
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    inplace_modules = [m for m in model.modules() if isinstance(m, _HasInplace) and m.inplace is True]
    was_training = model.training
    for p, _ in grad_flags:
        p.requires_grad_(False)
    for m in inplace_modules:
        m.inplace = False
    model.eval()
    try:
        yield model
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m in inplace_modules:
            m.inplace = True
        model.train(was_training)


class LayerCapture:
    """Holds the output of a hooked layer from the last forward pass, as a [N,C,h,w] view where it holds a grid
    (tokens and channels-last maps included: `vislib.models.layout`)."""

    def __init__(self) -> None:
        self.activation: torch.Tensor | None = None

    def spatial(self, layer: str, method: str) -> torch.Tensor:
        """The captured activation, checked to be a [N,C,h,w] map."""
        act = self.activation
        if act is None:
            raise LayerError(f"layer {layer!r} was not reached in the forward pass")
        if act.ndim != 4 or act.shape[2] * act.shape[3] < 1 or act.shape[2] == act.shape[3] == 1:
            raise LayerError(
                f"method {method!r} needs a spatial layer, but {layer!r} outputs shape {tuple(act.shape)}; "
                "pick a layer with a feature map or a vision transformer's tokens (e.g. the model's default layer; "
                "`vislib layers <model>` lists them)"
            )
        return act


@contextlib.contextmanager
def capture_layer(model: nn.Module, layer: str) -> Iterator[LayerCapture]:
    """Record the output of `layer` on each forward; the hook is removed on exit, even on errors."""
    module = resolve_layer(model, layer)
    capture = LayerCapture()

    def hook(_module, _inputs, output):
        capture.activation = spatial_view(model, layer, output if isinstance(output, torch.Tensor) else output[0])

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


def hook_count(model: nn.Module) -> int:
    """Number of hooks registered anywhere in `model` (for leak checks)."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_state_dict_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total
