"""The box generator of CAM's released ILSVRC evaluation code (Zhou et al. 2016, github.com/zhoubolei/CAM), with scipy.

The CAM paper's text describes its boxes as "the largest connected component above 20% of the map's maximum";
that is `largest_component_boxes` (vislib.metrics.localization). The code the authors released does this instead,
and this module follows it (file names are the repository's):

1. Heatmap (`ILSVRC_generate_heatmap.m`): the map is resized to the original image size, divided by its maximum
   and written as an 8-bit image: level = round(255 * map / max), negative values 0 (`heatmap_levels`).
2. `bboxgenerator/dt_box.cpp`, once per threshold t of (20, 100, 110): foreground = level > t; each foreground
   pixel gets its Euclidean distance to the nearest background pixel (`dt.c`), rescaled to round(255 * d / max d)
   and thresholded again at > 10. This erodes every region by about 4% of the widest one's inscribed radius and
   cuts thin bridges. A map that is all foreground or all background is left as it is (`dt.c` returns early).
3. Contours (OpenCV `findContours`, RETR_CCOMP) of each eroded map: a box around every 8-connected region and
   every hole in one. OpenCV 2.4, which the code was written for, first sets the image's 1-pixel frame to 0, so
   regions touching the image border lose that row or column. Each box (x, y, w, h) is then clipped as `LIMIT`
   does: x to [0, W-5], y to [0, H-5], w to [0, W-x-5], h to [0, H-y-5] (x, y before clipping).
4. The boxes of all three thresholds are pooled, sorted by area, largest first, and merged: walking the list, a
   box that overlaps a kept earlier box by more than half the larger one's area is dropped (the C++ loop erases
   inside a for loop, so the box after each dropped one is never tested against that earlier box).
5. `ILSVRC_evaluate_bbox.m` scores the first box of each map (`bbox1`, the largest over all thresholds): with one
   map per top-5 class, an image counts as localized if one of those classes is its label and that map's box has
   IoU >= 0.5 with a ground-truth box of the label (`simpleEvaluation.m`). The script also prints `bbox2` and a
   `bboxCombine` heuristic (two boxes of the top-2 classes, one of the third); vislib scores `bbox1`.

So the three thresholds do not each get a chance: the largest box over all of them is the answer, which is nearly
always a box of the lowest threshold, and the merging in step 4 never removes it. `dt_box` reproduces the whole
ranked, merged list for one map; `cam_code_boxes` computes only the first box, for a batch of maps at once.

Where this differs from the original:
- scipy replaces OpenCV: regions are 8-connected components (`ndimage.label`) and holes 4-connected background
  components not connected to the frame; a region's box is its pixel extent and a hole's box the hole's extent
  grown by one pixel (the pixels of the contour that OpenCV traces around it). A test checks both against
  OpenCV's `findContours` where it is installed.
- Boxes of equal area are ordered by threshold, then regions before holes, each in raster order of their first
  pixel; `std::sort` leaves that order unspecified (OpenCV lists each region's holes right after it).
- The heatmap is not a JPEG (the original's compression moves levels by a few units), the resize is vislib's
  bilinear one (MATLAB's `imresize` is bicubic), vislib's maps are min-max normalised before the resize (the
  original divides by the maximum only), and there is one view per image (the original averages ten crops).
- Boxes are (x, y, x + w, y + h) in vislib's continuous pixel coordinates, which is the regions' exact extent;
  the ILSVRC toolkit reads them, and the ground truth, as inclusive pixel indices (IoU with +1 widths).
- A map with no box (all levels at or below the lowest threshold) gets the empty box and so misses; the original
  MATLAB script stops with an error on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CAM_THRESHOLDS = (20, 100, 110)
"""The 8-bit thresholds `generate_bbox.m` and `ILSVRC_evaluate_bbox.m` pass to `dt_box`."""
DT_THRESHOLD = 10
"""The level (of 255) the rescaled distance transform must exceed (`dt_box.cpp`, `fromDT`)."""
EDGE = 5
"""`LIMIT` keeps every box this many pixels inside the right and bottom edges."""

# 8-connectivity inside one slice only: the stack axis must never join regions of different maps.
_EIGHT = np.zeros((3, 3, 3), bool)
_EIGHT[1] = True
# Background is 4-connected (a hole that touches another only at a corner is a separate hole).
_FOUR = np.zeros((3, 3, 3), bool)
_FOUR[1, 1, :] = _FOUR[1, :, 1] = True


def heatmap_levels(maps: np.ndarray) -> np.ndarray:
    """8-bit heatmaps [M,H,W] as CAM writes them: round(255 * map / max) per map, negatives 0, all 0 where the
    maximum is not positive."""
    maps = np.asarray(maps, np.float64)
    peak = maps.reshape(len(maps), -1).max(1) if maps.size else np.zeros(len(maps))
    scale = np.where(peak > 0, 255.0 / np.where(peak > 0, peak, 1.0), 0.0)[:, None, None]
    return np.clip(np.floor(np.clip(maps, 0, None) * scale + 0.5), 0, 255).astype(np.uint8)


def eroded_masks(levels: np.ndarray, thresholds: Sequence[int] = CAM_THRESHOLDS) -> np.ndarray:
    """Per map and threshold, the foreground after `dt_box`'s distance-transform re-threshold: bool [M,T,H,W].

    OpenCV 2.4's zeroed 1-pixel frame is applied here too, so the result is what `findContours` sees.
    """
    from scipy import ndimage

    levels = np.asarray(levels)
    m, height, width = levels.shape
    out = np.zeros((m, len(thresholds), height, width), bool)
    for j, threshold in enumerate(thresholds):
        binary = levels > threshold
        for i in range(m):
            if binary[i].all():
                out[i, j] = True  # dt.c leaves a constant image as it is
            elif binary[i].any():
                distance = ndimage.distance_transform_edt(binary[i])
                # dt.c: ROUND(d * 255 / max d) into 8 bits, then cvThreshold(> 10).
                out[i, j] = np.floor(distance * (255.0 / distance.max()) + 0.5) > DT_THRESHOLD
    out[..., 0, :] = out[..., -1, :] = False
    out[..., :, 0] = out[..., :, -1] = False
    return out


def _limit(value: np.ndarray, low: np.ndarray | int, high: np.ndarray | int) -> np.ndarray:
    """dt_box.cpp's LIMIT(v, L, R): L below L, else R above R (R wins when R < L), else v."""
    return np.where(value < low, low, np.where(value > high, high, value))


