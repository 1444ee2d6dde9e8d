"""Box localization as in CAM (Zhou et al. 2016): its paper's text and its released code (top-1, top-5 and
GT-known error), and MaxBoxAcc (Choe et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vislib.data.dataset import Geometry, OriginalFrame, Sample, maps_to_original
from vislib.errors import ConfigError
from vislib.metrics.base import Metric, MetricInput, MetricResult, register, target_boxes
from vislib.metrics.cam_code import CAM_THRESHOLDS, cam_code_boxes, heatmap_levels
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


NO_LABEL_BOX = "no ground-truth box of the image's label"
NO_TOPK = "needs the model's top-5 classes recorded with the maps: set `top_k: 5` on the experiment"
NO_LABEL_MAP = "the map of the image's label was not recorded (the experiment's `top_k` records it)"


def image_labels(batch: MetricInput) -> np.ndarray:
    """The label of every image of the batch [N]."""
    return np.array([s.label for s in batch.samples], np.int64)


class _Localization(Metric):
    """Box localization: a box per map, a hit where it overlaps a ground-truth box of the class with IoU >= `iou`.

    The protocol decides the box generator and the frame boxes are scored in: the CAM paper's text at input
    resolution (`paper`, here) or CAM's released code at the original image resolution (`cam_code`).
    """

    higher_is_better = False
    binary = True
    needs_boxes = True
    protocol = "paper"

    @dataclass(frozen=True)
    class Params:
        threshold: float = param(0.2, "map threshold, as a fraction of its maximum, for the box", minimum=0, maximum=1)
        iou: float = param(0.5, "IoU with a target box that counts as localized", minimum=0, maximum=1)

    def settings(self, image_size: int) -> dict:
        return {"loc_protocol": self.protocol, "loc_threshold": float(self.params["threshold"]),
                "loc_iou": float(self.params["iou"])}

    def box_key(self) -> tuple:
        """What decides a map's box besides the map (the key of boxes the batch's metrics share)."""
        return self.protocol, float(self.params["threshold"])

    def make_boxes(self, batch: MetricInput, maps: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """The box [R,4] of each map [R,S,S] (of image `rows[j]`), in the frame `gt_boxes` are in."""
        return largest_component_boxes(torch.nan_to_num(maps.detach().float(), nan=0.0).cpu().numpy(),
                                       float(self.params["threshold"]))

    def gt_boxes(self, sample: Sample, size: int, label: int) -> np.ndarray:
        """The ground-truth boxes [K,4] of class `label` that boxes are scored against."""
        return target_boxes(sample, label)

    def class_hits(self, batch: MetricInput, maps: torch.Tensor, rows: np.ndarray, classes: np.ndarray,
                   source: str) -> np.ndarray:
        """1.0 where the box of `maps[j]` (a map of image `rows[j]`) hits a ground-truth box of `classes[j]`, 0.0
        where not, NaN where the image has no box of that class. `source` names the maps (`maps`, `label_maps`):
        with the protocol, it keys the boxes the batch's metrics share."""
        cache = batch.shared.setdefault(("localization_boxes", self.box_key(), source), {})
        missing = [j for j, i in enumerate(rows) if int(i) not in cache]
        if missing:
            for j, box in zip(missing, self.make_boxes(batch, maps[missing], rows[missing]), strict=True):
                cache[int(rows[j])] = box
        boxes = np.array([cache[int(i)] for i in rows], np.float64).reshape(-1, 4)
        size = batch.maps.shape[-1]
        found = [self.gt_boxes(batch.samples[int(i)], size, int(c)) for i, c in zip(rows, classes, strict=True)]
        padded = np.full((len(found), max([1, *map(len, found)]), 4), np.nan)
        for j, class_boxes in enumerate(found):
            padded[j, :len(class_boxes)] = class_boxes
        ious = best_iou(boxes, padded)
        return np.where(np.isnan(ious), np.nan, (ious >= float(self.params["iou"])).astype(float))

    def localized(self, batch: MetricInput) -> tuple[np.ndarray, list[str]]:
        """Per image, whether the map's box hits a box of the explained target (NaN: the target has no box)."""
        rows = np.arange(len(batch.samples))
        hit = self.class_hits(batch, batch.maps, rows, batch.targets.cpu().numpy(), "maps")
        return hit, [NO_BOX if np.isnan(h) else "" for h in hit]

    def label_error(self, batch: MetricInput, correct: np.ndarray) -> MetricResult:
        """1 unless the image's class is right (`correct`) and the box of its label's map hits a box of the label;
        NaN where the label has no box. The label's map is the explained one where the target is the label, else
        the one recorded beside it (`MetricInput.label_maps`)."""
        n, size = len(batch.samples), batch.maps.shape[-1]
        values, reasons = np.ones(n), [""] * n
        labels = image_labels(batch)
        rows = np.nonzero(correct)[0]
        own = rows[batch.targets.cpu().numpy()[rows] == labels[rows]]
        if len(own):
            values[own] = 1.0 - self.class_hits(batch, batch.maps[torch.from_numpy(own).to(batch.maps.device)],
                                                own, labels[own], "maps")
        other = np.setdiff1d(rows, own)
        if len(other) and batch.label_maps is not None:
            recorded = batch.label_maps[torch.from_numpy(other).to(batch.label_maps.device)]
            finite = torch.isfinite(recorded.reshape(len(other), -1)).all(1).cpu().numpy()
            if finite.any():
                values[other[finite]] = 1.0 - self.class_hits(
                    batch, recorded[torch.from_numpy(finite).to(recorded.device)], other[finite],
                    labels[other[finite]], "label_maps")
            other = other[~finite]
        for i in other:
            values[i], reasons[i] = np.nan, NO_LABEL_MAP
        for i, sample in enumerate(batch.samples):
            if not len(self.gt_boxes(sample, size, sample.label)):
                values[i], reasons[i] = np.nan, NO_LABEL_BOX
        return MetricResult(values, reasons)


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
    """Top-1 localization error: 1 unless the top-1 class is the image label and the box of its map is localized.

    Undefined (NaN) only where the label has no ground-truth box: a wrong class is an error whatever the box.
    """

    name = "loc_error_top1"

    def compute(self, batch: MetricInput) -> MetricResult:
        predicted = predicted_classes(batch)
        if predicted is None:
            n = len(batch.samples)
            return MetricResult(np.full(n, np.nan), ["needs the model's predictions or the model"] * n)
        return self.label_error(batch, predicted.cpu().numpy() == image_labels(batch))


