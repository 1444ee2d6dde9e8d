"""A user's COCO-format annotation file (as annotation tools export it) and its image folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vislib.data.classmap import (
    ModelClasses,
    SourceClasses,
    existing_path,
    image_size,
    label_names,
    link_images,
    map_by_name,
    map_labels,
)
from vislib.data.coco import coco_object
from vislib.data.cocoformat import CocoWriter
from vislib.errors import ConfigError, DataError
from vislib.params import param
from vislib.registry import unknown_name_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoFileParams:
    """Parameters of the `cocofile` kind."""

    annotations: str | None = param(None, "path of the COCO-format JSON (images, annotations, categories)")
    images: str | None = param(None, "folder the JSON's image `file_name`s are relative to")
    categories: str | dict[str | int, int | str] = param(
        "by_name", "category -> model class: by_name (the model class of the category's name), or {category name "
                   "or id: class index or name}; categories left out are dropped")
    split: str = param("val", "split name the images are stored as (the dataset's `split`)")
    masks: bool = param(True, "decode segmentations into masks")


@cache
def _read(path: Path, modified: float) -> dict:
    """The annotation file, parsed once per version (the config check and prepare read it in one process)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"annotation file {str(path)!r} (params.annotations) cannot be read as JSON: {exc}") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(doc.get(key), list)]
    if missing:
        raise DataError(f"annotation file {str(path)!r} (params.annotations) has no {', '.join(missing)} list; "
                        "export it in COCO format (instances: images, annotations, categories)")
    if not doc["images"]:
        raise DataError(f"annotation file {str(path)!r} (params.annotations) lists no images")
    for key, fields in (("categories", ("id", "name")), ("images", ("id", "file_name"))):
        for index, entry in enumerate(doc[key]):
            absent = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if absent:
                raise DataError(f"annotation file {str(path)!r} (params.annotations): {key}[{index}] has no "
                                f"{' or '.join(absent)}; every COCO {key[:-1].replace('categorie', 'category')} "
                                f"needs {' and '.join(fields)}")
    return doc


def read_annotations(annotations: str | None) -> dict:
    """The COCO document `params.annotations` names, checked to have images, annotations and categories."""
    path = existing_path(annotations, "annotations", "a COCO-format annotation JSON", folder=False)
    return _read(path.resolve(), path.stat().st_mtime)


def source_classes(params: dict, classes: ModelClasses | None) -> SourceClasses:
    """Check the files and map the file's category ids to labels (the model's class indices, or the categories in
    id order without a model)."""
    doc = read_annotations(params["annotations"])
    existing_path(params["images"], "images", "the folder of the annotation file's images", folder=True)
    names = {c["id"]: str(c["name"]) for c in sorted(doc["categories"], key=lambda c: c["id"])}
    given = params["categories"]
    if isinstance(given, dict):
        by_id = {_category_id(key, names): value for key, value in given.items()}
        labels = map_labels(by_id, classes, "params.categories")
    elif given == "by_name":
        by_name = map_by_name(list(dict.fromkeys(names.values())), classes, "params.categories (by_name)")
        labels = {cid: by_name[name] for cid, name in names.items()}
    else:
        raise ConfigError(f"params.categories must be by_name or a {{category: class}} map, got {given!r}")
    return SourceClasses((params["split"],), labels, label_names(labels, dict(names), classes))


def _category_id(key: str | int, names: dict[int, str]) -> int:
    """A category named by id (an int) or by name."""
    if isinstance(key, int) and key in names:
        return key
    matches = [cid for cid, name in names.items() if name == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"params.categories: {len(matches)} categories are named {key!r} (ids {matches}); "
                          "name them by id")
    valid = [f"{name} (id {cid})" for cid, name in names.items()]
    raise ConfigError(f"params.categories: {unknown_name_message('category', str(key), valid)}")


def prepare_coco_file(root: str | os.PathLike, annotations: str | None = None, images: str | None = None,
                      categories: str | dict[str | int, int | str] = "by_name", split: str = "val",
                      masks: bool = True, model_classes: ModelClasses | None = None) -> dict[str, int]:
    """Write the file's images in vislib's COCO format with labels of the model's classes: images/{split} links to
    the user's folder; crowd regions and objects of unmapped categories are dropped, images left without objects
    skipped; the image label is the class of its largest object."""
    params = {"annotations": annotations, "images": images, "categories": categories, "split": split}
    classes = source_classes(params, model_classes)
    doc = read_annotations(annotations)
    folder = Path(str(images)).expanduser()
    root = Path(root)
    object_names = {int(cid): classes.label_names[label] for cid, label in classes.labels.items()}
    per_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("category_id") in classes.labels and ann.get("bbox"):
            per_image.setdefault(ann["image_id"], []).append(ann)
    writer = CocoWriter(root, split, classes.label_names)
    missing, skipped = [], 0
    for img in sorted(doc["images"], key=lambda i: i["id"]):
        anns = per_image.get(img["id"])
        if not anns:  # no object of a mapped category: no label and nothing to point at
            skipped += 1
            continue
        path = folder / img["file_name"]
        width, height = img.get("width"), img.get("height")
        if not (width and height):
            size = image_size(path) if path.is_file() else None
            if size is None:
                missing.append(img["file_name"])
                continue
            width, height = size
        elif not path.is_file():
            missing.append(img["file_name"])
            continue
        objects = [coco_object(a, height, width, object_names) if masks else
                   {"category": object_names[a["category_id"]], "bbox": a["bbox"]} for a in anns]
        largest = max(anns, key=lambda a: a.get("area") or a["bbox"][2] * a["bbox"][3])
        writer.add_image(int(img["id"]), img["file_name"], int(width), int(height),
                         classes.labels[largest["category_id"]], objects)
    if missing:
        raise DataError(f"{len(missing)} images of {annotations!r} are not readable under params.images "
                        f"{str(folder)!r}, e.g. {', '.join(missing[:3])}; point params.images at the folder the "
                        "file names are relative to")
    if not writer.images:
        raise DataError(f"no image of {annotations!r} has an object of a mapped category; check params.categories")
    if skipped:
        log.info("%d images without an object of a mapped category were skipped", skipped)
    link_images(root, split, folder)
    writer.write(classes.label_names)
    return {split: len(writer.images)}
