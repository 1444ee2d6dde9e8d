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


def _token_major_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of a batch-first nn.MultiheadAttention: its query, key and value [N,T,E] on the CPU, the
    same values stored token-major ([T,N,E] memory), so the module's own transpose to [T,N,E] is contiguous.

    From the non-contiguous transpose of a [N,T,E] tensor, aten's matmul runs a projection whose weight requires no
    grad (the frozen model's) as a broadcast bmm rather than one mm: about 2x slower on the CPU (torchvision's ViT
    attention, benchmarks/results/attribution.md). One tensor passed as several inputs stays one tensor, which the
    module's self-attention path checks with `is`.
    """
    stored: dict[int, torch.Tensor] = {}

    def token_major(value: object) -> object:
        if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.device.type != "cpu":
            return value
        if id(value) not in stored:
            stored[id(value)] = value.transpose(0, 1).contiguous().transpose(0, 1)
        return stored[id(value)]

    attention_inputs = ("query", "key", "value")
    return (tuple(token_major(value) for value in args[:3]) + args[3:],
            {key: token_major(value) if key in attention_inputs else value for key, value in kwargs.items()})


@contextlib.contextmanager
def in_place_off(model: nn.Module) -> Iterator[nn.Module]:
    """Run the model's in-place activations (ReLU, Hardtanh, Dropout, ...) out of place for the block."""
    modules = [m for m in model.modules() if isinstance(m, _HasInplace) and m.inplace is True]
    for m in modules:
        m.inplace = False
    try:
        yield model
    finally:
        for m in modules:
            m.inplace = True


@contextlib.contextmanager
def frozen_model(model: nn.Module, keep_inplace: bool = False) -> Iterator[nn.Module]:
    """Turn off parameter grads and in-place activations for the block; restore both afterwards.

    In-place ReLUs would overwrite a hooked activation that autograd still needs. `keep_inplace` leaves them on, for
    callers that hook no layer's output, hand the network a copy of it or keep one (`capture_layer`): out-of-place
    ReLUs ran a backward pass ~5% slower (resnet18, 224 px, batch 16, CPU), since autograd then keeps both sides of
    every ReLU, and 64-image forward passes ~7% slower (occlusion: the ReLUs' own time was 4x).
    Batch-first attention modules get their inputs stored token-major for the block (`_token_major_inputs`), which
    frozen weights would otherwise slow.
    """
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in grad_flags:
        p.requires_grad_(False)
    model.eval()
    handles = [m.register_forward_pre_hook(_token_major_inputs, with_kwargs=True) for m in model.modules()
               if isinstance(m, nn.MultiheadAttention) and m.batch_first]
    try:
        with contextlib.nullcontext() if keep_inplace else in_place_off(model):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
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
    """Record a copy of the output of `layer` on each forward, so an in-place op after the layer (an in-place ReLU,
    resnet's `out += identity` after a batch norm) leaves it alone; the hook is removed on exit, even on errors."""
    module = resolve_layer(model, layer)
    capture = LayerCapture()

    def hook(_module, _inputs, output):
        capture.activation = spatial_view(model, layer,
                                          output if isinstance(output, torch.Tensor) else output[0]).clone()

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
