"""Feature inversion (Mahendran & Vedaldi 2015): reconstruct images from one layer's features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vislib.errors import ConfigError
from vislib.featvis.base import FeatVisMethod, FeatVisResult, check_images, register
from vislib.featvis.engine import (
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


@register
class Inversion(FeatVisMethod):
    """Inversion: min ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + alpha-norm + total variation (over H and W)."""

    name = "inversion"
    unit_source = "images"
    @dataclass(frozen=True)
    class _Params(EngineSettings):
        init_std: float = param(0.1, "std of the grey start noise", minimum=0)
        seed: int = param(0, "seed of the start noise and the jitter")

    Params = with_defaults(
        _Params, iterations=100, lr=0.02, lr_end=0.002, optimizer="normalized", grad_pyramid=4, decorrelate=True,
        tv_weight=10.0, tv_beta=2.0, alpha_weight=1e-5, alpha=6.0,
    )

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
        init = (0.5 + self.params["init_std"] * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        init = init.to(device)
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

                result, curve = optimize(model, distance, init, settings_from(self.params), self.params["seed"])
                with torch.no_grad():
                    start = distance(preprocessing.normalize(init)).float().cpu()
                    end = distance(preprocessing.normalize(result)).float().cpu()
        count = images.shape[0]
        labels = [f"{layer} inversion of image {i}" for i in range(count)]
        extras = {"feature_distance_start": start, "feature_distance_end": end}
        return FeatVisResult(self.name, layer, result.cpu(), torch.full((count,), -1, dtype=torch.long),
                             labels, curve.cpu(), extras)
