"""Metrics, each registered by name: `vislib.metrics.get(name, **params)(MetricInput) -> MetricResult`."""

from vislib.metrics import (
    localization,  # noqa: F401  (registration)
    perturbation,  # noqa: F401  (registration)
    pointing,  # noqa: F401  (registration)
)
from vislib.metrics.base import (
    METRICS,
    Metric,
    MetricInput,
    MetricResult,
    get,
    register,
    target_boxes,
)

__all__ = ["METRICS", "Metric", "MetricInput", "MetricResult", "get", "register", "target_boxes"]
