"""Feature-visualization (image synthesis) methods, each registered by name: `vislib.featvis.get(name, **params)`."""

from vislib.featvis import activation, class_agnostic, class_image, inversion  # noqa: F401  (registration)
from vislib.featvis.base import FEATVIS, FeatVisMethod, FeatVisResult, get, register

__all__ = ["FEATVIS", "FeatVisMethod", "FeatVisResult", "get", "register"]
