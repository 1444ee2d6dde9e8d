"""Reading a prepared dataset: batches of preprocessed images with their ground truth."""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from vislib.data.cocoformat import ImageRecord, decode_mask, read_coco_split
from vislib.errors import DataError, ImageDecodeError
from vislib.preprocessing import Preprocessing

RESIZE_PROTOCOLS = ("stretch", "crop", "squash_crop")
"""How an image becomes the model's square input of side S (the `resize` column of the metrics table):

- `stretch`: resized to S x S, aspect ratio not kept; boxes scale per axis; nothing is cut off.
- `crop`: torchvision's Resize(round(S * 256 / 224)) of the shorter side, aspect kept, then CenterCrop(S) (for S = 224:
  Resize(256) + CenterCrop(224), the ImageNet evaluation transform of torchvision's weights).
- `squash_crop`: resized to round(S * 256 / 224) on both sides, aspect not kept, then CenterCrop(S) (ADL's and the
  L2-CAF port's evaluation).

Under the crop protocols boxes and masks move with the pixels, boxes are clipped to the crop, and objects that
leave it entirely are dropped from the sample and counted (`Sample.outside_crop`).
"""
CROP_RATIO = 224 / 256


@dataclass(frozen=True)
class Geometry:
    """Where an original image lands in the model input: resized to `height` x `width`, then `top`/`left` cut."""

    height: int
    width: int
    top: int
    left: int



def input_geometry(width: int, height: int, size: int, resize: str) -> Geometry:
    """The resize and crop that protocol `resize` applies to a `width` x `height` image for a `size` input."""
    if resize == "stretch":
        return Geometry(size, size, 0, 0)
    resized = round(size / CROP_RATIO)
    if resize == "squash_crop":
        new_h = new_w = resized
    elif resize == "crop":
        # torchvision's Resize(int): the shorter side becomes `resized`, the longer one is truncated to an int.
        if width <= height:
            new_w, new_h = resized, int(resized * height / width)
        else:
            new_h, new_w = resized, int(resized * width / height)
    else:
        raise DataError(f"resize protocol {resize!r} is not one of {', '.join(RESIZE_PROTOCOLS)}")
    # torchvision's CenterCrop: offsets rounded half to even, as Python's round does.
    return Geometry(new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0)))


@dataclass(frozen=True)
class OriginalFrame:
    """An image in its own pixels: its size, every ground-truth box unmoved (none dropped by a crop) and where
    the resize protocol put it in the model input."""

    width: int
    height: int
    boxes: np.ndarray  # float32 [K,4] xyxy in original pixels
    box_labels: np.ndarray  # int64 [K]
    geometry: Geometry


def maps_to_original(maps: torch.Tensor, frame: OriginalFrame) -> torch.Tensor:
    """Maps [M,S,S] over the model input brought back to the original image [M,H,W]: the inverse of the resize
    protocol (`to_input`). The input covers only the crop, so the map is 0 where the crop cut the image off."""
    geometry, size = frame.geometry, maps.shape[-1]
    canvas = maps.float().new_zeros(maps.shape[0], geometry.height, geometry.width)
    canvas[:, geometry.top:geometry.top + size, geometry.left:geometry.left + size] = maps.float()
    if (geometry.height, geometry.width) == (frame.height, frame.width):
        return canvas
    # Same resampling as `to_input`, the other way round.
    return F.interpolate(canvas[:, None], size=(frame.height, frame.width), mode="bilinear", antialias=True,
                         align_corners=False)[:, 0]


@dataclass
class Sample:
    """Ground truth of one image in model-input coordinates (and, where the dataset knows it, in its own)."""

    image_id: int
    label: int
    boxes: np.ndarray  # float32 [K,4] xyxy in input pixels
    box_labels: np.ndarray  # int64 [K]
    masks: np.ndarray | None  # bool [K,S,S] or None when the dataset has no masks
    attributes: list[list[str]]
    outside_crop: int = 0  # objects dropped because the resize protocol's crop cut them off entirely
    original: OriginalFrame | None = None  # the original image's size and boxes (scoring at original resolution)
    dataset_has_boxes: bool = True  # False for a dataset without any box (an image folder): why box metrics are NaN


