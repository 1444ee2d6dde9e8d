"""Visual Genome as the LaViSE reproduction builds it: one token per synset (the first word of its lemma),
rare tokens dropped, then concept targets of the boxes.

The workflow uses this with `lavise.concepts: first_token` (rule `lavise_vg_concepts`, then `vg_split_targets`
per split); its default (`words`) reads the prepared COCO-format splits with `coco_targets` instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vislib.data.cocoformat import read_coco_split
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


COUNT_BY = ("images", "instances")
"""What the minimum token count counts: images showing the token (the paper's text) or its boxes (the
reproduction's `preprocess_vg.py`)."""


def preprocess_vg(objects_json: str | os.PathLike, out_json: str | os.PathLike,
                  embeddings: WordEmbeddings | None = None, min_count: int = 100,
                  count_by: str = "images", all_synsets: bool = False) -> dict:
    """Group VG boxes per category token per image, drop rare tokens and empty images; write JSON.

    `count_by` is 'images' (the paper: a token must occur in `min_count` images) or 'instances'
    (the reproduction's code). Tokens not in `embeddings` are dropped and counted. An object's token comes
    from its first synset, or with `all_synsets` from every one of its synsets (the reproduction's loop; almost
    every VG object has one synset).
    """
    if count_by not in COUNT_BY:
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
            synsets = obj.get("synsets") or []
            for synset in synsets if all_synsets else synsets[:1]:
                token = synset_token(synset)
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


def _read_preprocessed(preprocessed_json: str | os.PathLike) -> list[dict]:
    doc = _read_json(preprocessed_json, "preprocessed VG file")
    if not isinstance(doc, list):
        raise DataError(f"preprocessed VG file {str(preprocessed_json)!r} must hold a list of images; "
                        "write it with preprocess_vg")
    return doc


def _objects(entry: dict, tokens: TokenFilter, per_box: bool) -> list[ConceptObject]:
    objects = []
    for token, boxes in entry["objects"].items():
        if tokens([token]):
            xyxy = [[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in boxes]
            objects += [ConceptObject([token], [box]) for box in xyxy] if per_box else [ConceptObject([token], xyxy)]
    return objects


def vg_targets(preprocessed_json: str | os.PathLike, image_dir: str | os.PathLike,
               embeddings: WordEmbeddings, extension: str = ".jpg", per_box: bool = False) -> ConceptTargets:
    """Concept targets of preprocessed VG: one item per (image, token), the union of its boxes, or with
    `per_box` one item per box (the reproduction's `VisualGenomeInstances`)."""
    doc = _read_preprocessed(preprocessed_json)
    tokens = TokenFilter(embeddings)
    images = []
    for entry in doc:
        path = Path(image_dir) / f"{entry['image_id']}{extension}"
        width, height = _image_size(path)
        images.append(ImageConcepts(int(entry["image_id"]), str(path), width, height,
                                    _objects(entry, tokens, per_box)))
    if not images:
        raise DataError(f"preprocessed VG file {str(preprocessed_json)!r} lists no images; rerun preprocess_vg")
    return finish_targets(images, f"VG file {str(preprocessed_json)!r}", tokens)


def vg_split_targets(preprocessed_json: str | os.PathLike, root: str | os.PathLike, split: str,
                     embeddings: WordEmbeddings) -> ConceptTargets:
    """Concept targets of the images of a prepared VG split (`vislib.data.vg`, split by image) from the
    preprocessed tokens, one item per box as the reproduction trains; image files and sizes come from the split.

    An image of the split that keeps no token is left out; an image that is in no split (none of its objects
    is in a category the dataset's `min_instances` kept) cannot be placed and is left out as well.
    """
    records, _, _ = read_coco_split(root, split)
    tokens = TokenFilter(embeddings)
    images = []
    for entry in _read_preprocessed(preprocessed_json):
        rec = records.get(int(entry["image_id"]))
        if rec is None:
            continue
        objects = _objects(entry, tokens, per_box=True)
        if objects:
            images.append(ImageConcepts(int(rec.image_id), str(rec.path), int(rec.width), int(rec.height), objects))
    if not images:
        raise DataError(f"no image of VG split {split!r} under {str(root)!r} is in {str(preprocessed_json)!r}; "
                        "the preprocessed tokens and the prepared dataset must come from the same objects.json")
    images.sort(key=lambda img: img.image_id)
    return finish_targets(images, f"VG split {split!r} under {str(root)!r}, tokens of {str(preprocessed_json)!r}",
                          tokens)
