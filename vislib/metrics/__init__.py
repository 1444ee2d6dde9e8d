"""Metrics, each registered by name: `vislib.metrics.get(name, **params)(MetricInput) -> MetricResult`."""

from vislib.metrics.base import METRICS, Metric, MetricInput, MetricResult, get, register, target_boxes
from vislib.metrics import pointing  # noqa: F401  (registration)

__all__ = ["METRICS", "Metric", "MetricInput", "MetricResult", "get", "register", "target_boxes"]
