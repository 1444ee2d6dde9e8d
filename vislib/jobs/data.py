"""Jobs of rules/data.smk: prepare a dataset, list the images an experiment uses."""

from __future__ import annotations

import logging
from typing import Any

from vislib.data import DATASETS, DatasetRef, ModelClasses
from vislib.io import write_json, write_text
from vislib.pipeline import select_images

log = logging.getLogger(__name__)


def prepare_dataset(*, kind: str, params: dict[str, Any] | None, root: str, marker: str,
                    model_classes: dict[str, Any] | None = None) -> None:
    """Create a dataset on disk with its declared parameters; write a marker with its image counts last.

    `model_classes` (the fields of a `ModelClasses`: model, count, names) are the classes that label a user's
    images (`vislib.config.dataset_model_classes`); other kinds take none."""
    dataset_kind = DATASETS[kind]
    checked = dataset_kind.parse_params(kind, params)
    if dataset_kind.source_classes is not None:
        checked["model_classes"] = (ModelClasses(model_classes["model"], model_classes["count"],
                                                 tuple(model_classes["names"])) if model_classes else None)
    counts = dataset_kind.prepare(root, **checked)
    log.info("prepared %s under %s: %s", kind, root, counts)
    write_json(marker, {"kind": kind, "counts": counts, "params": params or {}})


def image_list(*, dataset: DatasetRef, limit: int | None, out: str) -> None:
    """Write the ids an experiment explains, one per line: the first `limit` of the split (all if None)."""
    ids = select_images(dataset.open(), limit)
    write_text(out, "".join(f"{i}\n" for i in ids))
    log.info("%d images listed for %s", len(ids), dataset.name)
