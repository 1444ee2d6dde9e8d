"""The demo net: a small all-convolutional classifier for the synthetic shapes dataset."""

from __future__ import annotations

from torch import nn

from vislib.errors import ConfigError
from vislib.models.registry import MODELS, LoadedModel
from vislib.preprocessing import Preprocessing

DEMO_PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 64)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DemoNet(nn.Module):
    """Four conv stages (stride 8 in all) then global average pooling and one linear layer.

    Ending in GAP + linear makes CAM exact on it and keeps an 8x8 map at 64 px for Grad-CAM.
    """

    def __init__(self, num_classes: int = 6, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(3, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), nn.MaxPool2d(2),
            *_block(4 * w, 4 * w),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@MODELS.register("demonet")
def build_demonet(weights: str, num_classes: int | None) -> LoadedModel:
    """The demo net; its trained weights come from a checkpoint written by the train rule."""
    if weights != "random":
        raise ConfigError(
            f"demonet has no pretrained weights named {weights!r}: use 'random' or the checkpoint "
            "path written by the workflow's train rule"
        )
    model = DemoNet(num_classes or 6)
    return LoadedModel(model, DEMO_PREPROCESSING, [], default_layer="features.14")
