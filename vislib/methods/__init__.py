"""Attribution (heatmap) methods, each registered by name: `vislib.methods.get(name, **params)`."""

from vislib.methods import (
           cam,  # noqa: F401  (registration)
           gradients,  # noqa: F401  (registration)
           l2caf,  # noqa: F401  (registration)
           lrp,  # noqa: F401  (registration)
           perturbation,  # noqa: F401  (registration)
)
from vislib.methods.base import METHODS, Attribution, AttributionMethod, get, register
from vislib.methods.postprocess import normalize_maps, to_display_maps, to_image_maps, upsample_maps

__all__ = ["METHODS", "Attribution", "AttributionMethod", "get", "normalize_maps", "register",
           "to_display_maps", "to_image_maps", "upsample_maps"]
