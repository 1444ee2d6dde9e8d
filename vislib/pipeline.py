"""The library steps jobs are built from: devices, models from a workflow spec, explaining and scoring a shard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vislib import devices, methods, metrics, models
from vislib.data.dataset import Batch, CocoFormatDataset, Sample
from vislib.errors import ConfigError
from vislib.io import HeatmapShard
from vislib.methods.base import fast_layout
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


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`images` on `device`; from pinned memory (a CUDA job's batches) the copy does not wait for the GPU, and
    the kernels queued after it on the same stream see it complete."""
    return images.to(device, non_blocking=device.type == "cuda" and images.is_pinned())


def load_model(spec: dict[str, Any], device: str) -> torch.nn.Module:
    """Load a model described by the workflow's model spec (a `models:` entry with its weights resolved)."""
    return models.load_spec(spec, resolve_device(device))


def explain_shard(model: torch.nn.Module, layer: str, method_name: str, method_params: dict[str, Any],
                  dataset: CocoFormatDataset, image_ids: Sequence[int], target_mode: str = "label",
                  batch_size: int = 32, top_k: int = 1, read_ahead: int = 1, decode_threads: int = 1) -> HeatmapShard:
    """Run one attribution method over a shard of images, in batches; undecodable images are recorded. The next
    `read_ahead` batches are read, each by `decode_threads` threads, while the method works on this one
    (`CocoFormatDataset.batches`).

    With `top_k` > 1 the shard also records the model's `top_k` classes of each image (extra `topk`, [N,k]) and,
    under `target_mode` predicted, the map of each image's label where the label is one of those classes but not
    the explained one (extra `label_maps`, [N,h,w], NaN rows elsewhere): top-k localization needs no other map,
    since only the label's own map can localize it. `seconds` times the explained maps only.
    """
    if target_mode not in TARGET_MODES:
        raise ConfigError(f"target mode {target_mode!r} is not one of {TARGET_MODES}")
    method = methods.get(method_name, **method_params)
    device = next(model.parameters()).device
    maps, ids, targets, predicted, failures = [], [], [], [], {}
    extras: dict[str, list[np.ndarray]] = {}
    recorded: dict[str, list[np.ndarray]] = {}
    seconds = 0.0
    progress = Progress(len(image_ids), f"explain {method_name}")
    # closing: an error in the loop stops the reading threads now, not when its traceback is freed.
    with closing(dataset.batches(image_ids, batch_size, models.preprocessing_of(model), read_ahead=read_ahead,
                                 decode_threads=decode_threads, pin_memory=device.type == "cuda")) as batches:
        for batch in batches:
            progress.update(len(batch.samples) + len(batch.failures))
            failures.update(batch.failures)
            if not batch.samples:
                continue
            images = to_device(batch.images, device)
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
            if top_k > 1:
                for name, array in _top_k_extras(model, layer, method, images, batch.labels.to(device), result, top_k,
                                                 target_mode).items():
                    recorded.setdefault(name, []).append(array)
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
        extras={k: np.concatenate(v) for k, v in {**extras, **recorded}.items()},
    )


TOPK_EXTRA = "topk"
"""Heatmap-shard extra: int64 [N,k] the model's k top classes of each image, best first (experiment `top_k`)."""
LABEL_MAPS_EXTRA = "label_maps"
"""Heatmap-shard extra: float16 [N,h,w] each image's map of its label class where it is among the top k but not
the explained target; NaN rows elsewhere."""


def _top_k_extras(model: torch.nn.Module, layer: str, method: methods.AttributionMethod, images: torch.Tensor,
                  labels: torch.Tensor, result: methods.Attribution, top_k: int,
                  target_mode: str) -> dict[str, np.ndarray]:
    """The top-k classes of a batch and, under target mode `predicted`, the label maps top-k localization needs."""
    with torch.no_grad():
        top = model(fast_layout(images)).topk(top_k, dim=1).indices
    out = {TOPK_EXTRA: top.cpu().numpy().astype(np.int64)}
    if target_mode == "label":
        return out  # the explained maps are the labels' maps
    label_rows = np.full((len(images), *result.maps.shape[1:]), np.nan, np.float16)
    need = (result.targets.to(labels.device) != labels) & (top == labels[:, None]).any(1)
    if need.any():
        rows = need.nonzero()[:, 0]
        made = method.explain(model, layer, images[rows], labels[rows])
        label_rows[rows.cpu().numpy()] = made.maps.detach().float().cpu().numpy()
    out[LABEL_MAPS_EXTRA] = label_rows
    return out


