"""Which units a featvis workflow job visualises: the experiment's `featvis:` settings, unit lists and shards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vislib.featvis.base import FEATVIS, FeatVisMethod

CLASS_LAYER = "logits"
"""Layer name in the outputs of methods whose target is the class logits (class_image), which take no layer."""

SETTING_DEFAULTS: dict[str, Any] = {
    "channels": 8, "classes": 6, "images": 4, "image_set": None, "crops_per_image": 1, "image_size": 0,
    "shard_size": 8,
}
"""Defaults of an experiment's `featvis:` settings (besides `models` and `methods`)."""

SETTINGS_OF_SOURCE = {
    "channels": ("channels",),
    "classes": ("classes",),
    "images": ("images", "image_size"),
    "clusters": ("image_set", "crops_per_image", "image_size"),
}
"""The settings that change the output of a method, by what it takes as units."""


def unit_source(method_name: str) -> str:
    """What the registered method `method_name` takes as units: channels, classes, images or clusters."""
    return FEATVIS[method_name].unit_source


def job_settings(method_name: str, block: dict[str, Any]) -> dict[str, Any]:
    """The experiment settings one method's jobs depend on (its unit source's keys and shard_size), with defaults."""
    keys = (*SETTINGS_OF_SOURCE[unit_source(method_name)], "shard_size")
    return {key: block.get(key, SETTING_DEFAULTS[key]) for key in keys}


def unit_indices(value: int | Sequence[int]) -> list[int]:
    """A count n means the first n indices; a list means those indices."""
    return list(range(value)) if isinstance(value, int) else [int(v) for v in value]


def unit_list(method: FeatVisMethod, settings: dict[str, Any], n_images: int) -> list[int]:
    """Every unit the experiment visualises with `method`: channels, classes, image positions or clusters."""
    source = method.unit_source
    if source in ("channels", "classes"):
        return unit_indices(settings[source])
    if source == "images":
        return list(range(min(settings["images"], n_images)))
    return list(range(method.params["num_clusters"]))


def shard_count(method: FeatVisMethod, settings: dict[str, Any], n_images: int) -> int:
    """How many jobs the units of `method` make at `shard_size` units each."""
    return max(1, math.ceil(len(unit_list(method, settings, n_images)) / settings["shard_size"]))


def random_crops(images: torch.Tensor, crops_per_image: int, seed: int) -> torch.Tensor:
    """`crops_per_image` seeded square crops (half to all of the side) of each image, resized back.

    One crop is the whole image; more crops give a small image set enough members to cluster.
    """
    if crops_per_image == 1:
        return images
    generator = torch.Generator().manual_seed(seed)
    side = images.shape[-1]
    out = []
    for image in images:
        for _ in range(crops_per_image):
            crop = int(side * (0.5 + 0.5 * torch.rand(1, generator=generator).item()))
            y, x = (torch.randint(0, side - crop + 1, (2,), generator=generator)).tolist()
            patch = image[None, :, y:y + crop, x:x + crop]
            out.append(F.interpolate(patch, size=(side, side), mode="bilinear", align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)
