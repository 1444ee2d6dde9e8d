"""Concept targets: which concept words each image region shows, from COCO-format or VG annotations."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from vislib.data.cocoformat import decode_mask, read_coco_split
from vislib.data.dataset import Geometry, input_geometry
from vislib.errors import DataError
from vislib.io import write_json
from vislib.lavise.embeddings import WordEmbeddings


@dataclass
class ConceptObject:
    """One training item of an image: its concept tokens and its region (segmentation, else boxes)."""

    tokens: list[str]
    boxes: list[list[float]]  # xyxy in original image pixels; their union is the region without a mask
    segmentation: dict | list | None = None  # COCO RLE or polygons in original pixels


@dataclass
class ImageConcepts:
    """An image file, its original size and its concept objects."""

    image_id: int
    path: str
    width: int
    height: int
    objects: list[ConceptObject]


@dataclass
class ConceptTargets:
    """Images with their concept objects over a fixed concept vocabulary, plus what was skipped."""

    vocabulary: list[str]
    images: list[ImageConcepts]
    source: str
    skipped_words: dict[str, int] = field(default_factory=dict)  # word -> occurrences not in the table
    dropped_objects: int = 0  # objects none of whose words are in the table

    @property
    def n_items(self) -> int:
        """Number of (image, object) training items."""
        return sum(len(img.objects) for img in self.images)

    def target_matrix(self, image_index: int) -> np.ndarray:
        """Multi-hot bool [K,C] of the objects of one image over the vocabulary."""
        lookup = {w: i for i, w in enumerate(self.vocabulary)}
        objects = self.images[image_index].objects
        matrix = np.zeros((len(objects), len(self.vocabulary)), dtype=bool)
        for k, obj in enumerate(objects):
            matrix[k, [lookup[t] for t in obj.tokens]] = True
        return matrix

    def masks(self, image_index: int, size: int, resize: str = "stretch") -> np.ndarray:
        """Bool [K,size,size] region of each object in the square model input that resize protocol `resize`
        (`vislib.data.dataset.RESIZE_PROTOCOLS`) makes of the image; under the crop protocols a region moves
        with the pixels and is empty where the crop cut its object off."""
        img = self.images[image_index]
        geometry = input_geometry(img.width, img.height, size, resize)
        out = np.zeros((len(img.objects), size, size), dtype=bool)
        for k, obj in enumerate(img.objects):
            full = _rasterize(obj, img.width, img.height, geometry)
            out[k] = full[geometry.top:geometry.top + size, geometry.left:geometry.left + size]
        return out

    def full_masks(self, image_index: int) -> np.ndarray:
        """Bool [K,H,W] region of each object at the image's own resolution (what a random crop starts from)."""
        img = self.images[image_index]
        geometry = Geometry(img.height, img.width, 0, 0)
        out = np.zeros((len(img.objects), img.height, img.width), dtype=bool)
        for k, obj in enumerate(img.objects):
            out[k] = _rasterize(obj, img.width, img.height, geometry)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the targets as JSON, atomically."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptTargets:
        """Read targets written by `save`."""
        try:
            doc = json.loads(Path(path).read_text())
            images = [ImageConcepts(**{**img, "objects": [ConceptObject(**o) for o in img["objects"]]})
                      for img in doc.pop("images")]
            return cls(images=images, **doc)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise DataError(f"concept targets {str(path)!r} are unreadable ({exc}); rebuild them") from exc


def split_category(name: str) -> list[str]:
    """Concept tokens of a category name: lower-case words ("traffic light" -> traffic, light)."""
    return name.lower().replace("_", " ").replace("-", " ").split()