def _clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """dt_box.cpp's clipping of OpenCV rects (x, y, w, h) [B,4] int64."""
    x, y, w, h = boxes.T
    return np.stack([_limit(x, 0, width - EDGE), _limit(y, 0, height - EDGE),
                     _limit(w, 0, width - x - EDGE), _limit(h, 0, height - y - EDGE)], 1)


def _extents(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice index and (x, y, w, h) of each labelled component 1..count of a [S,H,W] stack."""
    from scipy import ndimage

    slices = ndimage.find_objects(labels, count)
    where = np.array([[s[0].start, s[2].start, s[1].start, s[2].stop - s[2].start, s[1].stop - s[1].start]
                      for s in slices], np.int64).reshape(-1, 5)
    return where[:, 0], where[:, 1:]


def _region_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner slice and unclipped (x, y, w, h) of every 8-connected region of a [S,H,W] stack, in raster order of
    each region's first pixel within its slice."""
    from scipy import ndimage

    labels, count = ndimage.label(masks, structure=_EIGHT)
    return _extents(labels, count)


def _hole_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner slice and unclipped (x, y, w, h) of the contour OpenCV traces around every hole of a [S,H,W] stack:
    4-connected background not connected to the (zeroed) frame, grown by one pixel."""
    from scipy import ndimage

    labels, count = ndimage.label(~masks, structure=_FOUR)
    owner, boxes = _extents(labels, count)
    frame = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                                      labels[:, :, -1].ravel()]))
    hole = np.ones(count + 1, bool)
    hole[frame] = False
    keep = hole[1:]
    return owner[keep], boxes[keep] + np.array([-1, -1, 2, 2])


def _areas(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, 2] * boxes[:, 3]


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(x, y, w, h) -> xyxy float, ordered as ILSVRC_evaluate_bbox.m's `boxData_formulate` does (min, max)."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    return np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], 1).astype(
        np.float64)


def cam_code_boxes(levels: np.ndarray, thresholds: Sequence[int] = CAM_THRESHOLDS) -> np.ndarray:
    """The box CAM's evaluation scores (`bbox1`: the largest of `dt_box`'s list) of each 8-bit map [M,H,W] of one
    size, xyxy [M,4]; (0, 0, 0, 0) where a map has none."""
    levels = np.asarray(levels)
    m, height, width = levels.shape
    t = len(thresholds)
    masks = eroded_masks(levels, thresholds).reshape(m * t, height, width)
    slice_index, boxes = _region_boxes(masks)
    out = np.zeros((m, 4))
    if not len(boxes):
        return out
    clipped = _clip(boxes, width, height)
    owner, threshold_index = slice_index // t, slice_index % t
    # A hole's box lies inside its region's box, so it is never the largest: regions alone decide.
    # Largest area first; ties by threshold, then raster order (the order `ndimage.label` numbers regions in).
    order = np.lexsort((np.arange(len(boxes)), threshold_index, -_areas(clipped), owner))
    first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    out[owner[first]] = _corners(clipped[first])
    return out


def _big_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """dt_box.cpp's big_overlap: the intersection exceeds (int)(half the larger box's area)."""
    limit = int(max(a[2] * a[3], b[2] * b[3]) * 0.5)
    dx = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    dy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return dx * dy > limit


def dt_box(levels: np.ndarray, thresholds: Sequence[int] = CAM_THRESHOLDS) -> np.ndarray:
    """Every box `dt_box` outputs for one 8-bit map [H,W], ranked and merged, as xyxy [B,4] (the first is the one
    CAM's evaluation scores)."""
    levels = np.asarray(levels)[None]
    height, width = levels.shape[1:]
    masks = eroded_masks(levels, thresholds)[0]
    region_slice, regions = _region_boxes(masks)
    hole_slice, holes = _hole_boxes(masks)
    boxes = np.concatenate([regions, holes])
    if not len(boxes):
        return np.zeros((0, 4))
    clipped = _clip(boxes, width, height)
    threshold_index = np.concatenate([region_slice, hole_slice])
    # Largest area first; ties by threshold, then regions before holes, each in raster order.
    order = np.lexsort((np.arange(len(boxes)), threshold_index, -_areas(clipped)))
    ranked = [clipped[i] for i in order]
    i = 0
    while i < len(ranked):
        j = i + 1
        while j < len(ranked):
            if _big_overlap(ranked[i], ranked[j]):
                del ranked[j]  # the C++ loop's `++j` then skips the box that moved into place j
            j += 1
        i += 1
    return _corners(np.array(ranked))

