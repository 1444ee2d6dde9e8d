"""A user's classes (folder names, annotation categories, CSV labels) mapped onto the classes of a model.

The image folder, COCO-file and CSV dataset kinds store labels as indices of the model's outputs, so that
`target: label` explains the class the model calls it. Which model: the config check passes each model that an
experiment evaluates on the dataset (`ModelClasses`), and the prepare job the one whose classes label the data.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vislib.errors import ConfigError, DataError

# torchvision's IMG_EXTENSIONS, compared case-insensitively as its ImageFolder does.
IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"]


@dataclass(frozen=True)
class ModelClasses:
    """The classes a model's outputs index: how many, and their names where the model carries them."""

    model: str  # the model's label in the config, for messages
    count: int
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceClasses:
    """What the config check learns from a user's images: the splits they become and each source class's label.

    `labels` maps a source class (class folder, category id, CSV label) to the label it is stored with; a source
    class missing from it is left out. `label_names` names every label (the model's classes where it has names).
    """

    splits: tuple[str, ...]
    labels: dict[str | int, int]
    label_names: list[str]


def normalized(name: str) -> str:
    """A class name as compared: case, spaces, underscores and hyphens ignored (Golden_Retriever = golden retriever)."""
    return "".join(ch for ch in name.lower() if not ch.isspace() and ch not in "_-")


def model_index(label: str | int, classes: ModelClasses, where: str) -> int:
    """The index of model class `label`: an index into its outputs, or one of its class names (see `normalized`)."""
    if isinstance(label, int):
        if not 0 <= label < classes.count:
            raise ConfigError(f"{where}: class index {label} is out of range; model {classes.model!r} has "
                              f"{classes.count} classes (0..{classes.count - 1})")
        return label
    if not classes.names:
        raise ConfigError(f"{where}: class {label!r} is given by name, but model {classes.model!r} carries no class "
                          f"names; give its class index (0..{classes.count - 1}) instead")
    wanted = normalized(label)
    found = [i for i, name in enumerate(classes.names) if normalized(name) == wanted]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{where}: class {label!r} names {len(found)} classes of model {classes.model!r} "
                          f"({', '.join(str(i) for i in found)}); give the class index instead")
    raise ConfigError(f"{where}: model {classes.model!r} has no class {label!r}. "
                      f"{closest_classes(label, classes)}")


def closest_classes(label: str, classes: ModelClasses, n: int = 5) -> str:
    """A hint naming the model classes closest to `label`, with their indices."""
    by_key: dict[str, list[int]] = {}
    for i, name in enumerate(classes.names):
        by_key.setdefault(normalized(name), []).append(i)
    close = difflib.get_close_matches(normalized(label), list(by_key), n=n, cutoff=0.5)
    if not close:
        return (f"No class name is close; its classes are {', '.join(repr(c) for c in classes.names[:10])}"
                f"{' ...' if len(classes.names) > 10 else ''}")
    shown = [f"{classes.names[i]!r} ({i})" for key in close for i in by_key[key]]
    return f"Closest: {', '.join(shown)}"


def map_labels(given: Mapping[Any, str | int], classes: ModelClasses | None, where: str) -> dict[str | int, int]:
    """Source classes -> labels from an explicit {source class: model class (index or name)} map.

    Without a model the given values must be indices (the dataset's own label space)."""
    labels: dict[str | int, int] = {}
    for key, value in given.items():
        if classes is None:
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where}: {key!r} maps to {value!r}, but no experiment evaluates a model with "
                                  "class names on this dataset; give class indices (>= 0)")
            labels[key] = value
        else:
            labels[key] = model_index(value, classes, f"{where}.{key}")
    return labels


def map_by_name(source: Iterable[str], classes: ModelClasses | None, where: str) -> dict[str | int, int]:
    """Each source class name -> the model class of that name; without a model, the source's own order."""
    names = list(source)
    if classes is None:
        return {name: i for i, name in enumerate(names)}
    return {name: model_index(name, classes, where) for name in names}


def label_names(labels: Mapping[Any, int], source_names: Mapping[Any, str],
                classes: ModelClasses | None) -> list[str]:
    """Names of every label: the model's class names where it has them, else the source classes mapped to it."""
    if classes is not None and classes.names:
        return unique_names(list(classes.names))
    count = classes.count if classes is not None else max(labels.values(), default=-1) + 1
    mapped: dict[int, list[str]] = {}
    for key, label in labels.items():
        mapped.setdefault(label, []).append(source_names[key])
    return unique_names([" / ".join(sorted(set(mapped[i]))) if i in mapped else f"class {i}" for i in range(count)])


def unique_names(names: list[str]) -> list[str]:
    """`names` with each repeat marked by its index ('crane' twice in ImageNet: 'crane', 'crane (517)'), because the
    COCO-format reader finds an object's label by its category name."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in seen else f"{name} ({i})")
        seen.add(name)
    return out


def existing_path(value: str | None, key: str, what: str, folder: bool) -> Path:
    """The path a `params` key names, checked to exist (a folder or a file)."""
    if not value:
        raise ConfigError(f"params.{key} is not set; point it at {what}")
    path = Path(value).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        state = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"params.{key} points at {str(path)!r}, which {state}; point it at {what} "
                        f"(relative paths start from the folder snakemake runs in: {os.getcwd()})")
    return path


def is_image_file(name: str, extensions: Iterable[str]) -> bool:
    """Whether a file name ends in one of `extensions`, ignoring case (as torchvision's ImageFolder)."""
    return name.lower().endswith(tuple(ext.lower() for ext in extensions))


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when the file is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, SyntaxError):
        return None


def link_images(root: Path, split: str, folder: Path) -> None:
    """Make images/{split} under the dataset root a link to the user's image folder (nothing is copied)."""
    link = root / "images" / split
    link.parent.mkdir(parents=True, exist_ok=True)
    target = folder.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return
        link.unlink()  # the params now name another folder
    elif link.exists():
        raise DataError(f"{str(link)!r} exists and is not a link to {str(target)!r}; delete it and re-run")
    link.symlink_to(target, target_is_directory=True)
