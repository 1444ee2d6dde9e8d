"""Class image generation: images that maximise a class logit, plain or regularised."""

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
    check_init_range,
    check_units,
    register,
    unit_start,
)
from vislib.featvis.engine import PLAIN_SETTINGS, EngineSettings, optimize, settings_from
from vislib.featvis.fold import fold_batch_norms
from vislib.methods.hooks import frozen_model
from vislib.models.layout import probe_image
from vislib.models.registry import preprocessing_of
from vislib.params import param, with_defaults

CLASS_IMAGE_ORIGINAL = {
    **PLAIN_SETTINGS, "regularized": False, "size": 224, "init": "uniform", "init_range": [0.0, 255.0],
    "optimizer": "sgd", "lr": 6.0, "lr_end": 6.0, "momentum": 0.0, "weight_decay": 0.0, "iterations": 149,
    "projection": "uint8",
}
"""generate_class_specific_samples.py: SGD(lr 6) for steps 1..149 from 8-bit uniform noise in [0, 255), the image
rounded to 8 bits after every step."""


@register
class ClassImage(FeatVisMethod):
    """Class image (Simonyan et al. 2014): ascend logit c from noise.

    `regularized` adds L2 decay (towards the mean colour), periodic blur, jitter and octaves;
    plain only keeps pixels in range.
    """

    name = "class_image"
    unit_source = "classes"
    recipes = {"original": CLASS_IMAGE_ORIGINAL}

    @dataclass(frozen=True)
    class _Params(EngineSettings):
        recipe: str = param("regularized", RECIPE_HELP, choices=RECIPES)
        regularized: bool = param(True, "decay, blur, jitter and octaves; false keeps only pixels in range")
        size: int = param(0, "image side in pixels (0: the model's input size)", minimum=0)
        init: str = param("grey", "start image: grey + init_std noise, 8-bit uniform noise in init_range, or "
                                  "init_std noise as the normalised image", choices=INIT_KINDS)
        init_std: float = param(0.1, "std of the grey (or normalised) start noise", minimum=0)
        init_range: list[float] = param([0.0, 255.0], "[low, high) of the uniform start's 8-bit pixel values")
        seed: int = param(0, "seed of the start noise and the jitter")

    Params = with_defaults(
        _Params, iterations=24, lr=0.02, lr_end=0.005, optimizer="normalized", grad_pyramid=4, decorrelate=True,
        octaves=4, octave_scale=1.5, jitter=16, scale_jitter=0.1, blur_every=4, blur_sigma=0.5, decay_weight=0.01,
    )

    def validate(self) -> None:
        check_init_range(self.params["init_range"], self.name)

    def generate(self, model: nn.Module, layer: str | None = None,
                 units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """One image per class index in `units`; `layer` is not used (the logits are the target)."""
        if images is not None:
            raise ConfigError(f"featvis {self.name!r} starts from noise and takes no images")
        preprocessing = preprocessing_of(model)
        device = next(model.parameters()).device
        side = self.params["size"] or preprocessing.input_size
        with frozen_model(model), torch.no_grad():
            num_classes = model(probe_image(side, device)).shape[1]
        classes = check_units(units, num_classes, "class", self.name)
        init = unit_start(self.params["init"], classes, (side, side), self.params["seed"], self.params["init_std"],
                          self.params["init_range"], preprocessing).to(device)
        settings = settings_from(self.params)
        if not self.params["regularized"]:
            settings = settings_from(self.params, octaves=1, jitter=0, scale_jitter=0.0, blur_every=0,
                                     decay_weight=0.0, grad_pyramid=0, decorrelate=False)
        index = classes.to(device)[:, None]
        model = fold_batch_norms(model, preprocessing.normalize(init[:1]))

        def logit(normalised: torch.Tensor) -> torch.Tensor:
            return model(normalised).gather(1, index)[:, 0]

        with frozen_model(model):
            result, curve = optimize(model, lambda x: -logit(x), init, settings, self.params["seed"])
            with torch.no_grad():
                start = logit(preprocessing.normalize(init)).float().cpu()
                end = logit(preprocessing.normalize(result)).float().cpu()
                probability = torch.softmax(model(preprocessing.normalize(result)), 1).gather(1, index)[:, 0]
        names = getattr(model, "vislib_class_names", [])
        labels = [f"class {c}" + (f" ({names[c]})" if c < len(names) else "") for c in classes.tolist()]
        extras = {"logit_start": start, "logit_end": end, "probability_end": probability.float().cpu()}
        return FeatVisResult(self.name, None, result.cpu(), classes, labels, curve.cpu(), extras)
