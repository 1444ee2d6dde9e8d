"""Registration of the datasets that ship with vislib (synthetic shapes, scikit-image photos)."""

from __future__ import annotations

from vislib.data import DATASETS, DatasetKind
from vislib.data.dataset import CocoFormatDataset
from vislib.data.photos import write_photos
from vislib.data.synthetic import ShapesConfig, generate_shapes


def _prepare_shapes(root, **params) -> dict[str, int]:
    return generate_shapes(root, ShapesConfig(**params))


DATASETS.register("shapes")(DatasetKind(_prepare_shapes, CocoFormatDataset))
DATASETS.register("photos")(DatasetKind(write_photos, CocoFormatDataset))
