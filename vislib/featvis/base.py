"""The feature-visualization contract: a registry, the result type and shared input checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vislib.errors import ConfigError, DataError
from vislib.params import NoParams, as_dict, parse
from vislib.preprocessing import Preprocessing
from vislib.registry import Registry

RECIPES = ("regularized", "original")
"""Values of every featvis method's `recipe` parameter: vislib's regularised defaults, or the original code's."""
RECIPE_HELP = ("regularized: vislib's defaults; original: every value of the original code (docs/featvis.md); "
               "parameters given explicitly override the recipe's")


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
    """An image-synthesis method; subclasses declare their parameters in a `Params` dataclass."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # What a workflow job hands out as units: "channels" of the layer, "classes" of the logits,
    # "images" to start from (one result per image), or "clusters" of an image set.
    unit_source: ClassVar[str] = ""
    # Parameter values each `recipe` sets, in place of the declared defaults (a recipe not listed sets none).
    recipes: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, **params: Any) -> None:
        owner = f"featvis method {self.name!r}"
        given = as_dict(parse(owner, self.Params, params))  # checks the names and values given, recipe included
        recipe = self.recipes.get(given.get("recipe", ""), {})
        # A recipe replaces defaults only: a parameter given explicitly keeps its given value.
        self.params: dict[str, Any] = as_dict(parse(owner, self.Params, {**recipe, **params}))
        self.validate()

    def validate(self) -> None:  # noqa: B027  (optional hook: most methods need no checks across parameters)
        """Check parameter values beyond what their declaration says (override where needed)."""

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


INIT_KINDS = ("grey", "uniform", "normal")
"""Start images: grey + noise in pixels, 8-bit uniform noise, or noise as the model-normalised image."""


def draw_start(kind: str, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """The random numbers a start image of `kind` is made of: uniform in [0,1) for 'uniform', else standard normal."""
    if kind == "uniform":
        return torch.rand(tuple(shape), generator=generator)
    return torch.randn(tuple(shape), generator=generator)


def start_from_draws(kind: str, draws: torch.Tensor, std: float, value_range: Sequence[float],
                     preprocessing: Preprocessing) -> torch.Tensor:
    """Start images in [0,1] from `draw_start`'s numbers.

    grey: 0.5 + std * N(0,1) per pixel. uniform: integer pixel values floor(U[low, high)) / 255, the 8-bit image
    `np.uint8(np.random.uniform(low, high, ...))` makes. normal: std * N(0,1) as the model-normalised image, i.e.
    the mean colour plus std * N(0,1) model standard deviations (`0.1 * torch.randn` of the original inversion).
    """
    if kind == "uniform":
        low, high = value_range
        return (torch.floor(low + (high - low) * draws).clamp(0, 255) / 255).float()
    if kind == "normal":
        return preprocessing.denormalize(std * draws).clamp(0, 1)
    return (0.5 + std * draws).clamp(0, 1)


def unit_start(kind: str, units: torch.Tensor, size: tuple[int, int], seed: int, std: float,
               value_range: Sequence[float], preprocessing: Preprocessing) -> torch.Tensor:
    """Start images [N,3,H,W] drawn per (seed, unit), so a unit's image never depends on its batch."""
    draws = []
    for unit in units.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + unit)
        draws.append(draw_start(kind, (3, *size), generator))
    return start_from_draws(kind, torch.stack(draws), std, value_range, preprocessing)


def check_init_range(value_range: Sequence[float], method: str) -> None:
    """`init_range` is [low, high) with 0 <= low < high <= 256 (8-bit pixel values); ConfigError otherwise."""
    if len(value_range) != 2 or not 0 <= value_range[0] < value_range[1] <= 256:
        raise ConfigError(f"featvis {method!r}: init_range must be [low, high] with 0 <= low < high <= 256 "
                          f"(8-bit pixel values), got {list(value_range)}")
