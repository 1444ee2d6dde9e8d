"""Reading a prepared dataset: batches of preprocessed images with their ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from vislib.data.cocoformat import ImageRecord, decode_mask, read_coco_split
from vislib.errors import DataError, ImageDecodeError
from vislib.preprocessing import Preprocessing

RESIZE_PROTOCOL = "stretch"
"""Images are resized to the model's square input without cropping, so boxes scale per axis."""


@dataclass
class Sample:
    """Ground truth of one image in model-input coordinates."""

    image_id: int
    label: int
    boxes: np.ndarray  # float32 [K,4] xyxy in input pixels
    box_labels: np.ndarray  # int64 [K]
    masks: np.ndarray | None  # bool [K,S,S] or None when the dataset has no masks
    attributes: list[list[str]]


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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into uint8 [H,W,3] RGB; raise ImageDecodeError if it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageDecodeError(f"image {str(path)!r} cannot be decoded: {exc}") from exc


def to_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H,W,3] -> float [3,size,size] in [0,1], resized with antialiasing."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float()[None] / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp(0, 1)


class CocoFormatDataset:
    """A dataset split stored in vislib's COCO format (images/{split}/, annotations/instances_{split}.json)."""

    def __init__(self, name: str, root: str | os.PathLike, split: str) -> None:
        self.name = name
        self.root = Path(root)
        self.split = split
        self.records, self.label_names, self.categories = read_coco_split(self.root, split)
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
        """Ground truth of one image scaled to a square model input of `size` pixels."""
        rec = self.record(image_id)
        scale = np.array([size / rec.width, size / rec.height] * 2, dtype=np.float32)
        masks = None
        encoded = [m for m in rec.masks if m is not None] if with_masks and rec.masks else []
        if encoded and len(encoded) == len(rec.masks):
            stack = np.stack([decode_mask(m) for m in encoded]).astype(np.float32)
            resized = F.interpolate(torch.from_numpy(stack)[None], size=(size, size), mode="nearest")[0]
            masks = resized.numpy() > 0.5
        return Sample(image_id, rec.label, rec.boxes * scale, rec.box_labels, masks, rec.attributes)

    def load_batch(self, image_ids: list[int], preprocessing: Preprocessing, with_masks: bool = True) -> Batch:
        """Decode, resize and normalise images; images that fail to decode are reported, not raised."""
        size = preprocessing.input_size
        tensors, samples, failures = [], [], {}
        for image_id in image_ids:
            try:
                pixels = read_image(self.record(image_id).path)
            except ImageDecodeError as exc:
                failures[image_id] = str(exc)
                continue
            tensors.append(to_input(pixels, size))
            samples.append(self.sample(image_id, size, with_masks))
        images = torch.stack(tensors) if tensors else torch.zeros(0, 3, size, size)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        return Batch(preprocessing.normalize(images), labels, samples, failures)