def evaluate_shard(shard: HeatmapShard, dataset: CocoFormatDataset, model: torch.nn.Module,
                   metric_specs: dict[str, dict[str, Any]], labels: dict[str, Any], batch_size: int = 32,
                   read_ahead: int = 1, decode_threads: int = 1) -> pa.Table:
    """Score a heatmap shard with each metric: one row per (image, metric), failures as NaN with a reason.

    Images are scored `batch_size` at a time while the next `read_ahead` batches are read (each by
    `decode_threads` threads); each metric joins its
    batches' results (`Metric.join_batches`), so the rows do not depend on the batch size.
    """
    preprocessing = models.preprocessing_of(model)
    size = preprocessing.input_size
    metric_objects = {name: metrics.get(name, **params) for name, params in metric_specs.items()}
    n_ok = len(shard.image_ids)
    seconds_per_image = shard.seconds / n_ok if n_ok else float("nan")
    common = {**labels, "resize": dataset.resize, "image_size": size, "seconds_per_image": seconds_per_image}
    device = next(model.parameters()).device
    shard_image_ids = [int(i) for i in shard.image_ids]
    keep: list[int] = []  # shard positions of the images that decoded, in order
    samples: list[Sample] = []
    parts: dict[str, list[metrics.MetricResult]] = {name: [] for name in metric_objects}
    progress = Progress(n_ok, "evaluate")
    with closing(dataset.batches(shard_image_ids, batch_size, preprocessing, read_ahead=read_ahead,
                                 decode_threads=decode_threads, pin_memory=device.type == "cuda")) as batches:
        for first, batch in zip(range(0, n_ok, batch_size), batches, strict=True):
            decoded = {s.image_id for s in batch.samples}
            batch_keep = [i for i in range(first, min(first + batch_size, n_ok)) if shard_image_ids[i] in decoded]
            if batch_keep:
                for name, result in _score_batch(batch, shard, batch_keep, size, device, model,
                                                 metric_objects).items():
                    parts[name].append(result)
                keep.extend(batch_keep)
                samples.extend(batch.samples)
            progress.update(len(batch.samples) + len(batch.failures))
    # Under a cropping protocol, how many objects of each image the crop cut off (they are not scored against).
    cut_off = ([{"boxes_outside_crop": s.outside_crop} for s in samples] if dataset.resize != "stretch"
               else [{} for _ in samples])
    rows: list[dict[str, Any]] = []
    for name, metric in metric_objects.items():
        if not parts[name]:
            continue  # no image of the shard decoded
        result = metric.join_batches(parts[name])
        settings = metric.settings(size)
        for j, i in enumerate(keep):
            rows.append({**common, **settings, **cut_off[j], "image_id": shard_image_ids[i],
                         "target": int(shard.targets[i]), "predicted": int(shard.predicted[i]),
                         "metric": name, "value": float(result.values[j]), "reason": result.reasons[j],
                         **{key: array[j].tolist() for key, array in result.per_image.items()}})
    for i in sorted(set(range(n_ok)) - set(keep)):
        rows.extend(_failed_rows(common, shard_image_ids[i], metric_objects, "image failed to decode"))
    for image_id, reason in zip(shard.failed_ids, shard.failed_reasons, strict=True):
        rows.extend(_failed_rows(common, int(image_id), metric_objects, reason))
    return rows_to_table(rows)


def _score_batch(batch: Batch, shard: HeatmapShard, keep: list[int], size: int, device: torch.device,
                 model: torch.nn.Module, metric_objects: dict[str, metrics.Metric]) -> dict[str, metrics.MetricResult]:
    """Each metric's result on the decoded images of one batch, at shard positions `keep`."""
    raw = shard.maps[keep].astype(np.float32)
    image_maps = methods.to_image_maps(torch.from_numpy(raw), (size, size))
    # Normalising would turn a map with NaN into a constant one; keep it NaN so metrics record why.
    image_maps[torch.from_numpy(~np.isfinite(raw).reshape(len(keep), -1).all(1))] = float("nan")
    metric_input = metrics.MetricInput(image_maps.to(device), to_device(batch.images, device),
                                       torch.from_numpy(shard.targets[keep]).to(device), batch.samples, model,
                                       torch.from_numpy(shard.predicted[keep]).to(device))
    _add_top_k(metric_input, shard, keep, size, metric_objects.values())
    return {name: metric(metric_input) for name, metric in metric_objects.items()}


def _add_top_k(metric_input: metrics.MetricInput, shard: HeatmapShard, keep: list[int], size: int,
               metric_objects) -> None:
    """Give the metrics that read the model's top classes (`needs_top_k`) the shard's top-k classes and label maps;
    the label maps stay on the CPU (only box metrics read them)."""
    if TOPK_EXTRA not in shard.extras or not any(m.needs_top_k > 1 for m in metric_objects):
        return
    metric_input.topk = torch.from_numpy(shard.extras[TOPK_EXTRA][keep].astype(np.int64))
    if LABEL_MAPS_EXTRA in shard.extras:
        raw = shard.extras[LABEL_MAPS_EXTRA][keep].astype(np.float32)
        label_maps = methods.to_image_maps(torch.from_numpy(raw), (size, size))
        label_maps[torch.from_numpy(~np.isfinite(raw).reshape(len(keep), -1).all(1))] = float("nan")
        metric_input.label_maps = label_maps


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
