"""Visual Genome: preprocess the raw objects.json into one token per category and build concept targets."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vislib.errors import ConfigError, DataError
from vislib.io import write_json
from vislib.lavise.embeddings import WordEmbeddings
from vislib.lavise.targets import (
    ConceptObject,
    ConceptTargets,
    ImageConcepts,
    TokenFilter,
    finish_targets,
)


def synset_token(synset: str) -> str:
    """Category token of a WordNet synset: the lemma before '.' and then before '_' (traffic_light.n.01 -> traffic)."""
    return synset.split(".")[0].split("_")[0].lower()


def _read_json(path: str | os.PathLike, what: str) -> object:
    path = Path(path)
    if path.is_dir():
        # setup_vg.sh of the reproduction unzips into a directory of this name.
        raise DataError(f"{what} {str(path)!r} is a directory; unzip objects.json.zip elsewhere and "
                        "move the objects.json file to this path")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist; download and unzip "
                        "visualgenome.org/static/data/dataset/objects.json.zip there")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {str(path)!r} is not valid JSON ({exc}); download it again") from exc


def preprocess_vg(objects_json: str | os.PathLike, out_json: str | os.PathLike,
                  embeddings: WordEmbeddings | None = None, min_count: int = 100,
                  count_by: str = "images") -> dict:
    """Group VG boxes per category token per image, drop rare tokens and empty images; write JSON.

    `count_by` is 'images' (the paper: a token must occur in `min_count` images) or 'instances'
    (the reproduction's code). Tokens not in `embeddings` are dropped and counted.
    """
    if count_by not in ("images", "instances"):
        raise ConfigError(f"vg count_by {count_by!r} is not valid; use 'images' or 'instances'")
    if min_count < 1:
        raise ConfigError(f"vg min_count {min_count} must be at least 1")
    raw = _read_json(objects_json, "VG objects file")
    if not isinstance(raw, list):
        raise DataError(f"VG objects file {str(objects_json)!r} must hold a list of images")
    not_in_table: Counter[str] = Counter()
    grouped: list[tuple[int, dict[str, list[dict]]]] = []
    counts: Counter[str] = Counter()
    for entry in raw:
        image_id = entry.get("image_id", entry.get("id"))
        boxes: dict[str, list[dict]] = defaultdict(list)
        for obj in entry.get("objects", []):
            if not obj.get("synsets"):
                continue
            token = synset_token(obj["synsets"][0])
            if embeddings is not None and token not in embeddings:
                not_in_table[token] += 1
                continue
            boxes[token].append({k: obj[k] for k in ("x", "y", "w", "h")})
        for token, items in boxes.items():
            counts[token] += 1 if count_by == "images" else len(items)
        grouped.append((int(image_id), boxes))
    kept = {t for t, c in counts.items() if c >= min_count}
    out: list[dict[str, Any]] = []
    for image_id, boxes in grouped:
        objects = {t: boxes[t] for t in sorted(boxes) if t in kept}
        if objects:
            out.append({"image_id": image_id, "objects": objects})
    if not out:
        raise DataError(f"no VG category of {str(objects_json)!r} occurs in {min_count} {count_by}; "
                        "lower min_count or check the embedding file")
    write_json(out_json, out)
    return {
        "images": len(out), "categories": len(kept),
        "max_categories_per_image": max(len(e["objects"]) for e in out),
        "dropped_categories": len(counts) - len(kept),
        "words_not_in_embeddings": dict(sorted(not_in_table.items())),
    }


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"VG image {str(path)!r} cannot be opened ({exc}); put the VG images "
                        "(VG_100K/<image_id>.jpg) in the image directory") from exc


def vg_targets(preprocessed_json: str | os.PathLike, image_dir: str | os.PathLike,
               embeddings: WordEmbeddings, extension: str = ".jpg") -> ConceptTargets:
    """Concept targets of preprocessed VG: one item per (image, token), the union of its boxes."""
    doc = _read_json(preprocessed_json, "preprocessed VG file")
    if not isinstance(doc, list):
        raise DataError(f"preprocessed VG file {str(preprocessed_json)!r} must hold a list of images; "
                        "write it with preprocess_vg")
    tokens = TokenFilter(embeddings)
    images = []
    for entry in doc:
        path = Path(image_dir) / f"{entry['image_id']}{extension}"
        width, height = _image_size(path)
        objects = []
        for token, boxes in entry["objects"].items():
            if tokens([token]):
                xyxy = [[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in boxes]
                objects.append(ConceptObject([token], xyxy))
        images.append(ImageConcepts(int(entry["image_id"]), str(path), width, height, objects))
    if not images:
        raise DataError(f"preprocessed VG file {str(preprocessed_json)!r} lists no images; rerun preprocess_vg")
    return finish_targets(images, f"VG file {str(preprocessed_json)!r}", tokens)