@dataclass
class Batch:
    """A batch ready for a model: preprocessed images, labels and per-image ground truth."""

    images: torch.Tensor  # float32 [N,3,S,S], normalised
    labels: torch.Tensor  # int64 [N]
    samples: list[Sample]
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images that decoded, in batch order."""
        return [s.image_id for s in self.samples]


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
"""PIL modes of 16-bit greyscale images (a 16-bit PNG opens as one of these)."""


JPEG_SIGNATURE = b"\xff\xd8\xff"
FAST_JPEG_COLORSPACES = ("YCbCr", "Gray")
"""JPEG colour spaces `read_image` decodes with simplejpeg; CMYK and YCCK files go to PIL, whose CMYK -> RGB
conversion rounds differently from libjpeg-turbo's."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into uint8 [H,W,3] RGB; raise ImageDecodeError naming the file if it cannot be read.

    A colour or greyscale JPEG is decoded by libjpeg-turbo through simplejpeg, straight into the array: the pixels
    of PIL's and torchvision's decoders (the same library, same settings), in about half of PIL's time, and without
    importing torchvision, which costs every job about a second (docs/datasets.md). PIL decodes every other format,
    and any JPEG simplejpeg refuses, so a file no decoder reads fails with PIL's reason, as before. A 16-bit
    greyscale image is scaled to 8 bits (its high byte), where `convert("RGB")` would clip every level above 255 to
    white. Both decoders release the GIL, so a read-ahead thread decodes beside the model.
    """
    try:
        with open(path, "rb") as file:
            signature = file.read(len(JPEG_SIGNATURE))
            pixels = _decode_plain_jpeg(signature + file.read()) if signature == JPEG_SIGNATURE else None
        if pixels is not None:
            return pixels
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                levels = np.asarray(img).astype(np.int64).clip(0, 65535) >> 8
                return np.repeat(levels.astype(np.uint8)[..., None], 3, axis=-1)
            return np.array(img.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageDecodeError(f"image {str(path)!r} cannot be decoded: {exc}") from exc


def _decode_plain_jpeg(encoded: bytes) -> np.ndarray | None:
    """A YCbCr or greyscale JPEG as uint8 [H,W,3] RGB, or None where PIL must decode it (another colour space, or a
    file libjpeg-turbo refuses: PIL then gives the reason)."""
    try:
        if simplejpeg.decode_jpeg_header(encoded)[2] not in FAST_JPEG_COLORSPACES:
            return None
        return simplejpeg.decode_jpeg(encoded, colorspace="RGB")
    except ValueError:
        return None


def to_input(pixels: np.ndarray, size: int, resize: str = "stretch") -> torch.Tensor:
    """uint8 [H,W,3] -> float [3,size,size] in [0,1], resized by protocol `resize` (`resize_to_input`)."""
    return resize_to_input(pixels, size, resize).float().div_(255.0)


def resize_to_input(pixels: np.ndarray, size: int, resize: str = "stretch") -> torch.Tensor:
    """uint8 [H,W,3] -> uint8 [3,size,size], resized by protocol `resize`; `to_input` without the float conversion,
    which `CocoFormatDataset.load_batch` does once for the whole batch.

    The resize (bilinear, antialiased) runs on the uint8 image, as torchvision's transforms do on a decoded image
    (the same kernel, equal to its `resize`, tested), and only the model input is converted to float: several times
    cheaper than resizing in float, and within about a level (1.1/255) of it (docs/datasets.md).
    """
    if pixels.dtype != np.uint8:
        raise DataError(f"resize_to_input and to_input take uint8 pixels (read_image's), got {pixels.dtype}")
    # [1,3,H,W] over [H,W,3] memory: the channels-last layout torch's fast uint8 resize reads.
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    geometry = input_geometry(image.shape[-1], image.shape[-2], size, resize)
    if image.shape[-2:] != (geometry.height, geometry.width):
        image = F.interpolate(image, size=(geometry.height, geometry.width), mode="bilinear", align_corners=False,
                              antialias=True)
    return image[0, :, geometry.top:geometry.top + size, geometry.left:geometry.left + size]


def place_boxes(boxes: np.ndarray, width: int, height: int, geometry: Geometry,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [K,4] xyxy of a `width` x `height` image moved into the model input and clipped to it; also which of
    them keep a non-empty area (the others were cut off by the crop)."""
    scale = np.array([geometry.width / width, geometry.height / height] * 2, dtype=np.float32)
    if (geometry.height, geometry.width) == (size, size):
        # Nothing is cut off: boxes only scale (as they always have under `stretch`).
        return boxes * scale, np.ones(len(boxes), bool)
    offset = np.array([geometry.left, geometry.top] * 2, dtype=np.float32)
    placed = np.clip(boxes.astype(np.float32) * scale - offset, 0, size)
    kept = (placed[:, 2] > placed[:, 0]) & (placed[:, 3] > placed[:, 1])
    return placed, kept


