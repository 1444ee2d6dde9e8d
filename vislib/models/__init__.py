"""Model registry: architectures by name, weights, carried preprocessing and layer lookup."""

from vislib.models import demonet, efficientnet_lite, torchvision_models  # noqa: F401  (registration)
from vislib.models.registry import (
    MODELS,
    LoadedModel,
    default_layer_of,
    layer_names,
    load,
    preprocessing_of,
    resolve_layer,
    spatial_layer_names,
)
from vislib.preprocessing import Preprocessing, imagenet_class_names

__all__ = [
    "MODELS",
    "default_layer_of",
    "imagenet_class_names",
    "LoadedModel",
    "Preprocessing",
    "layer_names",
    "load",
    "preprocessing_of",
    "resolve_layer",
    "spatial_layer_names",
]
