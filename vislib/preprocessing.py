"""What a network expects of its input (size, normalisation) and the ImageNet class names: shared by models and
data, so that data need not import models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model: size and normalisation statistics."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Map a [N,3,H,W] batch in [0,1] to the model's input space."""
        mean, std = self._statistics(images01)
        return (images01 - mean) / std

    def normalize_(self, images01: torch.Tensor) -> torch.Tensor:
        """`normalize` in place (the same arithmetic), for a batch the caller owns."""
        mean, std = self._statistics(images01)
        return images01.sub_(mean).div_(std)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: model input space back to [0,1] pixels."""
        mean, std = self._statistics(images)
        return images * std + mean

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [3,1,1] in the dtype and on the device of `like`."""
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        return mean[:, None, None], std[:, None, None]


IMAGENET = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (its weights' `categories`, copied into
    vislib: importing torchvision costs about 2 s, which every job on efficientnet_lite0 would pay)."""
    return json.loads(resources.files("vislib").joinpath("imagenet_classes.json").read_text())
