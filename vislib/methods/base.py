"""The attribution-method contract: a registry, the Attribution result and shared validation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vislib.errors import ConfigError, VislibError
from vislib.params import NoParams, as_dict, parse
from vislib.registry import Registry


@dataclass
class Attribution:
    """Maps [N,h,w] at the method's native resolution, the explained targets and per-method extras."""

    maps: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class AttributionMethod(ABC):
    """A heatmap method; subclasses declare their parameters in a `Params` dataclass and implement `_explain`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_layer: ClassVar[bool] = True
    # Whether the maps carry a sign (evidence for and against the class): pictures centre them at 0.
    signed_maps: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = as_dict(parse(f"method {self.name!r}", self.Params, params))
        self.validate()

    def maps_are_signed(self) -> bool:
        """Whether this method's maps (with its parameters) carry a sign."""
        return self.signed_maps

    def runs_on_torchscript(self) -> bool:
        """Whether the method works on a TorchScript model, whose compiled graph runs no hooks and no patched
        functions: methods that read a layer or change how the model backpropagates need the Python model."""
        return not self.uses_layer

    def check_model(self, model: nn.Module) -> None:  # noqa: B027  (optional hook: most methods run on any model)
        """Raise LayerError naming what in `model` the method cannot handle (the config check calls it before any
        job; override where needed)."""

    def validate(self) -> None:  # noqa: B027  (optional hook: most methods need no value checks)
        """Check parameter values beyond their types (override where needed)."""

    def explain(self, model: nn.Module, layer: str | None, images: torch.Tensor,
                targets: torch.Tensor | None = None) -> Attribution:
        """Explain `targets` (None: the predicted class) for a preprocessed batch [N,3,H,W]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise VislibError(f"images must be a [N,3,H,W] batch, got shape {tuple(images.shape)}")
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
            if targets.numel() != images.shape[0]:
                raise VislibError(f"got {targets.numel()} targets for {images.shape[0]} images")
        return self._explain(model, layer, images, targets)

    @abstractmethod
    def _explain(self, model: nn.Module, layer: str | None, images: torch.Tensor,
                 targets: torch.Tensor | None) -> Attribution:
        """Compute the maps for a checked batch; `targets` (None: the predicted classes) go through
        `choose_targets` with the logits of the method's first forward pass of `images`."""


def fast_layout(images: torch.Tensor) -> torch.Tensor:
    """`images` in the memory layout that convolutions run fastest in on their device.

    On CPU that is channels-last, oneDNN's native layout: forward and backward passes of every
    architecture in the registry ran 12-129% faster with it (2 cores; benchmarks/results/attribution.md).
    On CUDA the layout is left as it is, since its effect there depends on the GPU and precision.
    """
    return images.contiguous(memory_format=torch.channels_last) if images.device.type == "cpu" else images


PRECISIONS = ("float32", "bfloat16")
"""Number formats of forward-only passes (`forward_precision`): a `precision` parameter of the methods and metrics
that only read the model's scores of many perturbed inputs."""


def forward_precision(device: torch.device, precision: str) -> torch.autocast:
    """The context forward-only passes run in: `float32` leaves the model as it is; `bfloat16` runs its
    convolutions and matrix products in bfloat16 under autocast (GPUs with bfloat16 tensor cores run them about
    twice as fast). Callers convert the scores to float32 before using them (`forward_scores`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def forward_scores(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """The model's float32 logits of `images`, its forward pass run in `precision` (`forward_precision`) on the
    fast layout; callers that need no gradient call it under `torch.no_grad`."""
    with forward_precision(images.device, precision):
        logits = model(fast_layout(images))
    return logits.float()


def choose_targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The classes to explain: `targets` checked against the range of `logits` [N,K], or the predicted ones.

    Methods call it on the logits of their own first forward pass, so explaining costs no extra pass
    to find the predicted classes.
    """
    if targets is None:
        return logits.detach().argmax(1)
    num_classes = logits.shape[1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        bad = int(targets[(targets < 0) | (targets >= num_classes)][0])
        raise VislibError(f"target class {bad} is outside the model's range 0..{num_classes - 1}")
    return targets


METHODS: Registry[type[AttributionMethod]] = Registry("method")


def register(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    """Class decorator: register a method under its `name`."""
    return METHODS.register(cls.name)(cls)


def get(name: str, **params: Any) -> AttributionMethod:
    """Instantiate method `name` with `params` (validated)."""
    return METHODS[name](**params)
