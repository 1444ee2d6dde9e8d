"""MS COCO 2017 instances: download, extract and convert one split to vislib's COCO format."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pycocotools import mask as mask_utils

from vislib.data.cocoformat import CocoWriter
from vislib.data.download import fetch
from vislib.errors import DataError

COCO_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"


def link_split(root: Path, split: str, directory: str) -> None:
    """Make images/{split} point at an extracted image folder, so the reader finds the official layout."""
    link = root / "images" / split
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == (root / directory).resolve():
            return
        raise DataError(f"{str(link)!r} exists and is not a link to {directory!r}; delete it and re-run")
    link.symlink_to(Path("..") / directory, target_is_directory=True)


def coco_object(ann: dict, height: int, width: int, names: dict[int, str]) -> dict:
    """One COCO annotation as a CocoWriter object: its category name (`names` by category id), box and mask."""
    segmentation = ann.get("segmentation")
    mask = None
    if isinstance(segmentation, list) and segmentation:  # polygons
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    elif isinstance(segmentation, dict):  # RLE, uncompressed (list counts) or compressed
        rle = (mask_utils.frPyObjects(segmentation, height, width)
               if isinstance(segmentation["counts"], list) else segmentation)
        mask = mask_utils.decode(rle)
    if mask is not None:
        mask = mask.astype(bool)
    return {"category": names[ann["category_id"]], "bbox": ann["bbox"], "mask": mask, "attributes": []}


def convert_instances(instances: str | os.PathLike, root: str | os.PathLike, split: str,
                      masks: bool = True) -> int:
    """Write an official instances JSON as vislib's split; image label = category of its largest object."""
    path = Path(instances)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"COCO annotation file {str(path)!r} cannot be read ({exc}); delete it and re-run") from None
    names = {c["id"]: c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])}
    categories = list(names.values())
    per_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        if not ann.get("iscrowd", 0):  # crowd regions are not single objects; the metrics ignore them too
            per_image.setdefault(ann["image_id"], []).append(ann)
    writer = CocoWriter(Path(root), split, categories)
    for img in sorted(doc["images"], key=lambda i: i["id"]):
        anns = per_image.get(img["id"])
        if not anns:  # no object to point at: such images cannot be scored
            continue
        objects = [coco_object(a, img["height"], img["width"], names) if masks else
                   {"category": names[a["category_id"]], "bbox": a["bbox"], "attributes": []} for a in anns]
        largest = max(anns, key=lambda a: a["area"])
        writer.add_image(img["id"], img["file_name"], img["width"], img["height"],
                         categories.index(names[largest["category_id"]]), objects)
    writer.write(categories)
    return len(writer.images)


def prepare_coco(root: str | os.PathLike, splits: tuple[str, ...] | list[str] = ("val",), year: int = 2017,
                 url: str = COCO_URL, masks: bool = True, annotations_md5: str | None = None) -> dict[str, int]:
    """Download and extract COCO images and instance annotations, then write each split (train/val)."""
    root = Path(root)
    downloads = root / "downloads"
    fetch(f"{url}/{ANNOTATIONS_ZIP}", downloads, root, md5=annotations_md5)
    counts = {}
    for split in splits:
        if split not in ("train", "val"):
            raise DataError(f"COCO split {split!r} is not one of train, val")
        folder = f"{split}{year}"
        fetch(f"{url}/zips/{folder}.zip", downloads, root)
        link_split(root, split, folder)
        counts[split] = convert_instances(root / "annotations" / f"instances_{folder}.json", root, split, masks)
    return counts
