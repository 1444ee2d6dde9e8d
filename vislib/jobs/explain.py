"""Jobs of rules/explain.smk: one attribution method over one shard of an experiment's images."""

from __future__ import annotations

import logging
from typing import Any

import torch

from vislib.data import DatasetRef
from vislib.io import read_image_list, save_shard
from vislib.pipeline import explain_shard, load_model, shard_ids

log = logging.getLogger(__name__)


def explain(*, image_list: str, shard: int, shard_size: int, method: tuple[str, dict[str, Any]],
            model: dict[str, Any], layer: str, dataset: DatasetRef, target: str, batch_size: int, device: str,
            out: str, top_k: int = 1, decode_threads: int = 1) -> None:
    """Explain shard `shard` of the listed images with `method` (registry name, params), its images decoded by
    `decode_threads` threads; write its heatmaps (with the model's `top_k` classes and the label maps top-k
    localization needs, where `top_k` > 1)."""
    torch.manual_seed(0)
    ids = shard_ids(read_image_list(image_list), shard_size, shard)
    net = load_model(model, device)
    result = explain_shard(net, layer, method[0], method[1], dataset.open(), ids, target, batch_size, top_k,
                           decode_threads=decode_threads)
    log.info("%s on %d images in %.2f s", method[0], len(result.image_ids), result.seconds)
    save_shard(out, result)
