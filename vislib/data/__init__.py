"""Datasets: a registry of preparers and readers that all yield vislib's COCO-format splits."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vislib.data.classmap import ModelClasses, SourceClasses
from vislib.data.cocoformat import (
    CocoWriter,
    ImageRecord,
    decode_mask,
    encode_mask,
    read_coco_split,
)
from vislib.data.dataset import Batch, CocoFormatDataset, Sample, read_image, to_input
from vislib.params import NoParams, as_dict, parse
from vislib.registry import Registry


@dataclass(frozen=True)
class DatasetKind:
    """How to make a dataset on disk (`prepare`), its declared parameters and how to read it (`open`)."""

    prepare: Callable[..., dict[str, int]]  # prepare(root, **params) -> images per split
    open: Callable[..., CocoFormatDataset]  # open(name, root, split, resize=...)
    Params: type = NoParams
    # Kinds that read a user's images label them with a model's classes: source_classes(params, model_classes)
    # checks the source and maps its classes (the config check calls it for every model the dataset serves), and
    # their prepare takes the classes that label the data as `model_classes=` (None: the source's own classes).
    source_classes: Callable[[dict[str, Any], ModelClasses | None], SourceClasses] | None = None

    def parse_params(self, kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """The config's `params` of a dataset of this kind, checked and filled with defaults."""
        return as_dict(parse(f"dataset kind {kind!r} params", self.Params, params))


DATASETS: Registry[DatasetKind] = Registry("dataset kind")


def open_dataset(kind: str, name: str, root: str | os.PathLike, split: str,
                 resize: str = "stretch") -> CocoFormatDataset:
    """Open a prepared split of a dataset of registered `kind`, whose batches follow resize protocol `resize`."""
    return DATASETS[kind].open(name, root, split, resize=resize)


@dataclass(frozen=True)
class DatasetRef:
    """Where a prepared dataset lives, which split a job reads, which registered kind opens it, and how its images
    become model inputs (`resize`, one of `vislib.data.dataset.RESIZE_PROTOCOLS`)."""

    kind: str
    name: str
    root: str
    split: str
    resize: str = "stretch"

    def open(self, split: str | None = None) -> CocoFormatDataset:
        """Open the split (or another `split` of the same dataset)."""
        return open_dataset(self.kind, self.name, self.root, split or self.split, self.resize)


from vislib.data import builtin  # noqa: E402,F401  (registration)

__all__ = [
    "DATASETS",
    "Batch",
    "CocoFormatDataset",
    "CocoWriter",
    "DatasetKind",
    "DatasetRef",
    "ImageRecord",
    "ModelClasses",
    "Sample",
    "SourceClasses",
    "decode_mask",
    "encode_mask",
    "open_dataset",
    "read_coco_split",
    "read_image",
    "to_input",
]
