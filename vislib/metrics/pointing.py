"""Pointing game (Zhang et al. 2016) and energy pointing game (Wang et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vislib.metrics.base import Metric, MetricInput, MetricResult, register, target_boxes
from vislib.params import param

REFERENCE_SIZE = 224


@register
class PointingGame(Metric):
    """1 if the map's maximum lies within `tolerance` px (at 224 px, scaled) of a target box, else 0."""

    name = "pointing_game"
    binary = True
    needs_boxes = True

    @dataclass(frozen=True)
    class Params:
        tolerance: float = param(15.0, "pixels around a box that still count, at 224 px (scaled)", minimum=0)

    def tolerance_px(self, image_size: int) -> float:
        """The tolerance scaled from 224-pixel images to `image_size`."""
        return float(self.params["tolerance"]) * image_size / REFERENCE_SIZE

    def settings(self, image_size: int) -> dict:
        return {"pointing_tolerance_px": self.tolerance_px(image_size)}

    def compute(self, batch: MetricInput) -> MetricResult:
        n, height, width = batch.maps.shape
        flat_index = torch.nan_to_num(batch.maps, nan=-1.0).reshape(n, -1).argmax(1).cpu().numpy()
        # Pixel centres, so a maximum in pixel (r, c) sits at (c + 0.5, r + 0.5) in box coordinates.
        points = np.stack([flat_index % width + 0.5, flat_index // width + 0.5], 1)
        tol = self.tolerance_px(width)
        values, reasons = np.full(n, np.nan), [""] * n
        for i, sample in enumerate(batch.samples):
            boxes = target_boxes(sample, int(batch.targets[i]))
            if len(boxes) == 0:
                reasons[i] = "no ground-truth box of the target class"
                continue
            dx = np.maximum(np.maximum(boxes[:, 0] - points[i, 0], points[i, 0] - boxes[:, 2]), 0)
            dy = np.maximum(np.maximum(boxes[:, 1] - points[i, 1], points[i, 1] - boxes[:, 3]), 0)
            values[i] = float((np.hypot(dx, dy) <= tol).any())
        return MetricResult(values, reasons)


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of boxes as a boolean [H,W] mask (pixel centres inside a box)."""
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return mask


@register
class EnergyPointingGame(Metric):
    """Share of the map's energy that falls inside the target boxes."""

    name = "energy_pointing_game"
    needs_boxes = True

    def compute(self, batch: MetricInput) -> MetricResult:
        n, height, width = batch.maps.shape
        maps = batch.maps.detach().float().cpu().numpy()
        values, reasons = np.full(n, np.nan), [""] * n
        for i, sample in enumerate(batch.samples):
            boxes = target_boxes(sample, int(batch.targets[i]))
            total = float(maps[i].sum())
            if len(boxes) == 0:
                reasons[i] = "no ground-truth box of the target class"
            elif total <= 0:
                reasons[i] = "map has no positive energy"
            else:
                values[i] = float(maps[i][box_masks(boxes, height, width)].sum() / total)
        return MetricResult(values, reasons)
