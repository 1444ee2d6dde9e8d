"""The metric contract: a registry of metrics that score a batch of maps, one value per image."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from vislib.data.dataset import Sample
from vislib.params import NoParams, as_dict, parse
from vislib.registry import Registry

NO_BOXES_IN_DATASET = "the dataset has no boxes"


@dataclass
class MetricInput:
    """What a metric sees for one batch; maps are at input resolution and min-max normalised."""

    maps: torch.Tensor  # float32 [N,S,S] in [0,1]
    images: torch.Tensor  # float32 [N,3,S,S], preprocessed
    targets: torch.Tensor  # int64 [N] explained class
    samples: list[Sample]
    model: nn.Module | None = None
    predicted: torch.Tensor | None = None  # int64 [N] the model's top-1 class, when recorded with the maps
    # int64 [N,k] the model's k top classes, best first, when the experiment records them (its `top_k`).
    topk: torch.Tensor | None = None
    # float32 [N,S,S] like `maps`: each image's map of its label class where the explain job made one beside the
    # maps because the explained target is another class (`top_k` with `target: predicted`); NaN rows elsewhere.
    label_maps: torch.Tensor | None = None
    # Results several metrics share (the forward passes of average drop and increase in confidence are the same).
    shared: dict = field(default_factory=dict, repr=False)


@dataclass
class MetricResult:
    """One value per image; NaN where the metric is undefined, with the reason.

    `per_image` holds extra per-image arrays ([N,...]) that are written as list columns beside the value, for
    metrics whose final value needs the whole dataset (MaxBoxAcc's threshold sweep).
    """

    values: np.ndarray
    reasons: list[str] = field(default_factory=list)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reasons:
            self.reasons = [""] * len(self.values)


class Metric(ABC):
    """A metric with a `Params` declaration; `settings` are the protocol columns written beside each value.

    `higher_is_better` says which way the metric improves; `binary` that every per-image value is 0 or 1 (the
    summary gives it a Wilson interval and compares methods on it with McNemar's test). A metric whose value
    needs every image of a dataset (MaxBoxAcc's threshold) sets `reduces_over_dataset` and overrides
    `reduce_dataset`, which aggregation calls, and `join_batches`, which gives the value over a whole shard from
    the batches an evaluate job scored it in. `needs_top_k` is how many of the model's top classes per image the
    metric reads (`MetricInput.topk`); the config check asks the experiment's `top_k` to be at least that.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    higher_is_better: ClassVar[bool] = True
    reduces_over_dataset: ClassVar[bool] = False
    # A per-image curve the metric keeps beside its value (a list column of the metrics table), drawn as mean curves.
    curve_column: ClassVar[str | None] = None
    binary: ClassVar[bool] = False
    # Scored against ground-truth boxes: on a dataset without any box (an image folder) every value is NaN, saying so.
    needs_boxes: ClassVar[bool] = False
    needs_top_k: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = as_dict(parse(f"metric {self.name!r}", self.Params, params))

    @classmethod
    def reduce_dataset(cls, table: pa.Table, group_columns: list[str]) -> pa.Table:
        """Re-score this metric's rows of `table` over each group of `group_columns` (a whole dataset/model/
        layer/method); the default keeps them."""
        return table

    @classmethod
    def join_batches(cls, parts: list[MetricResult]) -> MetricResult:
        """The result over consecutive batches from each batch's result (an evaluate job scores its shard batch by
        batch); the default puts them one after the other."""
        per_image = {key: np.concatenate([part.per_image[key] for part in parts]) for key in parts[0].per_image}
        return MetricResult(np.concatenate([part.values for part in parts]),
                            [reason for part in parts for reason in part.reasons], per_image)

    def settings(self, image_size: int) -> dict[str, Any]:
        """Protocol settings that move published numbers, stored as columns."""
        return {}

    def __call__(self, batch: MetricInput) -> MetricResult:
        """Score a batch after checking the maps."""
        maps = batch.maps
        n = len(batch.samples)
        if maps.ndim != 3 or maps.shape[0] != n or maps.shape[1:] != batch.images.shape[2:]:
            reason = f"map shape {tuple(maps.shape)} does not fit {n} images of {tuple(batch.images.shape[2:])}"
            return MetricResult(np.full(n, np.nan), [reason] * n)
        result = self.compute(batch)
        bad = ~torch.isfinite(maps.reshape(n, -1)).all(1).cpu().numpy()
        if bad.any():
            result.values[bad] = np.nan
            for i in np.nonzero(bad)[0]:
                result.reasons[i] = "map contains NaN or inf"
        if self.needs_boxes:
            for row, sample in enumerate(batch.samples):
                if not sample.dataset_has_boxes:
                    result.values[row] = np.nan
                    result.reasons[row] = NO_BOXES_IN_DATASET
        return result

    @abstractmethod
    def compute(self, batch: MetricInput) -> MetricResult:
        """Values for a validated batch."""


METRICS: Registry[type[Metric]] = Registry("metric")


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: register a metric under its `name`."""
    return METRICS.register(cls.name)(cls)


def get(name: str, **params: Any) -> Metric:
    """Instantiate metric `name` with `params`."""
    return METRICS[name](**params)


def target_boxes(sample: Sample, target: int) -> np.ndarray:
    """Boxes [K,4] of the objects whose class is `target`."""
    return sample.boxes[sample.box_labels == target]
