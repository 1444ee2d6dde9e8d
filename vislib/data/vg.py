"""Visual Genome objects and attributes, written as train/val splits in vislib's COCO format."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, SupportsIndex

import numpy as np

from vislib.data.coco import link_split
from vislib.data.cocoformat import CocoWriter
from vislib.data.download import fetch
from vislib.errors import DataError

IMAGES_URLS = ("https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
               "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip")
META_URL = "https://visualgenome.org/static/data/dataset"
IMAGE_FOLDER = "raw"


def objects_json(root: str | os.PathLike) -> Path:
    """Where `prepare_vg` keeps VG's raw objects.json (read again by LaViSE's `concepts: first_token`)."""
    return Path(root) / "meta" / "objects.json"


class _Categories(list[str]):
    """A category list whose `index` is a dict lookup: VG has millions of objects and thousands of categories."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self._positions = {n: i for i, n in enumerate(names)}

    def index(self, name: str, *args: SupportsIndex) -> int:
        """Position of `name` (ValueError if absent, as list.index)."""
        try:
            return self._positions[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a category") from None


def _load(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Visual Genome file {str(path)!r} cannot be read ({exc}); delete it and re-run") from None


def category_of(obj: dict) -> str | None:
    """An object's category: the lemma of its first synset ('traffic_light.n.01' -> 'traffic_light'), else its name."""
    if obj.get("synsets"):
        return obj["synsets"][0].split(".")[0]
    names = obj.get("names") or ([obj["name"]] if obj.get("name") else [])
    return names[0].strip().lower().replace(" ", "_") if names else None


def _image_id(entry: dict) -> int:
    """An entry's image id, which VG's files call `image_id` or `id`."""
    return entry["image_id"] if "image_id" in entry else entry["id"]


def _attributes_by_object(attributes: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for entry in attributes:
        for obj in entry.get("attributes", []):
            if obj.get("attributes"):
                out[obj["object_id"]] = sorted({a.strip().lower() for a in obj["attributes"]})
    return out


def _file_name(meta: dict) -> str:
    """'VG_100K/1.jpg' or 'VG_100K_2/1.jpg': the image's folder is the last part of its URL's path."""
    parts = PurePosixPath(meta["url"]).parts
    return f"{parts[-2]}/{parts[-1]}"


def convert_vg(root: str | os.PathLike, objects_json: str | os.PathLike, image_data_json: str | os.PathLike,
               attributes_json: str | os.PathLike | None = None, min_instances: int = 100,
               val_fraction: float = 0.1, seed: int = 0) -> dict[str, int]:
    """Write train/val splits (split by image); categories with fewer than `min_instances` objects are dropped."""
    root = Path(root)
    meta = {m.get("image_id", m.get("id")): m for m in _load(Path(image_data_json))}
    entries = _load(Path(objects_json))
    attrs = _attributes_by_object(_load(Path(attributes_json))) if attributes_json else {}
    counts = Counter(c for e in entries for o in e["objects"] if (c := category_of(o)) is not None)
    categories = _Categories(sorted(c for c, n in counts.items() if n >= min_instances))
    if not categories:
        raise DataError(f"no Visual Genome category has {min_instances} or more objects; lower params.min_instances")
    keep = set(categories)
    image_ids = sorted(_image_id(e) for e in entries)
    in_val = dict(zip(image_ids, np.random.default_rng(seed).random(len(image_ids)) < val_fraction, strict=True))
    writers = {s: CocoWriter(root, s, categories) for s in ("train", "val")}
    for entry in entries:
        image_id = _image_id(entry)
        if image_id not in meta:
            raise DataError(f"image {image_id} of {str(objects_json)!r} is not in {str(image_data_json)!r}")
        objects: list[dict[str, Any]] = [{"category": category_of(o), "bbox": [o["x"], o["y"], o["w"], o["h"]],
                    "attributes": attrs.get(o["object_id"], [])}
                   for o in entry["objects"] if category_of(o) in keep]
        if not objects:
            continue
        largest = max(objects, key=lambda o: o["bbox"][2] * o["bbox"][3])
        m = meta[image_id]
        writers["val" if in_val[image_id] else "train"].add_image(
            image_id, _file_name(m), m["width"], m["height"], categories.index(largest["category"]), objects)
    for writer in writers.values():
        writer.write(categories)
    return {s: len(w.images) for s, w in writers.items()}


def prepare_vg(root: str | os.PathLike, min_instances: int = 100, val_fraction: float = 0.1, seed: int = 0,
               attributes: bool = True, images_urls: list[str] | tuple[str, ...] = IMAGES_URLS,
               meta_url: str = META_URL) -> dict[str, int]:
    """Download and extract Visual Genome images, objects, attributes and image metadata, then convert."""
    root = Path(root)
    downloads = root / "downloads"
    for url in images_urls:
        fetch(url, downloads, root / IMAGE_FOLDER)
    names = ["objects", "image_data"] + (["attributes"] if attributes else [])
    for name in names:
        fetch(f"{meta_url}/{name}.json.zip", downloads, root / "meta")
    for split in ("train", "val"):
        link_split(root, split, IMAGE_FOLDER)
    meta = root / "meta"
    return convert_vg(root, objects_json(root), meta / "image_data.json",
                      meta / "attributes.json" if attributes else None, min_instances, val_fraction, seed)
