"""Feature inversion (Mahendran & Vedaldi 2015): reconstruct images from one layer's features."""

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
    draw_start,
    register,
    start_from_draws,
)
from vislib.featvis.engine import (
    PLAIN_SETTINGS,
    EngineSettings,
    optimize,
    probe_layer,
    resize,
    run,
    settings_from,
    spatial_size,
    tap_layers,
)
from vislib.featvis.fold import fold_batch_norms
from vislib.methods.hooks import frozen_model
from vislib.models.registry import preprocessing_of, resolve_layer
from vislib.params import param, with_defaults

INVERSION_ORIGINAL = {
    **PLAIN_SETTINGS, "init": "normal", "init_std": 0.1, "optimizer": "sgd", "lr": 1e4, "momentum": 0.9,
    "weight_decay": 0.0, "lr_decay_every": 40, "lr_decay_factor": 0.1, "iterations": 201, "feature_weight": 0.1,
    "alpha": 6.0, "alpha_weight": 1e-7, "tv_beta": 2.0, "tv_weight": 1e-8, "penalty_reduction": "sum",
    "projection": "none",
}
"""inverted_representation.py: SGD(lr 1e4, momentum 0.9) on 0.1 N(0,1) in normalised space for 201 steps, lr / 10
after step 0 and every 40; 0.1 distance + 1e-7 sum x^6 + 1e-8 TV sum (over H and W here, see docs)."""


@register
class Inversion(FeatVisMethod):
    """Inversion: min w ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + alpha-norm + total variation (over H and W)."""

    name = "inversion"
    unit_source = "images"
    recipes = {"original": INVERSION_ORIGINAL}

    @dataclass(frozen=True)
    class _Params(EngineSettings):
        recipe: str = param("regularized", RECIPE_HELP, choices=RECIPES)
        feature_weight: float = param(1.0, "weight w of the normalised feature distance", exclusive_minimum=0)
        init: str = param("grey", "start image: grey + init_std noise, 8-bit uniform noise in init_range, or "
                                  "init_std noise as the normalised image", choices=INIT_KINDS)
        init_std: float = param(0.1, "std of the grey (or normalised) start noise", minimum=0)
        init_range: list[float] = param([0.0, 255.0], "[low, high) of the uniform start's 8-bit pixel values")
        seed: int = param(0, "seed of the start noise and the jitter")

    Params = with_defaults(
        _Params, iterations=100, lr=0.02, lr_end=0.002, optimizer="normalized", grad_pyramid=4, decorrelate=True,
        tv_weight=10.0, tv_beta=2.0, alpha_weight=1e-5, alpha=6.0,
    )

    def validate(self) -> None:
        check_init_range(self.params["init_range"], self.name)

    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """Reconstruct each of `images` from its `layer` features, starting from grey noise."""
        if layer is None:
            raise ConfigError(f"featvis {self.name!r} needs a layer name, e.g. model.vislib_default_layer")
        if units is not None:
            raise ConfigError(f"featvis {self.name!r} inverts whole layers and takes no units")
        resolve_layer(model, layer)
        preprocessing = preprocessing_of(model)
        device = next(model.parameters()).device
        images = check_images(images, self.name).to(device)
        generator = torch.Generator().manual_seed(self.params["seed"])
        kind = self.params["init"]
        init = start_from_draws(kind, draw_start(kind, images.shape, generator), self.params["init_std"],
                                self.params["init_range"], preprocessing).to(device)
        targets: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        sample = preprocessing.normalize(images[:1])
        model = fold_batch_norms(model, sample, outputs=[layer])
        with frozen_model(model):
            _, stop = probe_layer(model, layer, sample)
            with tap_layers(model, outputs=[layer], stop=stop) as taps:

                def features(normalised: torch.Tensor) -> torch.Tensor:
                    run(model, normalised, taps)
                    return taps.output(layer).flatten(1)

                def distance(normalised: torch.Tensor) -> torch.Tensor:
                    # Octaves see smaller canvases, so the target is the image's features at that size.
                    size = spatial_size(normalised)
                    if size not in targets:
                        with torch.no_grad():
                            target = features(preprocessing.normalize(resize(images, size)))
                        targets[size] = (target, target.pow(2).sum(1).clamp_min(1e-12))
                    target, norm = targets[size]
                    return (features(normalised) - target).pow(2).sum(1) / norm

                weight = self.params["feature_weight"]
                result, curve = optimize(model, lambda x: weight * distance(x), init, settings_from(self.params),
                                         self.params["seed"])
                with torch.no_grad():
                    start = distance(preprocessing.normalize(init)).float().cpu()
                    end = distance(preprocessing.normalize(result)).float().cpu()
        count = images.shape[0]
        labels = [f"{layer} inversion of image {i}" for i in range(count)]
        extras = {"feature_distance_start": start, "feature_distance_end": end}
        return FeatVisResult(self.name, layer, result.cpu(), torch.full((count,), -1, dtype=torch.long),
                             labels, curve.cpu(), extras)
