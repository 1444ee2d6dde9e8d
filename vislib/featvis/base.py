"""The feature-visualization contract: a registry, the result type and shared input checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vislib.errors import ConfigError, DataError
from vislib.registry import Registry


@dataclass
class FeatVisResult:
    """Synthesised images and what each one shows.

    `images` [N,3,H,W] float32 RGB in [0,1]; `units` [N] the channel, class or cluster image i
    visualises (-1: the whole layer); `labels` one readable line per image; `loss_curve` [T,N] the
    per-image loss at each of T iterations (all octaves in order); `extras` per-method tensors.
    """

    method: str
    layer: str | None
    images: torch.Tensor
    units: torch.Tensor
    labels: list[str]
    loss_curve: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FeatVisMethod(ABC):
    """An image-synthesis method; subclasses declare typed parameters in `defaults`."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # What a workflow job hands out as units: "channels" of the layer, "classes" of the logits,
    # "images" to start from (one result per image), or "clusters" of an image set.
    unit_source: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"featvis method {self.name!r} has no parameter {unknown[0]!r}; valid: {sorted(self.defaults)}"
            )
        self.params = {**self.defaults, **params}
        for key, default in self.defaults.items():
            value = self.params[key]
            expected = (int, float) if isinstance(default, float) else type(default)
            if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
                raise ConfigError(
                    f"featvis method {self.name!r} parameter {key!r} must be {type(default).__name__}, "
                    f"got {value!r} ({type(value).__name__})"
                )
        self.validate()

    def validate(self) -> None:
        """Check parameter values beyond their types."""
        for key in ("iterations", "octaves"):
            if isinstance(self.params.get(key), int) and self.params[key] < 1:
                raise ConfigError(f"featvis {self.name!r}: {key} must be >= 1, got {self.params[key]}")
        for key in ("lr", "lr_end"):
            if key in self.params and self.params[key] <= 0:
                raise ConfigError(f"featvis {self.name!r}: {key} must be > 0, got {self.params[key]}")
        for key in ("jitter", "blur_every", "blur_sigma", "scale_jitter", "tv_weight", "decay_weight",
                    "alpha_weight", "size", "grad_pyramid", "init_std"):
            if key in self.params and self.params[key] < 0:
                raise ConfigError(f"featvis {self.name!r}: {key} must be >= 0, got {self.params[key]}")
        if "optimizer" in self.params and self.params["optimizer"] not in ("adam", "normalized"):
            raise ConfigError(
                f"featvis {self.name!r}: optimizer must be 'adam' or 'normalized', got {self.params['optimizer']!r}"
            )
        if self.params.get("octave_scale", 1.0) < 1.0:
            raise ConfigError(f"featvis {self.name!r}: octave_scale must be >= 1, got {self.params['octave_scale']}")
        if self.params.get("scale_jitter", 0.0) >= 1.0:
            raise ConfigError(f"featvis {self.name!r}: scale_jitter must be < 1, got {self.params['scale_jitter']}")

    @abstractmethod
    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """Synthesise images for `units` of `layer`; `images` are RGB [N,3,H,W] in [0,1] where used."""


FEATVIS: Registry[type[FeatVisMethod]] = Registry("featvis method")


def register(cls: type[FeatVisMethod]) -> type[FeatVisMethod]:
    """Class decorator: register a feature-visualization method under its `name`."""
    return FEATVIS.register(cls.name)(cls)


def get(name: str, **params: Any) -> FeatVisMethod:
    """Instantiate feature-visualization method `name` with `params` (validated)."""
    return FEATVIS[name](**params)


def check_images(images: torch.Tensor | None, method: str) -> torch.Tensor:
    """`images` as a float [N,3,H,W] batch in [0,1], or a DataError naming the problem."""
    if images is None or (isinstance(images, torch.Tensor) and images.numel() == 0):
        raise DataError(f"featvis {method!r} needs a non-empty image set: pass images=[N,3,H,W] in [0,1]")
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"featvis {method!r}: images must be a [N,3,H,W] RGB batch, got {tuple(images.shape)}")
    images = images.float()
    low, high = images.min().item(), images.max().item()
    if low < -1e-4 or high > 1 + 1e-4:
        raise DataError(
            f"featvis {method!r}: images must be pixels in [0,1], got range [{low:.3g}, {high:.3g}]; "
            "undo the model normalisation with model.vislib_preprocessing.denormalize(images)"
        )
    return images.clamp(0, 1)


def check_units(units: Sequence[int] | torch.Tensor | None, count: int, what: str, method: str) -> torch.Tensor:
    """`units` as a LongTensor [N] of indices in 0..count-1, or a ConfigError naming the bad one."""
    if units is None:
        raise ConfigError(f"featvis {method!r} needs units: a list of {what} indices in 0..{count - 1}")
    tensor = torch.as_tensor(units, dtype=torch.long).reshape(-1).cpu()
    if tensor.numel() == 0:
        raise ConfigError(f"featvis {method!r}: the list of {what}s is empty; give indices in 0..{count - 1}")
    bad = tensor[(tensor < 0) | (tensor >= count)]
    if bad.numel():
        raise ConfigError(
            f"featvis {method!r}: {what} {int(bad[0])} is out of range; this has {count} {what}s, "
            f"use 0..{count - 1}"
        )
    return tensor


def unit_noise(units: torch.Tensor, size: tuple[int, int], seed: int, std: float) -> torch.Tensor:
    """Grey start images with noise drawn per (seed, unit), so a unit's image never depends on its batch."""
    noise = []
    for unit in units.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + unit)
        noise.append(torch.randn(3, *size, generator=generator))
    return (0.5 + std * torch.stack(noise)).clamp(0, 1)