class _Top5(_Localization):
    """Top-5 localization error: the check of the model's 5 top classes (`MetricInput.topk`)."""

    needs_top_k = 5

    def compute(self, batch: MetricInput) -> MetricResult:
        n = len(batch.samples)
        if batch.topk is None or batch.topk.shape[1] < self.needs_top_k:
            return MetricResult(np.full(n, np.nan), [NO_TOPK] * n)
        top = batch.topk[:, :self.needs_top_k].cpu().numpy()
        return self.label_error(batch, (top == image_labels(batch)[:, None]).any(1))


@register
class Top5LocError(_Top5):
    """Top-5 localization error: 1 unless the label is one of the 5 top classes and the box of its map is localized.

    As ILSVRC scores it: one box per top-5 class, correct if one of them is of the label class and hits. The 5
    classes differ, so only the label's own map can hit: with `top_k: 5` the explain job records the 5 classes
    and, where the explained target is another class, the label's map.
    """

    name = "loc_error_top5"


class _CamCode(_Localization):
    """CAM's released evaluation code (`vislib.metrics.cam_code`): the map at the original image resolution (the
    inverse of the resize protocol, 0 outside a crop), as an 8-bit heatmap, `dt_box`'s largest box over
    `thresholds`, scored against the original, unmoved ground-truth boxes. A sample that does not know its
    original frame is scored at input resolution."""

    protocol = "cam_code"

    @dataclass(frozen=True)
    class Params:
        thresholds: list[int] = param(list(CAM_THRESHOLDS), "levels of the 8-bit map (of 255) that dt_box boxes "
                                      "the regions above, increasing")
        iou: float = param(0.5, "IoU with a target box that counts as localized", minimum=0, maximum=1)

        def __post_init__(self) -> None:
            values = list(self.thresholds)
            if not values or any(not 0 < t < 255 for t in values) or values != sorted(set(values)):
                raise ConfigError(f"parameter 'thresholds' must be increasing levels between 1 and 254, got {values}")

    def settings(self, image_size: int) -> dict:
        return {"loc_protocol": self.protocol,
                "cam_box_thresholds": ",".join(str(t) for t in self.params["thresholds"]),
                "loc_iou": float(self.params["iou"])}

    def box_key(self) -> tuple:
        return self.protocol, tuple(int(t) for t in self.params["thresholds"])

    def make_boxes(self, batch: MetricInput, maps: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        size = batch.maps.shape[-1]
        return original_boxes(maps, [original_frame(batch.samples[int(i)], size) for i in rows],
                              tuple(int(t) for t in self.params["thresholds"]))

    def gt_boxes(self, sample: Sample, size: int, label: int) -> np.ndarray:
        frame = original_frame(sample, size)
        return frame.boxes[frame.box_labels == label]


def original_frame(sample: Sample, size: int) -> OriginalFrame:
    """The sample's original frame; the model input's own where the sample does not know it."""
    if sample.original is not None:
        return sample.original
    return OriginalFrame(size, size, sample.boxes, sample.box_labels, Geometry(size, size, 0, 0))


def original_boxes(maps: torch.Tensor, frames: list[OriginalFrame],
                   thresholds: tuple[int, ...] = CAM_THRESHOLDS) -> np.ndarray:
    """CAM's box (`cam_code_boxes`) of each input-resolution map [M,S,S] in its image's original frame, [M,4]."""
    maps = torch.nan_to_num(maps.detach().float().cpu(), nan=0.0)
    levels = [heatmap_levels(maps_to_original(m[None], frame).numpy())[0]
              for m, frame in zip(maps, frames, strict=True)]
    boxes = np.zeros((len(levels), 4))
    by_size: dict[tuple[int, ...], list[int]] = {}
    for j, level in enumerate(levels):
        by_size.setdefault(level.shape, []).append(j)
    for members in by_size.values():
        # A few maps per call: the label images of a stack cost 4 bytes per pixel and threshold.
        for start in range(0, len(members), 16):
            chunk = members[start:start + 16]
            boxes[chunk] = cam_code_boxes(np.stack([levels[j] for j in chunk]), thresholds)
    return boxes


@register
class GtKnownLocErrorCamCode(_CamCode, GtKnownLocError):
    """GT-known localization error under CAM's released evaluation code (original resolution, `dt_box`)."""

    name = "loc_error_gt_known_cam_code"


@register
class Top1LocErrorCamCode(_CamCode, Top1LocError):
    """Top-1 localization error under CAM's released evaluation code (original resolution, `dt_box`)."""

    name = "loc_error_top1_cam_code"


@register
class Top5LocErrorCamCode(_CamCode, _Top5):
    """Top-5 localization error under CAM's released evaluation code (original resolution, `dt_box`).

    The ILSVRC number the CAM and Grad-CAM papers report beside top-1.
    """

    name = "loc_error_top5_cam_code"


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

    @classmethod
    def join_batches(cls, parts: list[MetricResult]) -> MetricResult:
        """The batches' results at the threshold best over all of them: a shard's values whatever its batches.
        A value stays NaN where its batch left it NaN (no target box, a broken map)."""
        joined = super().join_batches(parts)
        hits = joined.per_image[BOX_HITS_COLUMN]
        joined.values = np.where(np.isnan(joined.values), np.nan, hits[:, best_threshold_index(hits)])
        return joined

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
