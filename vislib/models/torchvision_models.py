"""torchvision classification architectures, with pretrained weights taken from the local cache only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vislib.errors import ConfigError
from vislib.models.registry import MODELS, LoadedModel, missing_weights
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


def _build(arch: str, weights: str, num_classes: int | None) -> LoadedModel:
    from torchvision.models import get_model

    if weights == "random":
        kwargs = {"num_classes": num_classes} if num_classes else {}
        if arch == "googlenet":
            kwargs.update(aux_logits=False, init_weights=True)
        module = get_model(arch, weights=None, **kwargs)
        class_names = imagenet_class_names() if not num_classes or num_classes == 1000 else []
        return LoadedModel(module, IMAGENET, class_names, DEFAULT_LAYERS[arch])
    enum = _resolve_weights_enum(arch, weights)
    cached = cached_weights(enum.url)
    if cached is None:
        name = os.path.basename(enum.url)
        places = f"{weights_cache_dir() / name} (or {Path(torch.hub.get_dir()) / 'checkpoints' / name})"
        raise missing_weights(arch, weights, enum.url, places)
    with _hub_dir(cached.parent.parent):
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


def weights_url(arch: str, weights: str | None) -> str | None:
    """Download URL of a torchvision pretrained weights name; None for random weights, checkpoints, other archs."""
    is_checkpoint = os.sep in weights or Path(weights).suffix in (".pt", ".pth") if weights else False
    if arch not in DEFAULT_LAYERS or not weights or weights == "random" or is_checkpoint:
        return None
    return _resolve_weights_enum(arch, weights).url
