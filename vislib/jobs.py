"""One function per workflow job, so the Snakemake glue scripts only pass paths and params.

Every job is a fresh Python process, so start-up is paid per job: modules only some jobs need
(pandas via vislib.aggregate, matplotlib via vislib.figures) are imported inside those jobs' functions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch

from vislib import models
from vislib.data import DATASETS, open_dataset
from vislib.io import (
    load_shard,
    provenance,
    read_image_list,
    save_shard,
    write_json,
    write_parquet,
    write_text,
)
from vislib.methods import to_image_maps
from vislib.metrics import target_boxes
from vislib.pipeline import (
    evaluate_shard,
    explain_shard,
    load_model,
    resolve_device,
    select_images,
    shard_ids,
)
from vislib.training import TrainConfig, save_checkpoint, train_classifier

log = logging.getLogger(__name__)


def prepare_dataset(spec: dict[str, Any], root: str, marker: str) -> None:
    """Create a dataset on disk and write a marker with its image counts last."""
    counts = DATASETS[spec["kind"]].prepare(root, **spec.get("params", {}))
    log.info("prepared %s under %s: %s", spec["kind"], root, counts)
    write_json(marker, {"kind": spec["kind"], "counts": counts, "params": spec.get("params", {})})


def write_image_list(dataset: dict[str, Any], name: str, out: str) -> None:
    """Write the ids an experiment explains, one per line."""
    ds = open_dataset(dataset["kind"], name, dataset["root"], dataset["split"])
    ids = select_images(ds, dataset.get("limit"))
    write_text(out, "".join(f"{i}\n" for i in ids))
    log.info("%d images listed for %s", len(ids), name)


def train_model(arch: str, train: dict[str, Any], dataset: dict[str, Any], device: str,
                checkpoint: str, history_path: str, curve_path: str) -> dict:
    """Train a model on a dataset's train split; write checkpoint, history JSON and curve plot."""
    torch.manual_seed(train.get("seed", 0))
    train_set = open_dataset(dataset["kind"], "train", dataset["root"], "train")
    val_set = open_dataset(dataset["kind"], "val", dataset["root"], "val")
    model = models.load(arch, "random", resolve_device(device), num_classes=len(train_set.label_names))
    cfg = TrainConfig(**{k: v for k, v in train.items() if k != "dataset"})
    history = train_classifier(model, train_set, val_set, cfg)
    save_checkpoint(checkpoint, model, train_set.label_names, arch, history)
    write_json(history_path, history)
    # Imported here: matplotlib costs every other job that imports this module a second.
    from vislib.figures import training_curve

    training_curve(curve_path, history)
    log.info("val accuracy %.4f", history["val_accuracy"])
    return history


def explain(image_list: str, shard: int, shard_size: int, method: tuple[str, dict], model: dict, layer: str,
            dataset: dict, target: str, batch_size: int, device: str, out: str) -> None:
    """Explain one shard of an experiment and write its heatmap shard."""
    torch.manual_seed(0)
    ids = shard_ids(read_image_list(image_list), shard_size, shard)
    net = load_model(model, device)
    ds = open_dataset(dataset["kind"], "explain", dataset["root"], dataset["split"])
    result = explain_shard(net, layer, method[0], method[1], ds, ids, target, batch_size)
    log.info("%s on %d images in %.2f s", method[0], len(result.image_ids), result.seconds)
    save_shard(out, result)


def evaluate(heatmaps: str, metrics: dict[str, tuple[str, dict]], model: dict, dataset: dict,
             labels: dict[str, Any], device: str, out: str) -> None:
    """Score a heatmap shard and write its metric rows."""
    shard = load_shard(heatmaps)
    net = load_model(model, device)
    ds = open_dataset(dataset["kind"], "evaluate", dataset["root"], dataset["split"])
    registry_specs = {label: params for label, (_, params) in metrics.items()}
    names = {label: name for label, (name, _) in metrics.items()}
    table = evaluate_shard(shard, ds, net, {names[k]: v for k, v in registry_specs.items()}, labels)
    write_parquet(out, table, provenance(None, str(resolve_device(device))))


def aggregate_experiment(files: list[str], outputs: dict[str, str], experiment: str,
                         experiment_config: dict, device: str) -> None:
    """Aggregate an experiment's metric shards into its tables."""
    from vislib.aggregate import aggregate

    meta = provenance(experiment_config, str(resolve_device(device)))
    meta["experiment_config"] = json.dumps(experiment_config, sort_keys=True, default=str)
    aggregate(files, outputs["metrics"], outputs["summary"], outputs["summary_md"], meta, title=experiment)


def figure_grid(heatmaps: list[str], methods: list[str], n_images: int, model: dict, dataset: dict,
                layer: str, title: str, out: str) -> None:
    """Draw the first images of the first shard with every method's map and the target boxes."""
    from vislib.figures import overlay_grid

    shards = [load_shard(p) for p in heatmaps]
    ids = [int(i) for i in shards[0].image_ids[:n_images]]
    preprocessing = models.load(model["arch"], "random", num_classes=model.get("num_classes")).vislib_preprocessing
    ds = open_dataset(dataset["kind"], "figure", dataset["root"], dataset["split"])
    batch = ds.load_batch(ids, preprocessing)
    size = preprocessing.input_size
    images = preprocessing.denormalize(batch.images).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    maps = {}
    for name, shard in zip(methods, shards, strict=True):
        index = {int(i): k for k, i in enumerate(shard.image_ids)}
        rows = [index[i] for i in batch.image_ids]
        maps[name] = to_image_maps(torch.from_numpy(shard.maps[rows].astype(np.float32)), (size, size)).numpy()
    targets = shards[0].targets[[{int(i): k for k, i in enumerate(shards[0].image_ids)}[i] for i in batch.image_ids]]
    names = ds.label_names
    boxes = [target_boxes(s, int(t)) for s, t in zip(batch.samples, targets, strict=True)]
    row_titles = [f"#{s.image_id} {names[int(t)][:18]}" for s, t in zip(batch.samples, targets, strict=True)]
    overlay_grid(out, images, maps, boxes, row_titles, title)