class CocoFormatDataset:
    """A dataset split stored in vislib's COCO format (images/{split}/, annotations/instances_{split}.json)."""

    def __init__(self, name: str, root: str | os.PathLike, split: str, resize: str = "stretch") -> None:
        if resize not in RESIZE_PROTOCOLS:
            raise DataError(f"resize protocol {resize!r} is not one of {', '.join(RESIZE_PROTOCOLS)}")
        self.name = name
        self.root = Path(root)
        self.split = split
        self.resize = resize
        self.records, self.label_names, self.categories = read_coco_split(self.root, split)
        self.has_boxes = any(len(rec.boxes) for rec in self.records.values())
        if not self.records:
            raise DataError(f"dataset {name!r} split {split!r} under {str(self.root)!r} has no images")

    def __len__(self) -> int:
        return len(self.records)

    def image_ids(self) -> list[int]:
        """All image ids of the split, sorted."""
        return sorted(self.records)

    def record(self, image_id: int) -> ImageRecord:
        """Ground truth of one image in its original coordinates."""
        try:
            return self.records[image_id]
        except KeyError:
            raise DataError(f"image id {image_id} is not in dataset {self.name!r} split {self.split!r}") from None

    def sample(self, image_id: int, size: int, with_masks: bool = True) -> Sample:
        """Ground truth of one image moved into a square model input of `size` pixels by the resize protocol."""
        rec = self.record(image_id)
        geometry = input_geometry(rec.width, rec.height, size, self.resize)
        boxes, kept = place_boxes(rec.boxes.reshape(-1, 4), rec.width, rec.height, geometry, size)
        masks = None
        encoded = [m for m in rec.masks if m is not None] if with_masks and rec.masks else []
        if encoded and len(encoded) == len(rec.masks):
            stack = np.stack([decode_mask(m) for m in encoded]).astype(np.float32)
            resized = F.interpolate(torch.from_numpy(stack)[None], size=(geometry.height, geometry.width),
                                    mode="nearest")[0]
            masks = resized[:, geometry.top:geometry.top + size, geometry.left:geometry.left + size].numpy() > 0.5
        original = OriginalFrame(rec.width, rec.height, rec.boxes.reshape(-1, 4), rec.box_labels, geometry)
        if kept.all():
            return Sample(image_id, rec.label, boxes, rec.box_labels, masks, rec.attributes, original=original,
                          dataset_has_boxes=self.has_boxes)
        attributes = ([a for a, k in zip(rec.attributes, kept, strict=True) if k]
                      if len(rec.attributes) == len(kept) else rec.attributes)
        return Sample(image_id, rec.label, boxes[kept], rec.box_labels[kept], None if masks is None else masks[kept],
                      attributes, int((~kept).sum()), original, self.has_boxes)

    def load_batch(self, image_ids: list[int], preprocessing: Preprocessing, with_masks: bool = True,
                   decoders: Executor | None = None, pin_memory: bool = False) -> Batch:
        """Decode, resize and normalise images, on the `decoders` pool's threads where one is given; images that
        fail to decode are reported, not raised. `pin_memory` (CUDA only) puts the images in page-locked memory,
        from which `.to(device, non_blocking=True)` copies without holding up the caller."""
        size = preprocessing.input_size
        read = functools.partial(self._read_resized, size=size)
        outcomes = (list(decoders.map(read, image_ids)) if decoders is not None
                    else [read(image_id) for image_id in image_ids])
        resized, samples, failures = [], [], {}
        for image_id, outcome in zip(image_ids, outcomes, strict=True):
            if isinstance(outcome, str):
                failures[image_id] = outcome
                continue
            resized.append(outcome)
            samples.append(self.sample(image_id, size, with_masks))
        # One float conversion and an in-place normalisation for the batch, in to_input's and normalize's arithmetic:
        # per image, the float copies and their temporaries cost as much as the resize.
        images = torch.stack(resized).float().div_(255.0) if resized else torch.zeros(0, 3, size, size)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        images = preprocessing.normalize_(images)
        return Batch(images.pin_memory() if pin_memory else images, labels, samples, failures)

    def _read_resized(self, image_id: int, size: int) -> torch.Tensor | str:
        """One image as `resize_to_input` gives it, or why it cannot be decoded."""
        try:
            return resize_to_input(read_image(self.record(image_id).path), size, self.resize)
        except ImageDecodeError as exc:
            return str(exc)

    def batches(self, image_ids: Sequence[int], batch_size: int, preprocessing: Preprocessing,
                with_masks: bool = True, read_ahead: int = 1, decode_threads: int = 1,
                pin_memory: bool = False) -> Generator[Batch, None, None]:
        """`load_batch` over consecutive `batch_size` slices of `image_ids`, in order, with the next `read_ahead`
        batches read by a background thread while the caller works on the current one (0: read each when asked),
        each batch's images decoded by `decode_threads` threads (and pinned there, with `pin_memory`)."""
        if decode_threads < 1:
            raise DataError(f"decode_threads must be at least 1, got {decode_threads}")
        slices = [list(image_ids[start:start + batch_size]) for start in range(0, len(image_ids), batch_size)]
        decoders = (ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="vislib-decode")
                    if decode_threads > 1 else None)
        try:
            yield from read_in_order([functools.partial(self.load_batch, ids, preprocessing, with_masks, decoders,
                                                        pin_memory) for ids in slices], read_ahead)
        finally:
            if decoders is not None:
                decoders.shutdown(wait=True, cancel_futures=True)


Loaded = TypeVar("Loaded")


def read_in_order(loads: Sequence[Callable[[], Loaded]], read_ahead: int) -> Iterator[Loaded]:
    """The results of `loads` in order, each started up to `read_ahead` results before it is asked for, on one
    background thread (decoders and torch release the GIL, so it runs beside the caller's model). At most
    `read_ahead` results wait, so memory stays bounded; an exception of a load is raised where its result would
    have been, and a caller that stops early cancels the loads not yet started."""
    if read_ahead < 1:
        yield from (load() for load in loads)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vislib-read-ahead")
    pending: deque[Future[Loaded]] = deque(pool.submit(load) for load in loads[:read_ahead])
    try:
        for position in range(len(loads)):
            if position + read_ahead < len(loads):
                pending.append(pool.submit(loads[position + read_ahead]))
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
