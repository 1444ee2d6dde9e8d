"""Registration of vislib's dataset kinds: built-in (shapes, photos), real (COCO, Visual Genome, ImageNet val) and
a user's own images (image folder, COCO-format file, CSV), each with its declared parameters (the `params:` of a
dataset in the config)."""

from __future__ import annotations

from dataclasses import dataclass

from vislib.data import DATASETS, DatasetKind, cocofile, csvfile, imagefolder
from vislib.data.coco import COCO_URL, prepare_coco
from vislib.data.dataset import CocoFormatDataset
from vislib.data.imagenet import prepare_imagenet_val
from vislib.data.photos import write_photos
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.data.vg import IMAGES_URLS, META_URL, prepare_vg
from vislib.params import param


def _prepare_shapes(root, **params) -> dict[str, int]:
    return generate_shapes(root, ShapesConfig(**params))


@dataclass(frozen=True)
class CocoParams:
    """Parameters of the `coco` kind."""

    splits: list[str] = param(["val"], "splits to download and convert: train, val")
    year: int = param(2017, "release year of the images and annotations")
    url: str = param(COCO_URL, "server the images and annotations come from")
    masks: bool = param(True, "decode instance masks (needed by mask metrics and LaViSE)")
    annotations_md5: str | None = param(None, "expected md5 of the annotations zip (none: the pinned sha256)")


@dataclass(frozen=True)
class VisualGenomeParams:
    """Parameters of the `vg` kind."""

    min_instances: int = param(100, "drop categories with fewer objects", minimum=1)
    val_fraction: float = param(0.1, "share of the images held out as val", exclusive_minimum=0, exclusive_maximum=1)
    seed: int = param(0, "seed of the train/val split")
    attributes: bool = param(True, "download attributes and keep them as concept words")
    images_urls: list[str] = param(list(IMAGES_URLS), "zips of the images")
    meta_url: str = param(META_URL, "folder of objects.json.zip, attributes.json.zip, image_data.json.zip")


@dataclass(frozen=True)
class ImageNetValParams:
    """Parameters of the `imagenet_val` kind (the files cannot be downloaded automatically)."""

    archive: str | None = param(None, "path of ILSVRC2012_img_val.tar")
    boxes: str | None = param(None, "path of LOC_val_solution.csv or ILSVRC2012_bbox_val_v3.tgz")
    synsets: str | None = param(None, "path of LOC_synset_mapping.txt (optional with the full box file)")


DATASETS.register("shapes")(DatasetKind(_prepare_shapes, CocoFormatDataset, ShapesConfig))
DATASETS.register("photos")(DatasetKind(write_photos, CocoFormatDataset))
DATASETS.register("coco")(DatasetKind(prepare_coco, CocoFormatDataset, CocoParams))
DATASETS.register("vg")(DatasetKind(prepare_vg, CocoFormatDataset, VisualGenomeParams))
DATASETS.register("imagenet_val")(DatasetKind(prepare_imagenet_val, CocoFormatDataset, ImageNetValParams))
DATASETS.register("imagefolder")(DatasetKind(imagefolder.prepare_image_folder, CocoFormatDataset,
                                             imagefolder.ImageFolderParams, imagefolder.source_classes))
DATASETS.register("cocofile")(DatasetKind(cocofile.prepare_coco_file, CocoFormatDataset, cocofile.CocoFileParams,
                                          cocofile.source_classes))
DATASETS.register("csv")(DatasetKind(csvfile.prepare_csv, CocoFormatDataset, csvfile.CsvParams,
                                     csvfile.source_classes))
