"""The library steps jobs are built from: devices, models from a workflow spec, explaining and scoring a shard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vislib import devices, methods, metrics, models
from vislib.data.dataset import CocoFormatDataset
from vislib.errors import ConfigError
from vislib.io import HeatmapShard
from vislib.runlog import Progress

log = logging.getLogger(__name__)

TARGET_MODES = ("label", "predicted")

METRIC_COLUMNS = [
    ("experiment", pa.string()), ("dataset", pa.string()), ("model", pa.string()), ("layer", pa.string()),
    ("method", pa.string()), ("image_id", pa.int64()), ("target", pa.int64()), ("predicted", pa.int64()),
    ("metric", pa.string()), ("value", pa.float64()), ("reason", pa.string()),
    ("target_mode", pa.string()), ("resize", pa.string()), ("image_size", pa.int64()),
    ("seconds_per_image", pa.float64()),
]
METRICS_SCHEMA = pa.schema(METRIC_COLUMNS)


def select_images(dataset: CocoFormatDataset, limit: int | None) -> list[int]:
    """The image ids an experiment uses: the first `limit` ids of the split in id order (all if None)."""
    ids = dataset.image_ids()
    return ids if not limit else ids[:limit]


def shard_count(n_images: int, shard_size: int) -> int:
    """How many shards `n_images` make at `shard_size` images each."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    return max(1, math.ceil(n_images / shard_size))


def shard_ids(image_ids: Sequence[int], shard_size: int, shard: int) -> list[int]:
    """Image ids of shard number `shard`."""
    return list(image_ids[shard * shard_size:(shard + 1) * shard_size])


def resolve_device(device: str) -> torch.device:
    """The torch device for a config value ('cpu', 'cuda', 'cuda:1', or 'auto')."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; set device: cpu")
    if device == "cuda":
        # A bare 'cuda' means any GPU: take a free one so parallel jobs never share a device.
        return torch.device("cuda", devices.process_gpu().index)
    return torch.device(device)


def load_model(spec: dict[str, Any], device: str) -> torch.nn.Module:
    """Load a model described by the workflow's model spec (arch, weights, num_classes)."""
    return models.load(spec["arch"], spec["weights"], resolve_device(device), num_classes=spec.get("num_classes"))


def explain_shard(model: torch.nn.Module, layer: str, method_name: str, method_params: dict[str, Any],
                  dataset: CocoFormatDataset, image_ids: Sequence[int], target_mode: str = "label",
                  batch_size: int = 32) -> HeatmapShard:
    """Run one attribution method over a shard of images, in batches; undecodable images are recorded."""
    if target_mode not in TARGET_MODES:
        raise ConfigError(f"target mode {target_mode!r} is not one of {TARGET_MODES}")
    method = methods.get(method_name, **method_params)
    device = next(model.parameters()).device
    maps, ids, targets, predicted, failures = [], [], [], [], {}
    extras: dict[str, list[np.ndarray]] = {}
    seconds = 0.0
    progress = Progress(len(image_ids), f"explain {method_name}")
    for start in range(0, len(image_ids), batch_size):
        batch = dataset.load_batch(list(image_ids[start:start + batch_size]), models.preprocessing_of(model))
        progress.update(len(batch.samples) + len(batch.failures))
        failures.update(batch.failures)
        if not batch.samples:
            continue
        images = batch.images.to(device)
        wanted = batch.labels.to(device) if target_mode == "label" else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        result = method.explain(model, layer, images, wanted)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - tick
        maps.append(result.maps.detach().float().cpu().numpy())
        ids.extend(batch.image_ids)
        targets.append(result.targets.cpu().numpy())
        predicted.append(result.predicted.cpu().numpy())
        for key, value in result.extras.items():
            extras.setdefault(key, []).append(torch.as_tensor(value).cpu().numpy())
    if failures:
        log.warning("%d image(s) failed to decode: %s", len(failures), "; ".join(failures.values()))
    return HeatmapShard(
        maps=np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32),
        image_ids=np.array(ids, np.int64),
        targets=np.concatenate(targets) if targets else np.zeros(0, np.int64),
        predicted=np.concatenate(predicted) if predicted else np.zeros(0, np.int64),
        seconds=seconds,
        failed_ids=np.array(sorted(failures), np.int64),
        failed_reasons=[failures[i] for i in sorted(failures)],
        extras={k: np.concatenate(v) for k, v in extras.items()},
    )


