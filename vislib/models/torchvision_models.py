"""torchvision classification architectures, with pretrained weights taken from the local cache only."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torchvision.models import get_model, get_model_weights

from vislib.errors import ConfigError
from vislib.models.registry import IMAGENET, MODELS, LoadedModel, Preprocessing, missing_weights

# The last spatial layer of each architecture: where CAM-style methods look by default.
DEFAULT_LAYERS = {
    "alexnet": "features.11",
    "vgg16": "features.29",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "densenet169": "features",
    "googlenet": "inception5b",
}


def weights_cache_dir() -> Path:
    """Where torchvision looks for downloaded weights (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _resolve_weights_enum(arch: str, weights: str):
    enum_cls = get_model_weights(arch)
    short = weights.split(".")[-1]
    if short == "DEFAULT":
        return enum_cls.DEFAULT
    try:
        return enum_cls[short]
    except KeyError:
        valid = ", ".join(["random", "DEFAULT", *[w.name for w in enum_cls]])
        raise ConfigError(f"unknown weights {weights!r} for {arch}; valid: {valid} or a checkpoint path") from None


def _build(arch: str, weights: str, num_classes: int | None) -> LoadedModel:
    if weights == "random":
        kwargs = {"num_classes": num_classes} if num_classes else {}
        if arch == "googlenet":
            kwargs.update(aux_logits=False, init_weights=True)
        module = get_model(arch, weights=None, **kwargs)
        categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
        class_names = list(categories) if not num_classes or num_classes == 1000 else []
        return LoadedModel(module, IMAGENET, class_names, DEFAULT_LAYERS[arch])
    enum = _resolve_weights_enum(arch, weights)
    filename = weights_cache_dir() / os.path.basename(enum.url)
    if not filename.exists():
        raise missing_weights(arch, weights, enum.url, str(filename))
    module = get_model(arch, weights=enum)
    transforms = enum.transforms()
    preprocessing = Preprocessing(tuple(transforms.mean), tuple(transforms.std), transforms.crop_size[0])
    return LoadedModel(module, preprocessing, list(enum.meta["categories"]), DEFAULT_LAYERS[arch])


def _register(arch: str) -> None:
    @MODELS.register(arch)
    def build(weights: str, num_classes: int | None) -> LoadedModel:
        return _build(arch, weights, num_classes)


for _arch in DEFAULT_LAYERS:
    _register(_arch)
