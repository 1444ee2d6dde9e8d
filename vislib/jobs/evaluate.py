"""Jobs of rules/evaluate.smk: score one heatmap shard with an experiment's metrics."""

from __future__ import annotations

from typing import Any

from vislib.data import DatasetRef
from vislib.io import load_shard, provenance, write_parquet
from vislib.pipeline import evaluate_shard, load_model, resolve_device


def evaluate(*, heatmaps: str, metrics: dict[str, tuple[str, dict[str, Any]]], model: dict[str, Any],
             dataset: DatasetRef, labels: dict[str, Any], device: str, out: str, batch_size: int = 32,
             decode_threads: int = 1) -> None:
    """Score a heatmap shard with each metric ({label: (registry name, params)}), `batch_size` images at a time,
    decoded by `decode_threads` threads; write its metric rows."""
    shard = load_shard(heatmaps)
    net = load_model(model, device)
    specs = {name: params for name, params in metrics.values()}
    table = evaluate_shard(shard, dataset.open(), net, specs, labels, batch_size, decode_threads=decode_threads)
    write_parquet(out, table, provenance(None, str(resolve_device(device))))