def evaluate_shard(shard: HeatmapShard, dataset: CocoFormatDataset, model: torch.nn.Module,
                   metric_specs: dict[str, dict[str, Any]], labels: dict[str, Any]) -> pa.Table:
    """Score a heatmap shard with each metric: one row per (image, metric), failures as NaN with a reason."""
    preprocessing = models.preprocessing_of(model)
    size = preprocessing.input_size
    metric_objects = {name: metrics.get(name, **params) for name, params in metric_specs.items()}
    n_ok = len(shard.image_ids)
    seconds_per_image = shard.seconds / n_ok if n_ok else float("nan")
    rows: list[dict[str, Any]] = []
    common = {**labels, "resize": dataset.resize, "image_size": size, "seconds_per_image": seconds_per_image}
    if n_ok:
        batch = dataset.load_batch([int(i) for i in shard.image_ids], preprocessing)
        decoded = {s.image_id for s in batch.samples}
        keep = [i for i, image_id in enumerate(shard.image_ids) if int(image_id) in decoded]
        device = next(model.parameters()).device
        image_maps = methods.to_image_maps(torch.from_numpy(shard.maps[keep].astype(np.float32)), (size, size))
        # Normalising would turn a map with NaN into a constant one; keep it NaN so metrics record why.
        broken = ~np.isfinite(shard.maps[keep].astype(np.float32)).reshape(len(keep), -1).all(1)
        image_maps[torch.from_numpy(broken)] = float("nan")
        metric_input = metrics.MetricInput(image_maps.to(device), batch.images.to(device),
                                           torch.from_numpy(shard.targets[keep]).to(device), batch.samples, model,
                                           torch.from_numpy(shard.predicted[keep]).to(device))
        # Under a cropping protocol, how many objects of each image the crop cut off (they are not scored against).
        cut_off = ([{"boxes_outside_crop": s.outside_crop} for s in batch.samples] if dataset.resize != "stretch"
                   else [{} for _ in batch.samples])
        progress = Progress(len(metric_objects) * len(keep), "evaluate")
        for name, metric in metric_objects.items():
            result = metric(metric_input)
            progress.update(len(keep))
            settings = metric.settings(size)
            for j, i in enumerate(keep):
                rows.append({**common, **settings, **cut_off[j], "image_id": int(shard.image_ids[i]),
                             "target": int(shard.targets[i]), "predicted": int(shard.predicted[i]),
                             "metric": name, "value": float(result.values[j]), "reason": result.reasons[j],
                             **{key: array[j].tolist() for key, array in result.per_image.items()}})
        for i in sorted(set(range(n_ok)) - set(keep)):
            rows.extend(_failed_rows(common, int(shard.image_ids[i]), metric_objects, "image failed to decode"))
    for image_id, reason in zip(shard.failed_ids, shard.failed_reasons, strict=True):
        rows.extend(_failed_rows(common, int(image_id), metric_objects, reason))
    return rows_to_table(rows)


def _failed_rows(common: dict, image_id: int, metric_objects: dict, reason: str) -> list[dict]:
    return [{**common, "image_id": image_id, "target": -1, "predicted": -1, "metric": name,
             "value": float("nan"), "reason": reason} for name in metric_objects]


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table: the fixed metric columns first, then one column per protocol setting that applies."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=None if rows else [name for name, _ in METRIC_COLUMNS])
    fixed = [name for name, _ in METRIC_COLUMNS]
    extra = sorted(c for c in frame.columns if c not in fixed)
    arrays = [pa.array(frame[name].tolist() if name in frame else [None] * len(frame), type=kind)
              for name, kind in METRIC_COLUMNS]
    # from_pandas: a setting only some metrics have is null (not a float NaN) in the other rows.
    arrays += [pa.array(frame[name].tolist(), from_pandas=True) for name in extra]
    return pa.Table.from_arrays(arrays, names=fixed + extra)
