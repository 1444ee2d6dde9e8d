"""Feature-visualization workflow jobs: which units a job visualises, the images it starts from, one shard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vislib.data import open_dataset
from vislib.data.dataset import read_image, to_input
from vislib.errors import ConfigError, DataError, ImageDecodeError
from vislib.featvis.base import FEATVIS, FeatVisMethod, get
from vislib.io import FeatVisShard, read_image_list, save_featvis_shard
from vislib.pipeline import load_model

log = logging.getLogger(__name__)

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


def load_pixels(dataset: dict[str, Any], image_ids: Sequence[int], size: int) -> tuple[torch.Tensor, list[int]]:
    """RGB [N,3,size,size] in [0,1] of the images that decode, and their ids; the others are logged."""
    ds = open_dataset(dataset["kind"], "featvis", dataset["root"], dataset["split"])
    pixels, kept = [], []
    for image_id in image_ids:
        try:
            pixels.append(to_input(read_image(ds.record(image_id).path), size))
            kept.append(int(image_id))
        except ImageDecodeError as exc:
            log.warning("skipping image %s: %s", image_id, exc)
    if not pixels:
        raise DataError(f"none of the images {list(image_ids)[:8]} of dataset {dataset['root']!r} can be "
                        "decoded; check the image files")
    return torch.stack(pixels), kept


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


def featvis_shard(label: str, method_spec: tuple[str, dict[str, Any]], model: dict[str, Any], layer: str,
                  shard: int, settings: dict[str, Any], image_list: str, dataset: dict[str, Any], seed: int,
                  device: str, out: str) -> FeatVisShard:
    """Synthesise the images of shard `shard` of one experiment/model/layer/method and write them."""
    torch.manual_seed(seed)
    method = get(method_spec[0], **method_spec[1])
    ids = read_image_list(image_list)
    units = unit_list(method, settings, len(ids))
    size = settings["shard_size"]
    shard_units = units[shard * size:(shard + 1) * size]
    if not shard_units:
        raise ConfigError(f"featvis {label!r} has {len(units)} units, so shard {shard} is empty; "
                          f"shards run 0..{max(0, math.ceil(len(units) / size) - 1)}")
    net = load_model(model, device)
    side = settings.get("image_size") or net.vislib_preprocessing.input_size
    target_layer = None if layer == CLASS_LAYER else layer
    extras: dict[str, np.ndarray] = {}
    if method.unit_source == "images":
        pixels, kept = load_pixels(dataset, [ids[u] for u in shard_units], side)
        begin = time.perf_counter()
        result = method.generate(net, target_layer, images=pixels)
        image_ids = np.asarray(kept, np.int64)
        extras["start_images"] = pixels.numpy()
    elif method.unit_source == "clusters":
        set_ids = ids[:settings["image_set"]] if settings["image_set"] else ids
        pixels, kept = load_pixels(dataset, set_ids, side)
        image_set = random_crops(pixels, settings["crops_per_image"], seed)
        begin = time.perf_counter()
        result = method.generate(net, target_layer, units=shard_units, images=image_set)
        image_ids = np.full(len(result.images), -1, np.int64)
        extras["image_set_ids"] = np.repeat(np.asarray(kept, np.int64), settings["crops_per_image"])
    else:
        begin = time.perf_counter()
        result = method.generate(net, target_layer, units=shard_units)
        image_ids = np.full(len(result.images), -1, np.int64)
    seconds = time.perf_counter() - begin
    extras.update({k: v.cpu().numpy() for k, v in result.extras.items()})
    log.info("%s (%s) on %s %s: %d images in %.2f s", label, method_spec[0], model["arch"], layer,
             len(result.images), seconds)
    shard_out = FeatVisShard(method=label, layer=layer, images=result.images.numpy(),
                             units=result.units.numpy(), labels=result.labels,
                             loss_curve=result.loss_curve.numpy(), image_ids=image_ids, seconds=seconds,
                             extras=extras)
    save_featvis_shard(out, shard_out)
    return shard_out
