"""Activation maximisation of layer units: filter visualization (from noise) and deep dream (from photos)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vislib.errors import ConfigError
from vislib.featvis.base import (
    INIT_KINDS,
    RECIPE_HELP,
    RECIPES,
    FeatVisMethod,
    FeatVisResult,
    check_images,
    check_init_range,
    check_units,
    register,
    unit_start,
)
from vislib.featvis.engine import (
    PLAIN_SETTINGS,
    EngineSettings,
    optimize,
    probe_layer,
    run,
    settings_from,
    spatial_size,
    tap_layers,
)
from vislib.featvis.fold import fold_batch_norms
from vislib.methods.hooks import frozen_model
from vislib.models.registry import preprocessing_of, resolve_layer
from vislib.params import param, with_defaults

OBJECTIVES = ("channel", "neuron")


def unit_activation(activation: torch.Tensor, units: torch.Tensor | None, objective: str) -> torch.Tensor:
    """Per-image score [N]: unit i's mean ('channel') or centre ('neuron') activation; all units: mean square."""
    if units is None:
        return activation.pow(2).flatten(1).mean(1)
    if activation.ndim == 2:
        per_channel = activation
    elif objective == "neuron" and activation.ndim == 4:
        per_channel = activation[:, :, activation.shape[2] // 2, activation.shape[3] // 2]
    elif objective == "neuron":
        flat = activation.flatten(2)
        per_channel = flat[:, :, flat.shape[2] // 2]
    else:
        per_channel = activation.flatten(2).mean(2)
    return per_channel.gather(1, units.to(activation.device)[:, None])[:, 0]


FILTER_VISUALIZATION_ORIGINAL = {
    **PLAIN_SETTINGS, "objective": "channel", "size": 224, "init": "uniform", "init_range": [150.0, 180.0],
    "optimizer": "adam", "lr": 0.1, "lr_end": 0.1, "weight_decay": 1e-6, "momentum": 0.0, "iterations": 30,
    "projection": "none",
}
"""cnn_layer_visualization.py: Adam(lr 0.1, weight decay 1e-6) for 30 steps from 8-bit uniform noise in [150, 180)."""
DEEP_DREAM_ORIGINAL = {
    **PLAIN_SETTINGS, "objective": "channel", "optimizer": "sgd", "lr": 12.0, "lr_end": 12.0, "weight_decay": 1e-4,
    "momentum": 0.0, "iterations": 250, "projection": "none",
}
"""deep_dream.py: SGD(lr 12, weight decay 1e-4) for 250 steps from the photo."""


@dataclass(frozen=True)
class _DreamParams(EngineSettings):
    recipe: str = param("regularized", RECIPE_HELP, choices=RECIPES)
    objective: str = param("channel", "maximise a channel's mean, or its centre neuron", choices=OBJECTIVES)
    seed: int = param(0, "seed of the jitter (and of the start noise)")


@dataclass(frozen=True)
class _NoiseStartParams(_DreamParams):
    size: int = param(0, "image side in pixels (0: the model's input size)", minimum=0)
    init: str = param("grey", "start image: grey + init_std noise, 8-bit uniform noise in init_range, or "
                              "init_std noise as the normalised image", choices=INIT_KINDS)
    init_std: float = param(0.1, "std of the grey (or normalised) start noise", minimum=0)
    init_range: list[float] = param([150.0, 180.0], "[low, high) of the uniform start's 8-bit pixel values")


class _UnitMaximiser(FeatVisMethod):
    """Shared machinery: maximise unit scores of one layer from given start images."""

    unit_word = "channel"

    def _maximise(self, model: nn.Module, layer: str, units: torch.Tensor | None, init: torch.Tensor,
                  base: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Optimised images, loss curve and start/end activations of `units` (None: whole layer)."""
        preprocessing = preprocessing_of(model)
        objective = self.params["objective"]
        sample = preprocessing.normalize(init[:1])
        model = fold_batch_norms(model, sample, outputs=[layer])
        with frozen_model(model):
            _, stop = probe_layer(model, layer, sample)
            with tap_layers(model, outputs=[layer], stop=stop) as taps:

                def score(normalised: torch.Tensor) -> torch.Tensor:
                    run(model, normalised, taps)
                    return unit_activation(taps.output(layer), units, objective)

                images, curve = optimize(model, lambda x: -score(x), init, settings_from(self.params),
                                         self.params["seed"], base=base)
                with torch.no_grad():
                    start = score(preprocessing.normalize(init))
                    end = score(preprocessing.normalize(images))
        return images, curve, {"activation_start": start.float().cpu(), "activation_end": end.float().cpu()}

    def _layer_units(self, model: nn.Module, layer: str, size: tuple[int, int], device: torch.device) -> int:
        """Number of units (channels) the layer has at this input size."""
        sample = torch.full((1, 3, *size), 0.5, device=device)
        with frozen_model(model):
            shape, _ = probe_layer(model, layer, preprocessing_of(model).normalize(sample))
        if len(shape) < 2:
            raise ConfigError(f"layer {layer!r} outputs shape {shape}; it has no units to visualise")
        return shape[1]


@register
class FilterVisualization(_UnitMaximiser):
    """Filter visualization: images that maximise each given channel (or centre neuron) of a layer.

    All units are optimised in one batch; image i starts from grey noise seeded by (seed, unit i).
    """

    name = "filter_visualization"
    unit_source = "channels"
    recipes = {"original": FILTER_VISUALIZATION_ORIGINAL}
    Params = with_defaults(
        _NoiseStartParams, iterations=24, lr=0.02, lr_end=0.005, optimizer="normalized", grad_pyramid=4,
        decorrelate=True, octaves=4, octave_scale=1.5, jitter=16, scale_jitter=0.1, blur_every=4, blur_sigma=0.5,
    )

    def validate(self) -> None:
        check_init_range(self.params["init_range"], self.name)

    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """One image per unit of `layer`, optimised from noise at `size` (0: the model's input size)."""
        if layer is None:
            raise ConfigError(f"featvis {self.name!r} needs a layer name, e.g. model.vislib_default_layer")
        resolve_layer(model, layer)
        if images is not None:
            raise ConfigError(f"featvis {self.name!r} starts from noise and takes no images; use deep_dream")
        device = next(model.parameters()).device
        side = self.params["size"] or preprocessing_of(model).input_size
        count = self._layer_units(model, layer, (side, side), device)
        units = check_units(units, count, self.unit_word, self.name)
        init = unit_start(self.params["init"], units, (side, side), self.params["seed"], self.params["init_std"],
                          self.params["init_range"], preprocessing_of(model)).to(device)
        result, curve, extras = self._maximise(model, layer, units, init, base=None)
        labels = [f"{layer} {self.params['objective']} {u}" for u in units.tolist()]
        return FeatVisResult(self.name, layer, result.cpu(), units, labels, curve.cpu(), extras)


@register
class DeepDream(_UnitMaximiser):
    """Deep dream: amplify a layer's activations (or given channels) in photos, octave by octave."""

    name = "deep_dream"
    unit_source = "images"
    recipes = {"original": DEEP_DREAM_ORIGINAL}
    Params = with_defaults(
        _DreamParams, iterations=10, lr=0.01, lr_end=0.01, optimizer="normalized", grad_pyramid=4, decorrelate=True,
        octaves=4, octave_scale=1.4, jitter=16,
    )

    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """Dream on `images`; units None amplifies the whole layer, else unit i on image i.

        A single image with several units is dreamed once per unit.
        """
        if layer is None:
            raise ConfigError(f"featvis {self.name!r} needs a layer name, e.g. model.vislib_default_layer")
        resolve_layer(model, layer)
        device = next(model.parameters()).device
        images = check_images(images, self.name).to(device)
        if units is not None:
            count = self._layer_units(model, layer, spatial_size(images), device)
            units = check_units(units, count, self.unit_word, self.name)
            if images.shape[0] == 1:
                images = images.expand(units.numel(), -1, -1, -1).contiguous()
            elif units.numel() != images.shape[0]:
                raise ConfigError(
                    f"featvis {self.name!r}: got {units.numel()} units for {images.shape[0]} images; "
                    "give one unit per image, or one image"
                )
        result, curve, extras = self._maximise(model, layer, units, images, base=images)
        if units is None:
            labels = [f"{layer} all channels, image {i}" for i in range(images.shape[0])]
            units = torch.full((images.shape[0],), -1, dtype=torch.long)
        else:
            labels = [f"{layer} {self.params['objective']} {u}, image {i}" for i, u in enumerate(units.tolist())]
        return FeatVisResult(self.name, layer, result.cpu(), units, labels, curve.cpu(), extras)
