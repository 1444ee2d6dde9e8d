"""A user's image folder in torchvision's ImageFolder layout (one folder per class), without boxes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vislib.data.classmap import (
    IMAGE_EXTENSIONS,
    ModelClasses,
    SourceClasses,
    existing_path,
    image_size,
    is_image_file,
    label_names,
    link_images,
    map_by_name,
    map_labels,
    normalized,
)
from vislib.data.cocoformat import CocoWriter
from vislib.errors import ConfigError, DataError
from vislib.params import param
from vislib.registry import unknown_name_message

log = logging.getLogger(__name__)

SINGLE_SPLIT = "val"


@dataclass(frozen=True)
class ImageFolderParams:
    """Parameters of the `imagefolder` kind."""

    path: str | None = param(None, "folder holding one folder of images per class (with `splits`: one folder per "
                                   "split, each holding the class folders)")
    splits: list[str] = param([], "split folders under `path` (e.g. [train, val]); empty: `path` itself is split val")
    extensions: list[str] = param(list(IMAGE_EXTENSIONS), "file endings that count as images (case ignored)")
    class_map: str | dict[str, int | str] = param(
        "index", "class folder -> model class: index (the i-th folder in sorted order is class i, as torchvision's "
                 "ImageFolder), by_name (the model class of the folder's name), or {folder: class index or name}")


def class_folders(folder: Path) -> list[str]:
    """The class folders of a split folder, sorted as torchvision's ImageFolder sorts them."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def image_files(class_folder: Path, extensions: list[str]) -> list[Path]:
    """The images under one class folder, subfolders included, in torchvision's ImageFolder order."""
    return [Path(walk_root) / name for walk_root, _, names in sorted(os.walk(class_folder, followlinks=True))
            for name in sorted(names) if is_image_file(name, extensions)]


def _has_image(class_folder: Path, extensions: list[str]) -> bool:
    return any(is_image_file(name, extensions) for _, _, names in os.walk(class_folder, followlinks=True)
               for name in names)


def _split_folders(path: str | None, splits: list[str]) -> dict[str, Path]:
    root = existing_path(path, "path", "a folder holding one folder of images per class", folder=True)
    if not splits:
        return {SINGLE_SPLIT: root}
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise DataError(f"params.splits names {missing}, but {str(root)!r} has no such folder; its folders are "
                        f"{', '.join(class_folders(root)) or 'none'}")
    return {split: root / split for split in splits}


def _scan(folders: dict[str, Path], extensions: list[str]) -> list[str]:
    """The class folders of every split (their union, so that a class has one label in every split); fail on a
    split or class folder without images."""
    classes: set[str] = set()
    looked_for = ", ".join(extensions)
    for split, folder in folders.items():
        found = class_folders(folder)
        if not found:
            loose = "; it holds images directly: put each class's images in a folder named after the class" if (
                _has_image(folder, extensions)) else ""
            raise DataError(f"image folder {str(folder)!r} (split {split}) has no class folders{loose}")
        empty = [name for name in found if not _has_image(folder / name, extensions)]
        if empty:
            raise DataError(f"class folder(s) {', '.join(repr(str(folder / n)) for n in empty[:5])} hold no images "
                            f"(looked for files ending in {looked_for}); add images, remove the folder, or set "
                            "params.extensions")
        classes.update(found)
    return sorted(classes)


def source_classes(params: dict, classes: ModelClasses | None) -> SourceClasses:
    """Check the folder and map its class folders to labels (the model's class indices, or the folders' own
    sorted order without a model)."""
    folders = _split_folders(params["path"], params["splits"])
    names = _scan(folders, params["extensions"])
    class_map = params["class_map"]
    if isinstance(class_map, dict):
        unknown = [key for key in class_map if key not in names]
        if unknown:
            raise ConfigError(f"params.class_map: {unknown_name_message('class folder', unknown[0], names)}")
        labels = map_labels(class_map, classes, "params.class_map")
    elif class_map == "by_name":
        labels = map_by_name(names, classes, "params.class_map (by_name)")
    elif class_map == "index":
        if classes is not None and len(names) > classes.count:
            raise ConfigError(f"params.class_map: index: {len(names)} class folders, but model {classes.model!r} has "
                              f"{classes.count} classes; map the folders with class_map: {{folder: class index}}")
        _refuse_misnamed_order(names, classes)
        labels = {name: i for i, name in enumerate(names)}
    else:
        raise ConfigError(f"params.class_map must be index, by_name or a {{folder: class}} map, got {class_map!r}")
    return SourceClasses(tuple(folders), labels, label_names(labels, {n: n for n in names}, classes))


def _refuse_misnamed_order(folders: list[str], classes: ModelClasses | None) -> None:
    """Fail when the folders carry the model's class names in another order: labels by sorted position would then
    call a 'goldfish' folder class 0 ('tench') without a word."""
    if classes is None or not classes.names:
        return
    by_name = {normalized(n): i for i, n in enumerate(classes.names)}
    named = {folder: by_name[normalized(folder)] for folder in folders if normalized(folder) in by_name}
    moved = [f"{folder!r} (class {index}, position {folders.index(folder)})" for folder, index in named.items()
             if folders.index(folder) != index]
    if moved:
        raise ConfigError(f"params.class_map: index labels folders by their sorted position, but folders are named "
                          f"after classes of model {classes.model!r} at other indices: {', '.join(moved[:3])}; "
                          "set class_map: by_name")


def prepare_image_folder(root: str | os.PathLike, path: str | None = None, splits: list[str] | None = None,
                         extensions: list[str] | None = None, class_map: str | dict[str, int | str] = "index",
                         model_classes: ModelClasses | None = None) -> dict[str, int]:
    """Write each split of the folder in vislib's COCO format: images/{split} links to the user's folder, the
    label of an image is its class folder's label; files that are not readable images are skipped and logged."""
    params: dict[str, Any] = {"path": path, "splits": splits or [], "extensions": extensions or list(IMAGE_EXTENSIONS),
              "class_map": class_map}
    classes = source_classes(params, model_classes)
    root = Path(root)
    counts = {}
    for split, folder in _split_folders(path, params["splits"]).items():
        link_images(root, split, folder)
        writer = CocoWriter(root, split, classes.label_names)
        unreadable = []
        for name in class_folders(folder):
            if name not in classes.labels:  # left out of an explicit class_map
                continue
            for file in image_files(folder / name, params["extensions"]):
                size = image_size(file)
                if size is None:
                    unreadable.append(str(file))
                    continue
                writer.add_image(len(writer.images) + 1, file.relative_to(folder).as_posix(), *size,
                                 classes.labels[name], [])
        if unreadable:
            log.warning("%d files in %s are not readable images and were skipped: %s", len(unreadable), folder,
                        ", ".join(unreadable[:5]))
        if not writer.images:
            raise DataError(f"image folder {str(folder)!r} (split {split}) has no readable image in the class "
                            "folders params.class_map maps")
        writer.write(classes.label_names)
        counts[split] = len(writer.images)
    return counts
