"""Jobs of rules/aggregate.smk: an experiment's tables, and its figure grid of maps per dataset/model/layer."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from vislib import models
from vislib.data import DatasetRef
from vislib.io import load_shard, provenance, read_metadata
from vislib.methods import get as get_method
from vislib.methods import to_display_maps
from vislib.metrics import target_boxes
from vislib.pipeline import load_model


def aggregate(*, metric_shards: list[str], metrics: str, summary: str, summary_md: str, summary_html: str,
              comparisons: str, experiment: str, experiment_config: dict[str, Any], device: str) -> None:
    """Aggregate an experiment's metric shards into metrics.parquet, summary.parquet, comparisons.parquet and
    summary.md.

    The tables' `device` is that of the evaluate jobs that made the shards (each records its own, e.g. `cuda:1`),
    the distinct ones joined by ", "; the configured `device` where there are no shards. The job itself runs on a
    CPU (its rule asks for no GPU): resolving `cuda` here claimed a GPU it does not use, and failed on a node
    without one or while other jobs held every GPU.
    """
    from vislib.aggregate import write_tables

    devices = sorted({read_metadata(path).get("device", "") for path in metric_shards} - {""})
    meta = provenance(experiment_config, ", ".join(devices) or device)
    meta["experiment_config"] = json.dumps(experiment_config, sort_keys=True, default=str)
    write_tables(metric_shards, metrics, summary, summary_md, meta, title=experiment, comparisons_path=comparisons,
                 summary_html_path=summary_html)


def figure_grid(*, heatmaps: list[str], methods: dict[str, tuple[str, dict[str, Any]]], n_images: int,
                model: dict[str, Any], dataset: DatasetRef, title: str, out: str) -> None:
    """Draw the first images of the first shard with every method's map ({label: (registry name, params)}, one
    heatmap shard each, in order) and the target boxes; signed maps on a diverging colormap centred at 0."""
    from vislib.figures import overlay_grid

    shards = [load_shard(p) for p in heatmaps]
    ids = [int(i) for i in shards[0].image_ids[:n_images]]
    # Random weights: only the preprocessing is read, and it does not depend on them.
    preprocessing = models.preprocessing_of(load_model({**model, "weights": "random"}, "cpu"))
    ds = dataset.open()
    batch = ds.load_batch(ids, preprocessing)
    size = preprocessing.input_size
    images = preprocessing.denormalize(batch.images).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    maps = {}
    signed = {label for label, (name, params) in methods.items() if get_method(name, **params).maps_are_signed()}
    for label, shard in zip(methods, shards, strict=True):
        index = {int(i): k for k, i in enumerate(shard.image_ids)}
        rows = [index[i] for i in batch.image_ids]
        raw = torch.from_numpy(shard.maps[rows].astype(np.float32))
        maps[label] = to_display_maps(raw, (size, size), label in signed).numpy()
    first = {int(i): k for k, i in enumerate(shards[0].image_ids)}
    targets = shards[0].targets[[first[i] for i in batch.image_ids]]
    names = ds.label_names
    boxes = [target_boxes(s, int(t)) for s, t in zip(batch.samples, targets, strict=True)]
    row_titles = [f"#{s.image_id} {names[int(t)][:18]}" for s, t in zip(batch.samples, targets, strict=True)]
    overlay_grid(out, images, maps, boxes, row_titles, title, signed=signed)
