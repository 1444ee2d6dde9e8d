"""Box localization as in the CAM protocol (Zhou et al. 2016) and MaxBoxAcc (Choe et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vislib.metrics.base import Metric, MetricInput, MetricResult, register, target_boxes
from vislib.params import param

# 8-connectivity inside one image only: the stack axis must never join components of different images.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True

NO_BOX = "no ground-truth box of the target class"


def largest_component_boxes(maps: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Box [N,4] xyxy around the largest 8-connected region where each map is >= `threshold` x its max.

    `threshold` is one value or one per map. A map without any positive value gets the empty box (0, 0, 0, 0).
    """
    # scipy is imported on first use: explain jobs import vislib.metrics but never score.
    from scipy import ndimage

    n = len(maps)
    peak = maps.reshape(n, -1).max(1)
    cut = (np.broadcast_to(np.asarray(threshold, np.float64), (n,)) * peak)[:, None, None]
    binary = (maps >= cut) & (peak[:, None, None] > 0)
    labels, count = ndimage.label(binary, structure=_STRUCTURE)
    boxes = np.zeros((n, 4), np.float64)
    if count == 0:
        return boxes
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    # The image each component lies in (labels run across the whole stack).
    owner = np.zeros(count + 1, np.int64)
    owner[labels.reshape(n, -1)] = np.arange(n)[:, None]
    # Largest component per image: sort components 1..count by (image, size), keep each image's last.
    order = np.lexsort((sizes[1:], owner[1:])) + 1
    last = order[np.r_[owner[order][1:] != owner[order][:-1], True]]
    chosen = np.zeros(n, np.int64)
    chosen[owner[last]] = last
    # Extent of only the chosen components (noisy maps have thousands of others), all images at once.
    found = chosen > 0
    mask = (labels == chosen[:, None, None]) & found[:, None, None]
    rows, cols = mask.any(2), mask.any(1)
    height, width = maps.shape[1:]
    boxes[found] = np.stack([cols.argmax(1), rows.argmax(1), width - cols[:, ::-1].argmax(1),
                             height - rows[:, ::-1].argmax(1)], 1)[found]
    return boxes


def padded_target_boxes(batch: MetricInput) -> tuple[np.ndarray, list[str]]:
    """Target-class boxes of every image padded to [N,K,4] with NaN, and why an image has none."""
    per_image = [target_boxes(sample, int(batch.targets[i])).astype(np.float64)
                 for i, sample in enumerate(batch.samples)]
    padded = np.full((len(per_image), max([1, *map(len, per_image)]), 4), np.nan)
    for i, boxes in enumerate(per_image):
        padded[i, :len(boxes)] = boxes
    return padded, [NO_BOX if len(boxes) == 0 else "" for boxes in per_image]


