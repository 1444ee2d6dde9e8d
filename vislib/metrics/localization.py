"""Box localization as in the CAM protocol (Zhou et al. 2016) and MaxBoxAcc (Choe et al. 2020)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from vislib.errors import ConfigError
from vislib.metrics.base import Metric, MetricInput, MetricResult, register, target_boxes

# Connectivity inside one image only: the stack axis must never join components of different images.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = ndimage.generate_binary_structure(2, 2)

NO_BOX = "no ground-truth box of the target class"


def largest_component_boxes(maps: np.ndarray, threshold: float) -> np.ndarray:
    """Box [N,4] xyxy around the largest 8-connected region where each map is >= `threshold` x its max.

    A map without any positive value gets the empty box (0, 0, 0, 0).
    """
    n = len(maps)
    peak = maps.reshape(n, -1).max(1)
    binary = (maps >= threshold * peak[:, None, None]) & (peak[:, None, None] > 0)
    labels, count = ndimage.label(binary, structure=_STRUCTURE)
    boxes = np.zeros((n, 4), np.float64)
    if count == 0:
        return boxes
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    owner = np.array([s[0].start for s in slices])
    # Largest component per image: sort by (image, size) and keep each image's last entry.
    order = np.lexsort((sizes, owner))
    last = np.r_[owner[order][1:] != owner[order][:-1], True]
    for label_index in order[last]:
        _, rows, cols = slices[label_index]
        boxes[owner[label_index]] = (cols.start, rows.start, cols.stop, rows.stop)
    return boxes


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `others` [K,4]."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def best_iou(batch: MetricInput, boxes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per image, the highest IoU of its predicted box with a ground-truth box of the target class."""
    n = len(batch.samples)
    ious, reasons = np.full(n, np.nan), [""] * n
    for i, sample in enumerate(batch.samples):
        gt = target_boxes(sample, int(batch.targets[i]))
        if len(gt) == 0:
            reasons[i] = NO_BOX
        else:
            ious[i] = float(box_iou(boxes[i], gt.astype(np.float64)).max())
    return ious, reasons


def _maps_array(batch: MetricInput) -> np.ndarray:
    return torch.nan_to_num(batch.maps.detach().float(), nan=0.0).cpu().numpy()


class _Localization(Metric):
    """Shared parameter checks of the localization metrics."""

    defaults = {"threshold": 0.2, "iou": 0.5}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        for key in ("threshold", "iou"):
            if key in self.params and not 0.0 <= float(self.params[key]) <= 1.0:
                raise ConfigError(f"metric {self.name!r}: {key} must lie in [0, 1], got {self.params[key]}")

    def settings(self, image_size: int) -> dict:
        return {"loc_threshold": float(self.params["threshold"]), "loc_iou": float(self.params["iou"])}

    def localized(self, batch: MetricInput) -> tuple[np.ndarray, list[str]]:
        """1.0 where the largest-component box hits a target box with enough IoU, else 0.0 (NaN: undefined)."""
        boxes = largest_component_boxes(_maps_array(batch), float(self.params["threshold"]))
        ious, reasons = best_iou(batch, boxes)
        hit = np.where(np.isnan(ious), np.nan, (ious >= float(self.params["iou"])).astype(float))
        return hit, reasons


@register
class GtKnownLocError(_Localization):
    """GT-known localization error: 1 unless the map's box overlaps a target box with IoU >= `iou`."""

    name = "loc_error_gt_known"

    def compute(self, batch: MetricInput) -> MetricResult:
        hit, reasons = self.localized(batch)
        return MetricResult(1.0 - hit, reasons)


def predicted_classes(batch: MetricInput) -> torch.Tensor | None:
    """The model's top-1 classes: as recorded with the maps, else from one forward pass (None without a model)."""
    if batch.predicted is not None:
        return batch.predicted
    if batch.model is None:
        return None
    with torch.no_grad():
        return batch.model(batch.images).argmax(1)


@register
class Top1LocError(_Localization):
    """Top-1 localization error: 1 unless the top-1 class is the image label and the box is localized."""

    name = "loc_error_top1"

    def compute(self, batch: MetricInput) -> MetricResult:
        hit, reasons = self.localized(batch)
        predicted = predicted_classes(batch)
        if predicted is None:
            n = len(batch.samples)
            return MetricResult(np.full(n, np.nan), ["needs the model's predictions or the model"] * n)
        labels = np.array([s.label for s in batch.samples])
        correct = predicted.cpu().numpy() == labels
        return MetricResult(np.where(np.isnan(hit), np.nan, 1.0 - hit * correct), reasons)


@register
class MaxBoxAcc(_Localization):
    """MaxBoxAcc (Choe et al. 2020): box accuracy at the map threshold that is best for the batch.

    The threshold is chosen over the images scored together (one workflow shard), so the value equals the
    published MaxBoxAcc when a shard holds the whole evaluation set; `thresholds` is the sweep's size.
    """

    name = "maxboxacc"
    defaults = {"thresholds": 100, "iou": 0.5}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if int(self.params["thresholds"]) < 1:
            raise ConfigError(f"metric {self.name!r}: thresholds must be >= 1, got {self.params['thresholds']}")

    def settings(self, image_size: int) -> dict:
        return {"loc_iou": float(self.params["iou"]), "box_thresholds": int(self.params["thresholds"])}

    def compute(self, batch: MetricInput) -> MetricResult:
        maps = _maps_array(batch)
        sweep = np.arange(int(self.params["thresholds"])) / int(self.params["thresholds"])
        hits = []
        reasons: list[str] = []
        for threshold in sweep:
            ious, reasons = best_iou(batch, largest_component_boxes(maps, float(threshold)))
            hits.append(np.where(np.isnan(ious), np.nan, (ious >= float(self.params["iou"])).astype(float)))
        table = np.stack(hits)  # [T,N]
        defined = ~np.isnan(table[0])
        if not defined.any():
            return MetricResult(table[0], reasons)
        best = int(np.argmax(table[:, defined].mean(1)))
        return MetricResult(table[best], reasons)
