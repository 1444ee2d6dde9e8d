"""COCO-format instance files: the one on-disk format every vislib dataset is read from."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vislib.errors import DataError
from vislib.io import atomic_path, write_json


def encode_mask(mask: np.ndarray) -> dict:
    """Run-length encode a boolean [H,W] mask as COCO RLE with a string `counts`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_mask(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (string or bytes counts) into a boolean [H,W] mask."""
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


@dataclass
class CocoWriter:
    """Accumulates images and objects of one split, then writes instances JSON and an index."""

    root: Path
    split: str
    categories: list[str]
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def add_image(self, image_id: int, file_name: str, width: int, height: int, label: int,
                  objects: list[dict]) -> None:
        """Record one image; each object has `category` (name), `bbox` [x,y,w,h], optional `mask`, `attributes`."""
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                            "label": label})
        for obj in objects:
            ann = {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self.categories.index(obj["category"]) + 1,
                "bbox": [float(v) for v in obj["bbox"]],
                "area": float(obj["bbox"][2] * obj["bbox"][3]),
                "iscrowd": 0,
                "attributes": list(obj.get("attributes", [])),
            }
            if obj.get("mask") is not None:
                ann["segmentation"] = encode_mask(obj["mask"])
                ann["area"] = float(obj["mask"].sum())
            self.annotations.append(ann)

    def write(self, label_names: list[str]) -> None:
        """Write annotations/instances_{split}.json and index_{split}.csv atomically."""
        doc = {
            "info": {"description": "written by vislib"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.categories)],
            "label_names": label_names,
        }
        write_json(self.root / "annotations" / f"instances_{self.split}.json", doc)
        with atomic_path(self.root / f"index_{self.split}.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_id", "file_name", "label", "label_name", "width", "height"])
            for img in self.images:
                writer.writerow([img["id"], img["file_name"], img["label"], label_names[img["label"]],
                                 img["width"], img["height"]])


@dataclass(frozen=True)
class ImageRecord:
    """Ground truth of one image: label, boxes (xyxy, pixels), their class labels, masks and attributes."""

    image_id: int
    path: Path
    width: int
    height: int
    label: int
    boxes: np.ndarray  # float32 [K,4] x0,y0,x1,y1
    box_labels: np.ndarray  # int64 [K] in the label space of the dataset
    masks: list[dict | None]  # COCO RLE per object, or None
    attributes: list[list[str]]


def read_coco_split(root: str | os.PathLike, split: str) -> tuple[dict[int, ImageRecord], list[str], list[str]]:
    """Read a split written by CocoWriter: records by id, label names, category names."""
    root = Path(root)
    path = root / "annotations" / f"instances_{split}.json"
    if not path.exists():
        raise DataError(f"annotation file {str(path)!r} is missing; run the dataset's prepare rule first")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"annotation file {str(path)!r} is not valid JSON ({exc}); delete it and re-create") from exc
    categories = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]
    label_names = doc.get("label_names", categories)
    cat_to_label = {c["id"]: label_names.index(c["name"]) if c["name"] in label_names else -1
                    for c in doc["categories"]}
    per_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    records = {}
    for img in doc["images"]:
        anns = per_image.get(img["id"], [])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32).reshape(-1, 4)
        records[img["id"]] = ImageRecord(
            image_id=img["id"], path=root / "images" / split / img["file_name"],
            width=img["width"], height=img["height"], label=int(img.get("label", -1)), boxes=boxes,
            box_labels=np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64),
            masks=[a.get("segmentation") for a in anns],
            attributes=[list(a.get("attributes", [])) for a in anns],
        )
    return records, label_names, categories
