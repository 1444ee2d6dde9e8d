"""Registration of vislib's dataset kinds: built-in (shapes, photos) and real (COCO, Visual Genome, ImageNet val)."""

from __future__ import annotations

from vislib.data import DATASETS, DatasetKind
from vislib.data.coco import prepare_coco
from vislib.data.dataset import CocoFormatDataset
from vislib.data.imagenet import prepare_imagenet_val
from vislib.data.photos import write_photos
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.data.vg import prepare_vg


def _prepare_shapes(root, **params) -> dict[str, int]:
    return generate_shapes(root, ShapesConfig(**params))


DATASETS.register("shapes")(DatasetKind(_prepare_shapes, CocoFormatDataset))
DATASETS.register("photos")(DatasetKind(write_photos, CocoFormatDataset))
DATASETS.register("coco")(DatasetKind(prepare_coco, CocoFormatDataset))
DATASETS.register("vg")(DatasetKind(prepare_vg, CocoFormatDataset))
DATASETS.register("imagenet_val")(DatasetKind(prepare_imagenet_val, CocoFormatDataset))
