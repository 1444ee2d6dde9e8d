"""Model registry: architectures by name, weights, carried preprocessing and layer lookup."""

from vislib.models import demonet, efficientnet_lite, timm_models, torchvision_models  # noqa: F401  (registration)
from vislib.models.layout import Layout, layer_layout, model_device, probe_image, spatial_view
from vislib.models.registry import (
    ARCH_FAMILIES,
    MODELS,
    LoadedModel,
    builder_for,
    default_layer_of,
    last_spatial_layer,
    layer_layouts,
    layer_names,
    load,
    preprocessing_of,
    resolve_layer,
    spatial_layer_names,
)
from vislib.models.spec import ModelSpec, load_spec
from vislib.models.user import is_torchscript
from vislib.preprocessing import Preprocessing, imagenet_class_names

__all__ = [
    "ARCH_FAMILIES",
    "MODELS",
    "ModelSpec",
    "builder_for",
    "is_torchscript",
    "last_spatial_layer",
    "Layout",
    "layer_layout",
    "layer_layouts",
    "load_spec",
    "model_device",
    "probe_image",
    "default_layer_of",
    "imagenet_class_names",
    "LoadedModel",
    "Preprocessing",
    "layer_names",
    "load",
    "preprocessing_of",
    "resolve_layer",
    "spatial_layer_names",
    "spatial_view",
]