def _rasterize(obj: ConceptObject, width: int, height: int, geometry: Geometry) -> np.ndarray:
    """Bool [geometry.height, geometry.width]: the object's region in the resized (not yet cropped) image."""
    out_h, out_w = geometry.height, geometry.width
    sx, sy = out_w / width, out_h / height
    seg = obj.segmentation
    if isinstance(seg, dict):
        full = decode_mask(seg).astype(np.float32)
        if full.shape == (out_h, out_w):
            return full > 0.5
        resized = F.interpolate(torch.from_numpy(full)[None, None], size=(out_h, out_w), mode="nearest")
        return resized[0, 0].numpy() > 0.5
    # Rows are y and columns are x: a [W,H] canvas indexed [y,x] is the forks' transposition bug.
    canvas = Image.new("L", (out_w, out_h), 0)
    draw = ImageDraw.Draw(canvas)
    if isinstance(seg, list) and seg:
        for polygon in seg:
            points = [(x * sx, y * sy) for x, y in zip(polygon[0::2], polygon[1::2], strict=True)]
            if len(points) >= 3:
                draw.polygon(points, fill=255)
        return np.asarray(canvas) > 127
    mask = np.zeros((out_h, out_w), dtype=bool)
    for x0, y0, x1, y1 in obj.boxes:
        # Floor/ceil so a box smaller than a pixel of the input still covers one pixel.
        c0, c1 = int(np.floor(x0 * sx)), int(np.ceil(x1 * sx))
        r0, r1 = int(np.floor(y0 * sy)), int(np.ceil(y1 * sy))
        mask[max(r0, 0):min(max(r1, r0 + 1), out_h), max(c0, 0):min(max(c1, c0 + 1), out_w)] = True
    return mask


class TokenFilter:
    """Keeps tokens that are in the embedding table and counts the ones that are not."""

    def __init__(self, embeddings: WordEmbeddings) -> None:
        self.embeddings = embeddings
        self.skipped: Counter[str] = Counter()
        self.dropped_objects = 0

    def __call__(self, words: list[str]) -> list[str]:
        kept = []
        for word in words:
            if word in self.embeddings:
                if word not in kept:
                    kept.append(word)
            else:
                self.skipped[word] += 1
        if not kept:
            self.dropped_objects += 1
        return kept


def finish_targets(images: list[ImageConcepts], source: str, tokens: TokenFilter) -> ConceptTargets:
    """Targets over the sorted set of kept tokens; an empty vocabulary is a DataError."""
    vocabulary = sorted({t for img in images for obj in img.objects for t in obj.tokens})
    if not vocabulary:
        examples = ", ".join(w for w, _ in tokens.skipped.most_common(5)) or "none"
        raise DataError(
            f"no concept of {source} is in the embedding table, so the concept vocabulary is empty "
            f"(words not found, most common first: {examples}); use an embedding file that holds "
            "the dataset's category names"
        )
    return ConceptTargets(vocabulary, images, source, dict(sorted(tokens.skipped.items())),
                          tokens.dropped_objects)


def merge_targets(parts: Sequence[ConceptTargets], source: str) -> ConceptTargets:
    """One target set of the images of all `parts` (e.g. a dataset's train and val splits), in order, over the
    union of their vocabularies. Images are told apart by position (splits of some datasets reuse image ids)."""
    images = [img for part in parts for img in part.images]
    skipped: Counter[str] = Counter()
    for part in parts:
        skipped.update(part.skipped_words)
    vocabulary = sorted({w for part in parts for w in part.vocabulary})
    return ConceptTargets(vocabulary, images, source, dict(sorted(skipped.items())),
                          sum(part.dropped_objects for part in parts))


def coco_targets(root: str | os.PathLike, split: str, embeddings: WordEmbeddings,
                 attributes: bool = True) -> ConceptTargets:
    """Concept targets of a COCO-format split: category tokens (+ attribute words) per object."""
    records, label_names, _ = read_coco_split(root, split)
    if not records:
        raise DataError(f"split {split!r} under {str(root)!r} has no images; prepare the dataset first")
    tokens = TokenFilter(embeddings)
    images = []
    for image_id in sorted(records):
        rec = records[image_id]
        objects = []
        for box, label, seg, attrs in zip(rec.boxes, rec.box_labels, rec.masks, rec.attributes, strict=True):
            words = split_category(label_names[label]) if label >= 0 else []
            words += [a.lower() for a in attrs] if attributes else []
            kept = tokens(words)
            if kept:
                objects.append(ConceptObject(kept, [[float(v) for v in box]], seg))
        images.append(ImageConcepts(int(image_id), str(rec.path), int(rec.width), int(rec.height), objects))
    return finish_targets(images, f"COCO-format split {split!r} under {str(root)!r}", tokens)


def concept_words(root: str | os.PathLike, splits: Sequence[str]) -> list[str]:
    """The concept words of a COCO-format dataset, read from its annotations: category name tokens and
    attribute words, sorted."""
    words: set[str] = set()
    for split in dict.fromkeys(splits):
        records, _, categories = read_coco_split(root, split)
        words.update(t for name in categories for t in split_category(name))
        words.update(a.lower() for rec in records.values() for attrs in rec.attributes for a in attrs)
    return sorted(words)
