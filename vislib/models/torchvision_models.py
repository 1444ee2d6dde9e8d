"""torchvision classification architectures, with pretrained weights taken from the local cache only.

The seven below are registered (the presets use them, with a default layer each); every other torchvision
classification model is found by its name (`torchvision.models.list_models`), its default layer the last one with
a spatial output."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vislib.errors import ConfigError
from vislib.models.registry import (
    ARCH_FAMILIES,
    MODELS,
    ArchFamily,
    LoadedModel,
    ModelBuilder,
    is_checkpoint_path,
    missing_weights,
)
from vislib.preprocessing import IMAGENET, Preprocessing, imagenet_class_names

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


WEIGHTS_HOME = "resources/weights"
"""vislib's weights cache, laid out as a TORCH_HOME (hub/checkpoints/<file>); VISLIB_WEIGHTS overrides it."""


def weights_cache_dir() -> Path:
    """vislib's cache of downloaded weights (VISLIB_WEIGHTS or resources/weights, then hub/checkpoints)."""
    return Path(os.environ.get("VISLIB_WEIGHTS", WEIGHTS_HOME)) / "hub" / "checkpoints"


def cached_weights(url: str) -> Path | None:
    """The cached file of a weights URL: in vislib's cache or torch's own (TORCH_HOME), else None."""
    name = os.path.basename(url)
    for directory in (weights_cache_dir(), Path(torch.hub.get_dir()) / "checkpoints"):
        if (directory / name).exists():
            return directory / name
    return None


@contextmanager
def _hub_dir(directory: Path) -> Iterator[None]:
    """Point torch.hub at `directory` while torchvision loads a cached file from it."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(directory))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


def _resolve_weights_enum(arch: str, weights: str):
    # torchvision is imported where it is used: importing it costs seconds in every job that never needs it.
    from torchvision.models import get_model_weights

    enum_cls = get_model_weights(arch)
    short = weights.split(".")[-1]
    if short == "DEFAULT":
        return enum_cls.DEFAULT
    try:
        return enum_cls[short]
    except KeyError:
        valid = ", ".join(["random", "DEFAULT", *[w.name for w in enum_cls]])
        raise ConfigError(f"unknown weights {weights!r} for {arch}; valid: {valid} or a checkpoint path") from None


@functools.cache
def classification_models() -> list[str]:
    """Names of torchvision's classification models (not detection, segmentation, video or optical flow)."""
    import torchvision.models
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


# Architectures with auxiliary heads: random weights build them without (the pretrained weights do the same).
_NO_AUX_LOGITS = ("googlenet", "inception_v3")


def _weights_preprocessing(arch: str, enum=None) -> Preprocessing:
    """Mean, std and input side of the weights' own evaluation transform (the DEFAULT weights' for random ones)."""
    from torchvision.models import get_model_weights

    enum = enum or get_model_weights(arch).DEFAULT
    transforms = enum.transforms()
    if tuple(transforms.mean) == IMAGENET.mean and tuple(transforms.std) == IMAGENET.std \
            and transforms.crop_size[0] == IMAGENET.input_size:
        return IMAGENET
    return Preprocessing(tuple(transforms.mean), tuple(transforms.std), transforms.crop_size[0])


def _build(arch: str, weights: str, num_classes: int | None) -> LoadedModel:
    from torchvision.models import get_model

    if weights == "random":
        kwargs: dict = {"num_classes": num_classes} if num_classes else {}
        if arch in _NO_AUX_LOGITS:
            kwargs.update(aux_logits=False, init_weights=True)
        module = get_model(arch, weights=None, **kwargs)
        class_names = imagenet_class_names() if not num_classes or num_classes == 1000 else []
        return LoadedModel(module, _weights_preprocessing(arch), class_names, DEFAULT_LAYERS.get(arch, ""))
    enum = _resolve_weights_enum(arch, weights)
    cached = cached_weights(enum.url)
    if cached is None:
        name = os.path.basename(enum.url)
        places = f"{weights_cache_dir() / name} (or {Path(torch.hub.get_dir()) / 'checkpoints' / name})"
        raise missing_weights(arch, weights, enum.url, places)
    with _hub_dir(cached.parent.parent):
        module = get_model(arch, weights=enum)
    return LoadedModel(module, _weights_preprocessing(arch, enum), list(enum.meta["categories"]),
                       DEFAULT_LAYERS.get(arch, ""))


def _register(arch: str) -> None:
    @MODELS.register(arch)
    def build(weights: str, num_classes: int | None) -> LoadedModel:
        return _build(arch, weights, num_classes)


for _arch in DEFAULT_LAYERS:
    _register(_arch)


def _resolve(arch: str) -> ModelBuilder | None:
    if arch not in classification_models():
        return None
    return functools.partial(_build, arch)


ARCH_FAMILIES.append(ArchFamily("any torchvision classification model by name (torchvision.models.list_models)",
                                _resolve, classification_models))


def weights_url(arch: str | None, weights: str | None) -> str | None:
    """Download URL of a torchvision pretrained weights name; None for random weights, checkpoints, other archs."""
    if not arch or not weights or weights == "random" or is_checkpoint_path(weights):
        return None
    if arch in DEFAULT_LAYERS or (arch not in MODELS and arch in classification_models()):
        return _resolve_weights_enum(arch, weights).url
    return None