def best_iou(boxes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row, the highest IoU of box [M,4] with its target boxes [M,K,4] (NaN rows of padding ignored).

    NaN where a row has no target box at all.
    """
    width = np.clip(np.minimum(boxes[:, None, 2], targets[..., 2]) - np.maximum(boxes[:, None, 0], targets[..., 0]),
                    0, None)
    height = np.clip(np.minimum(boxes[:, None, 3], targets[..., 3]) - np.maximum(boxes[:, None, 1], targets[..., 1]),
                     0, None)
    inter = width * height
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    areas = (targets[..., 2] - targets[..., 0]) * (targets[..., 3] - targets[..., 1])
    iou = inter / np.maximum(area + areas - inter, 1e-12)
    defined = ~np.isnan(targets[..., 0])
    return np.where(defined.any(1), np.where(defined, iou, -1.0).max(1), np.nan)


def _maps_array(batch: MetricInput) -> np.ndarray:
    return torch.nan_to_num(batch.maps.detach().float(), nan=0.0).cpu().numpy()


class _Localization(Metric):
    """Shared parameter checks of the localization metrics."""

    higher_is_better = False

    @dataclass(frozen=True)
    class Params:
        threshold: float = param(0.2, "map threshold, as a fraction of its maximum, for the box", minimum=0, maximum=1)
        iou: float = param(0.5, "IoU with a target box that counts as localized", minimum=0, maximum=1)

    def settings(self, image_size: int) -> dict:
        return {"loc_threshold": float(self.params["threshold"]), "loc_iou": float(self.params["iou"])}

    def localized(self, batch: MetricInput) -> tuple[np.ndarray, list[str]]:
        """1.0 where the largest-component box hits a target box with enough IoU, else 0.0 (NaN: undefined)."""
        targets, reasons = padded_target_boxes(batch)
        ious = best_iou(largest_component_boxes(_maps_array(batch), float(self.params["threshold"])), targets)
        hit = np.where(np.isnan(ious), np.nan, (ious >= float(self.params["iou"])).astype(float))
        return hit, reasons


@register
class GtKnownLocError(_Localization):
    """GT-known localization error: 1 unless the map's box overlaps a target box with IoU >= `iou`."""

    name = "loc_error_gt_known"
    binary = True

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
    binary = True

    def compute(self, batch: MetricInput) -> MetricResult:
        hit, reasons = self.localized(batch)
        predicted = predicted_classes(batch)
        if predicted is None:
            n = len(batch.samples)
            return MetricResult(np.full(n, np.nan), ["needs the model's predictions or the model"] * n)
        labels = np.array([s.label for s in batch.samples])
        correct = predicted.cpu().numpy() == labels
        return MetricResult(np.where(np.isnan(hit), np.nan, 1.0 - hit * correct), reasons)


BOX_HITS_COLUMN = "box_hits"


MAXBOXACC = "maxboxacc"


def apply_dataset_max_box_acc(table: pa.Table, group_columns: list[str]) -> pa.Table:
    """Re-score MaxBoxAcc rows at the threshold best over each whole group; drop the per-image sweep column.

    Adds `box_threshold` (the chosen map threshold) to those rows; other rows are unchanged.
    """
    if BOX_HITS_COLUMN not in table.column_names:
        return table
    frame = table.select([*group_columns, "metric", BOX_HITS_COLUMN]).to_pandas()
    values = table.column("value").to_numpy(zero_copy_only=False).copy()
    chosen = np.full(len(frame), np.nan)
    rows = frame.index[(frame["metric"] == MAXBOXACC) & frame[BOX_HITS_COLUMN].notna()]
    for _, group in frame.loc[rows].groupby(group_columns, sort=False):
        hits = np.stack([np.asarray(h, dtype=float) for h in group[BOX_HITS_COLUMN]])
        best = best_threshold_index(hits)
        values[group.index] = hits[:, best]
        chosen[group.index] = threshold_sweep(hits.shape[1])[best]
    table = table.drop_columns([BOX_HITS_COLUMN])
    table = table.set_column(table.column_names.index("value"), "value", pa.array(values, pa.float64()))
    return table.append_column("box_threshold", pa.array(chosen, pa.float64(), from_pandas=True))


@register
class MaxBoxAcc(_Localization):
    """MaxBoxAcc (Choe et al. 2020): box accuracy at the map threshold that is best for the whole dataset.

    Each image records whether its box hits at every threshold of the sweep (`box_hits`); the value written
    per shard uses the threshold best for that shard, and `dataset_max_box_acc` re-chooses the threshold
    over all images of a dataset/model/layer/method at aggregation, which is the published definition.
    """

    name = MAXBOXACC
    higher_is_better = True
    binary = True
    reduces_over_dataset = True

    @dataclass(frozen=True)
    class Params:
        thresholds: int = param(100, "map thresholds swept, evenly from 0", minimum=1)
        iou: float = param(0.5, "IoU with a target box that counts as localized", minimum=0, maximum=1)

    @classmethod
    def reduce_dataset(cls, table: pa.Table, group_columns: list[str]) -> pa.Table:
        """MaxBoxAcc at the threshold best over each whole group (`apply_dataset_max_box_acc`)."""
        return apply_dataset_max_box_acc(table, group_columns)

    def settings(self, image_size: int) -> dict:
        return {"loc_iou": float(self.params["iou"]), "box_thresholds": int(self.params["thresholds"])}

    def compute(self, batch: MetricInput) -> MetricResult:
        maps = _maps_array(batch)
        targets, reasons = padded_target_boxes(batch)
        sweep = threshold_sweep(int(self.params["thresholds"]))
        n, pixels = len(maps), maps[0].size
        # Label several thresholds' binary maps in one call, in chunks that keep the stack near 32M pixels.
        per_chunk = max(1, (1 << 25) // max(1, n * pixels))
        ious = []
        for start in range(0, len(sweep), per_chunk):
            chunk = sweep[start:start + per_chunk]
            stacked = np.broadcast_to(maps, (len(chunk), *maps.shape)).reshape(-1, *maps.shape[1:])
            boxes = largest_component_boxes(stacked, np.repeat(chunk, n))
            ious.append(best_iou(boxes, np.tile(targets, (len(chunk), 1, 1))).reshape(len(chunk), n))
        iou = np.concatenate(ious).T  # [N,T]
        table = np.where(np.isnan(iou), np.nan, (iou >= float(self.params["iou"])).astype(float))
        return MetricResult(table[:, best_threshold_index(table)], reasons, {BOX_HITS_COLUMN: table})


def threshold_sweep(count: int) -> np.ndarray:
    """The map thresholds MaxBoxAcc tries: 0, 1/count, ..., (count-1)/count."""
    return np.arange(count) / count


def best_threshold_index(hits: np.ndarray) -> int:
    """Index of the threshold with the highest box accuracy over the images with a defined value ([N,T])."""
    defined = ~np.isnan(hits[:, 0])
    if not defined.any():
        return 0
    return int(np.argmax(hits[defined].mean(0)))
