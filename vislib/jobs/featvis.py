"""Jobs of rules/featvis.smk: synthesise one shard of units, draw a method's grid."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vislib.data import DatasetRef
from vislib.data.dataset import read_image, to_input
from vislib.errors import ConfigError, DataError, ImageDecodeError
from vislib.featvis.base import get
from vislib.featvis.units import CLASS_LAYER, random_crops, unit_list
from vislib.io import FeatVisShard, load_featvis_shard, read_image_list, save_featvis_shard
from vislib.models import ModelSpec, preprocessing_of
from vislib.pipeline import load_model

log = logging.getLogger(__name__)


def load_pixels(dataset: DatasetRef, image_ids: Sequence[int], size: int) -> tuple[torch.Tensor, list[int]]:
    """RGB [N,3,size,size] in [0,1] of the images that decode, and their ids; the others are logged."""
    ds = dataset.open()
    pixels, kept = [], []
    for image_id in image_ids:
        try:
            pixels.append(to_input(read_image(ds.record(image_id).path), size, dataset.resize))
            kept.append(int(image_id))
        except ImageDecodeError as exc:
            log.warning("skipping image %s: %s", image_id, exc)
    if not pixels:
        raise DataError(f"none of the images {list(image_ids)[:8]} of dataset {dataset.root!r} can be "
                        "decoded; check the image files")
    return torch.stack(pixels), kept


def featvis(*, label: str, method: tuple[str, dict[str, Any]], model: dict[str, Any], layer: str, shard: int,
            settings: dict[str, Any], image_list: str, dataset: DatasetRef, seed: int, device: str,
            out: str) -> FeatVisShard:
    """Synthesise the images of shard `shard` of one experiment/model/layer/method (registry name, params)."""
    torch.manual_seed(seed)
    synthesiser = get(method[0], **method[1])
    ids = read_image_list(image_list)
    units = unit_list(synthesiser, settings, len(ids))
    size = settings["shard_size"]
    shard_units = units[shard * size:(shard + 1) * size]
    if not shard_units:
        raise ConfigError(f"featvis {label!r} has {len(units)} units, so shard {shard} is empty; "
                          f"shards run 0..{max(0, math.ceil(len(units) / size) - 1)}")
    net = load_model(model, device)
    side = settings.get("image_size") or preprocessing_of(net).input_size
    target_layer = None if layer == CLASS_LAYER else layer
    extras: dict[str, np.ndarray] = {}
    if synthesiser.unit_source == "images":
        pixels, kept = load_pixels(dataset, [ids[u] for u in shard_units], side)
        begin = time.perf_counter()
        result = synthesiser.generate(net, target_layer, images=pixels)
        image_ids = np.asarray(kept, np.int64)
        extras["start_images"] = pixels.numpy()
    elif synthesiser.unit_source == "clusters":
        set_ids = ids[:settings["image_set"]] if settings["image_set"] else ids
        pixels, kept = load_pixels(dataset, set_ids, side)
        image_set = random_crops(pixels, settings["crops_per_image"], seed)
        begin = time.perf_counter()
        result = synthesiser.generate(net, target_layer, units=shard_units, images=image_set)
        image_ids = np.full(len(result.images), -1, np.int64)
        extras["image_set_ids"] = np.repeat(np.asarray(kept, np.int64), settings["crops_per_image"])
    else:
        begin = time.perf_counter()
        result = synthesiser.generate(net, target_layer, units=shard_units)
        image_ids = np.full(len(result.images), -1, np.int64)
    seconds = time.perf_counter() - begin
    extras.update({k: v.cpu().numpy() for k, v in result.extras.items()})
    log.info("%s (%s) on %s %s: %d images in %.2f s", label, method[0], ModelSpec.from_config(model).name, layer,
             len(result.images), seconds)
    shard_out = FeatVisShard(method=label, layer=layer, images=result.images.numpy(),
                             units=result.units.numpy(), labels=result.labels,
                             loss_curve=result.loss_curve.numpy(), image_ids=image_ids, seconds=seconds,
                             extras=extras)
    save_featvis_shard(out, shard_out)
    return shard_out


def featvis_grid(*, shards: Sequence[str], out: str, title: str) -> None:
    """Draw every image of a method's shards in one grid with its label."""
    from vislib.figures import featvis_grid as draw_featvis_grid

    draw_featvis_grid(out, [load_featvis_shard(path) for path in shards], title)


def featvis_scatter(*, shards: Sequence[str], out: str, title: str) -> None:
    """Draw a class-agnostic method's image-set embedding: its clusters, each cluster's images as thumbnails and
    its synthesised image (from whichever shard made it) at its centre."""
    from vislib.figures import cluster_scatter

    loaded = [load_featvis_shard(path) for path in shards]
    # Every shard clusters the same image set with the same seed, so the first one's embedding is every one's.
    first = loaded[0].extras
    if "thumbnails" not in first:
        raise ConfigError(f"featvis shard {shards[0]!r} holds no thumbnails for the cluster scatter; set `scatter: "
                          "true` on the class_agnostic method and rerun its featvis jobs")
    visualisations = {int(unit): image.transpose(1, 2, 0) for shard in loaded
                      for unit, image in zip(shard.units, shard.images, strict=True)}
    cluster_scatter(out, first["embedding"], first["cluster_of_image"], first["cluster_centres"],
                    first["scatter_members"], first["thumbnails"].transpose(0, 1, 3, 4, 2) / 255, visualisations,
                    title)
